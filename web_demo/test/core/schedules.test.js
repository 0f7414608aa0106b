// Presets, sigma lists, transitions and the baseline schedules against ralu_edge's values in the vectors
// (spec/RALU.md §7–§9), and the manifest's own check that stored sigmas agree with N, e, h, Z.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { UserError } from '../../src/core/errors.js';
import {
  imageTokenSteps, modeForPreset, numSelected, presetFromDict, stageLengths,
} from '../../src/core/presets.js';
import { correlationAlpha } from '../../src/core/renoise.js';
import { fluxBaselineSigmas, stageSigmas } from '../../src/core/schedules.js';
import { SIGMA_TOLERANCE, index, relativeError } from './vectors.js';

const close = (a, b, what) => assert.ok(relativeError(Array.from(a), Array.from(b)) <= SIGMA_TOLERANCE, what);

test("every preset of the vectors gives ralu_edge's c, s, a, b, sigma lists, k, stage lengths and alpha", () => {
  assert.equal(index.presets.length, 7);
  for (const entry of index.presets) {
    const preset = presetFromDict(entry);
    close([preset.c], [entry.c], `${entry.name} c`);
    close(preset.s, entry.s, `${entry.name} s`);
    close(preset.a, entry.a, `${entry.name} a`);
    close(preset.b, entry.b, `${entry.name} b`);
    preset.stageSigmas.forEach((sigmas, k) => close(sigmas, entry.stage_sigmas[k], `${entry.name} stage ${k + 1}`));
    assert.deepEqual(stageLengths(preset, ...entry.grid), entry.stage_lengths);
    assert.equal(numSelected(preset, ...entry.grid), entry.k);
    assert.equal(preset.nfe, entry.nfe);
    close([correlationAlpha(preset.c)], [entry.alpha], `${entry.name} alpha`);
  }
});

test('the last stage ends at zero, stages decrease, and each transition jumps back up', () => {
  for (const entry of index.presets) {
    const stages = presetFromDict(entry).stageSigmas;
    assert.equal(stages[2].at(-1), 0);
    for (let k = 0; k < 2; k++) assert.ok(stages[k + 1][0] > stages[k].at(-1));
    for (const s of stages) for (let i = 1; i < s.length; i++) assert.ok(s[i] < s[i - 1]);
  }
});

test("baseline schedules match diffusers' values from the vectors", () => {
  for (const c of index.schedules.flux_baseline) close(fluxBaselineSigmas(c.num_steps, c.image_seq_len), c.sigmas, 'flux');
  for (const c of index.schedules.static_shift) {
    close([...stageSigmas(0, 1, c.shift, c.num_steps)], c.sigmas, 'static shift');
  }
});

test("the spec's worked example has 2838 image token-steps (spec/RALU.md §9.6)", () => {
  const preset = presetFromDict(index.presets.find((p) => p.name === 'flux-4x'));
  assert.deepEqual(stageLengths(preset, 16, 16), [64, 121, 256]);
  assert.equal(imageTokenSteps(preset, 16, 16), 2838);
});

test('a manifest preset whose stored sigmas disagree with its N, e, h, Z is refused', () => {
  const entry = structuredClone(index.presets[0]);
  entry.stage_sigmas[1][2] += 1e-3;
  assert.throws(() => presetFromDict(entry), (e) => e instanceof UserError && /stage_sigmas/.test(e.message));
  assert.throws(() => presetFromDict({ ...index.presets[0], Z: 1.5 }), UserError);
  assert.throws(() => numSelected(presetFromDict(index.presets[0]), 15, 16), (e) => /even/.test(e.message));
});

test('presets map to the modes ralu-run offers', () => {
  assert.equal(modeForPreset('flux-4x'), 'ralu-4x');
  assert.equal(modeForPreset('sd3-2x-paper'), 'ralu-2x-paper');
});
