// The Python runtime's conformance vectors (runtime/conformance.py, written by android_demo/scripts/make_vectors.py):
// index.json plus little-endian .bin arrays, read in place from the Android core's test resources (the Kotlin
// port is tested against the same files), never copied.

import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const VECTORS_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)),
  '../../../android_demo/core/src/test/resources/vectors');

export const index = JSON.parse(fs.readFileSync(path.join(VECTORS_DIR, 'index.json'), 'utf8'));

const TYPES = { float32: Float32Array, float64: Float64Array, int64: BigInt64Array, uint8: Uint8Array, int32: Int32Array };

/** The array `name` as its typed array (int64 arrays come back as Int32Array of the same values). */
export function array(name) {
  const entry = index.arrays[name];
  if (!entry) throw new Error(`no array ${name} in the vectors`);
  const bytes = fs.readFileSync(path.join(VECTORS_DIR, entry.file));
  const buffer = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
  const values = new TYPES[entry.dtype](buffer);
  return entry.dtype === 'int64' ? Int32Array.from(values, Number) : values;
}

export const shape = (name) => index.arrays[name].shape;

/** Packed tokens {length, channels, data} from a [1, L, C] float32 array. */
export function tokens(name) {
  const s = shape(name);
  return { length: s[s.length - 2], channels: s[s.length - 1], data: Float32Array.from(array(name)) };
}

/** max |actual − expected| / max |expected| (the Python side's relative_error). */
export function relativeError(actual, expected) {
  if (actual.length !== expected.length) return Infinity;
  let scale = 0;
  let error = 0;
  for (let i = 0; i < expected.length; i++) {
    scale = Math.max(scale, Math.abs(expected[i]));
    error = Math.max(error, Math.abs(actual[i] - expected[i]));
  }
  return scale > 0 ? error / scale : error;
}

export const TOLERANCE = index.tolerances.relative; // 1e-5: host-side values (issue 7)
export const SIGMA_TOLERANCE = index.tolerances.sigma;

/** The recorded denoiser calls of a run: {tokens, positions, sigma, velocity, stage, velocityUncond?, velocityCond?}. */
export function recordedCalls(run) {
  return run.calls.map((c) => ({
    tokens: tokens(c.tokens), positions: array(c.positions), sigma: c.sigma, velocity: array(c.velocity), stage: c.stage,
    velocityUncond: c.velocity_uncond ? array(c.velocity_uncond) : null,
    velocityCond: c.velocity_cond ? array(c.velocity_cond) : null,
  }));
}
