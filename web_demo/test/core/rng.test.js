// The seeded generator port (src/core/rng.js) against the Python runtime: ralu_edge.rng.rng_for(seed, "ralu")
// recorded every draw of the vectors' RALU runs (runtime/conformance.py RecordingRng); the port must give the same
// float64 values bit for bit, in the same order (jitter, then one draw per transition).

import assert from 'node:assert/strict';
import { test } from 'node:test';
import zlib from 'node:zlib';
import { crc32, rngFor } from '../../src/core/rng.js';
import { array, index } from './vectors.js';

test('crc32 of a purpose string equals zlib crc32 of its UTF-8 bytes', () => {
  for (const text of ['initial_noise', 'ralu/select', 'ralu', '', 'é ✓ 日本']) {
    assert.equal(crc32(text), zlib.crc32(Buffer.from(text, 'utf8')));
  }
});

test("every recorded draw of the vectors' RALU runs is reproduced bit for bit from the seed", () => {
  const runs = index.runs.filter((run) => run.draws.length);
  assert.ok(runs.length >= 3);
  for (const run of runs) {
    const rng = rngFor(run.seed, 'ralu');
    for (const [i, draw] of run.draws.entries()) {
      const count = draw.shape.reduce((a, b) => a * b, 1);
      const values = draw.method === 'normal' ? rng.normal(draw.loc, draw.scale, count) : rng.standardNormal(count);
      assert.deepEqual(values, array(draw.values), `${run.name} draw ${i} (${draw.method})`);
    }
  }
});

test('the same (seed, purpose, step) gives the same draws and another step gives others', () => {
  const a = rngFor(7, 'initial_noise').standardNormal(64);
  assert.deepEqual(rngFor(7, 'initial_noise').standardNormal(64), a);
  assert.notDeepEqual(rngFor(7, 'initial_noise', 1).standardNormal(64), a);
  assert.notDeepEqual(rngFor(2 ** 40 + 7, 'initial_noise').standardNormal(64), a);
});

test('a negative seed is refused', () => {
  assert.throws(() => rngFor(-1, 'x'), RangeError);
});
