// The manifest reader (src/core/manifest.js) on the vectors' bundle manifest and the learned-embeddings reader
// (src/core/safetensors.js) on files written the way runtime/embeddings.py writes them.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { UserError } from '../../src/core/errors.js';
import { parseManifest } from '../../src/core/manifest.js';
import { entryNames, learnedEmbeds } from '../../src/core/safetensors.js';
import { VECTORS_DIR } from './vectors.js';

const manifestJson = () => JSON.parse(fs.readFileSync(path.join(VECTORS_DIR, 'bundle/ralu_config.json'), 'utf8'));
const userError = (pattern) => (e) => e instanceof UserError && pattern.test(e.message);

test("the vectors' bundle manifest parses, offers ralu-run's modes and names a graph per stage length", () => {
  const manifest = parseManifest(manifestJson());
  assert.deepEqual(manifest.modes(), ['baseline', ...manifest.presets.map((p) => `ralu-${p.name.split('-')[1]}`)]);
  assert.equal(manifest.presetForMode('ralu-4x').nfe, 18);
  assert.ok(manifest.denoiserGraphFor(manifest.denoiser.stage_lengths[0]));
  assert.throws(() => manifest.presetForMode('ralu-9x'), userError(/^mode 'ralu-9x' is not in this bundle; choose one of: baseline, /));
});

test('a manifest of another format, a path leaving the bundle or an unlisted graph file is refused', () => {
  assert.throws(() => parseManifest({ ...manifestJson(), format_version: 2 }), userError(/format_version 2/));
  const escaping = manifestJson();
  escaping.files[0].path = '../outside';
  assert.throws(() => parseManifest(escaping), userError(/not a relative POSIX path inside the bundle/));
  const unlisted = manifestJson();
  unlisted.files = unlisted.files.filter((f) => f.path !== unlisted.graphs[0].file);
  assert.throws(() => parseManifest(unlisted), userError(/which the files list lacks/));
});

/** Safetensors bytes of F32 tensors {name: Float32Array} and metadata, laid out as the format specifies. */
function safetensors(tensors, metadata) {
  const header = { __metadata__: metadata };
  let offset = 0;
  for (const [name, values] of Object.entries(tensors)) {
    header[name] = { dtype: 'F32', shape: [1, values.length], data_offsets: [offset, offset + 4 * values.length] };
    offset += 4 * values.length;
  }
  let text = JSON.stringify(header);
  text += ' '.repeat((8 - (text.length % 8)) % 8);
  const out = new Uint8Array(8 + text.length + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(text.length), true);
  out.set(new TextEncoder().encode(text), 8);
  let at = 8 + text.length;
  for (const values of Object.values(tensors)) { out.set(new Uint8Array(values.buffer), at); at += values.byteLength; }
  return out;
}

test('a learned-embeddings file gives its token and one vector per text encoder, refused when made for another model', () => {
  const encoders = parseManifest(manifestJson()).textEncoders;
  const keys = entryNames(encoders);
  const vectors = Object.fromEntries(encoders.map((e, i) => [keys[e.name], Float32Array.from({ length: e.hidden_size }, (_, j) => i + j / 1000)]));
  const learned = learnedEmbeds(safetensors(vectors, { token: '<cat>' }), 'embeds.safetensors', encoders);
  assert.equal(learned.token, '<cat>');
  for (const e of encoders) assert.deepEqual(learned.embeddings[e.name], vectors[keys[e.name]]);
  assert.throws(() => learnedEmbeds(safetensors(vectors, {}), 'x.safetensors', encoders), userError(/names no token/));
  const short = { ...vectors, [keys[encoders[0].name]]: new Float32Array(3) };
  assert.throws(() => learnedEmbeds(safetensors(short, { token: '<cat>' }), 'x.safetensors', encoders), userError(/made for another model/));
  assert.throws(() => learnedEmbeds(new Uint8Array(4), 'x.safetensors', encoders), userError(/not a readable safetensors file/));
});
