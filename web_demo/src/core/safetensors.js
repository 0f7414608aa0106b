// Reading safetensors files (an 8-byte little-endian header length, a JSON header, raw little-endian tensor
// data) and the learned-embeddings file `ralu-personalize` writes (runtime/embeddings.py): one [1, hidden] entry
// per text encoder (`clip_l`, `clip_g`, `t5` in the manifest's encoder order) and the token in the metadata.

import { UserError } from './errors.js';

const DTYPES = { F32: 4, F16: 2, F64: 8, BF16: 2 };

function halfToFloat(h) {
  const sign = h & 0x8000 ? -1 : 1;
  const exponent = (h >> 10) & 0x1f;
  const fraction = h & 0x3ff;
  if (exponent === 0) return sign * 2 ** -14 * (fraction / 1024);
  if (exponent === 31) return fraction ? NaN : sign * Infinity;
  return sign * 2 ** (exponent - 15) * (1 + fraction / 1024);
}

/**
 * {metadata, tensors: {name: {dtype, shape, values: Float32Array}}} of a safetensors file's bytes (Uint8Array).
 * Float tensors only (F32, F16, BF16, F64); `label` names the file in messages.
 */
export function readSafetensors(bytes, label) {
  const unreadable = (why) => new UserError(`${label}: not a readable safetensors file (${why}); pass the learned_embeds.safetensors that ralu-personalize wrote.`);
  if (bytes.length < 8) throw unreadable('shorter than its header');
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerLength = Number(view.getBigUint64(0, true));
  if (headerLength > bytes.length - 8) throw unreadable('its header runs past the end');
  let header;
  try {
    header = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes.subarray(8, 8 + headerLength)));
  } catch {
    throw unreadable('its header is not JSON');
  }
  const dataStart = 8 + headerLength;
  const tensors = {};
  for (const [name, info] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    const width = DTYPES[info?.dtype];
    const [begin, end] = info?.data_offsets ?? [];
    const count = (info?.shape ?? []).reduce((a, b) => a * b, 1);
    if (!width) throw new UserError(`${label}: '${name}' holds ${info?.dtype} values, not floats; write the file with ralu-personalize.`);
    if (!(Number.isInteger(begin) && end - begin === count * width && dataStart + end <= bytes.length)) {
      throw unreadable(`'${name}' lies outside the file`);
    }
    const values = new Float32Array(count);
    for (let i = 0; i < count; i++) {
      const at = dataStart + begin + i * width;
      if (info.dtype === 'F32') values[i] = view.getFloat32(at, true);
      else if (info.dtype === 'F64') values[i] = view.getFloat64(at, true);
      else if (info.dtype === 'F16') values[i] = halfToFloat(view.getUint16(at, true));
      else values[i] = new Float32Array(new Uint32Array([view.getUint16(at, true) << 16]).buffer)[0];
    }
    tensors[name] = { dtype: info.dtype, shape: info.shape, values };
  }
  return { metadata: header.__metadata__ ?? {}, tensors };
}

/** {text_encoder_name: file key}: CLIP encoders in order get clip_l, clip_g; the T5 encoder gets t5. */
export function entryNames(textEncoders) {
  const clipKeys = ['clip_l', 'clip_g'];
  let clip = 0;
  return Object.fromEntries(textEncoders.map((e) => [e.name, e.kind === 'clip' ? clipKeys[clip++] : 't5']));
}

/**
 * The learned token and its per-encoder embeddings {token, embeddings: {encoder_name: Float32Array[hidden]}},
 * checked against the bundle's encoders (runtime/embeddings.py `load_learned_embeds`).
 */
export function learnedEmbeds(bytes, label, textEncoders) {
  const { metadata, tensors } = readSafetensors(bytes, label);
  const token = metadata.token;
  if (!token) throw new UserError(`${label}: the file names no token in its metadata; write it with ralu-personalize.`);
  const keys = entryNames(textEncoders);
  const embeddings = {};
  for (const encoder of textEncoders) {
    const entry = tensors[keys[encoder.name]];
    if (!entry) throw new UserError(`${label}: no '${keys[encoder.name]}' entry for ${encoder.name}; the file was made for another model.`);
    if (!entry.values.every(Number.isFinite)) {
      throw new UserError(`${label}: '${keys[encoder.name]}' holds NaN, infinite or out-of-range values; train the token again.`);
    }
    if (entry.values.length !== encoder.hidden_size) {
      throw new UserError(`${label}: '${keys[encoder.name]}' has ${entry.values.length} values but ${encoder.name} needs ${encoder.hidden_size}; the file was made for another model.`);
    }
    embeddings[encoder.name] = entry.values;
  }
  return { token, embeddings };
}
