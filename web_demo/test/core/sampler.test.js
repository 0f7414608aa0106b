// The recorded RALU, baseline and guided runs replayed through the JS sampler (port of the Kotlin core's
// RaluReplayTest / GuidanceReplayTest): the recorded velocities are fed back, and every denoiser input (tokens,
// positions, sigma), every host-side intermediate and the final latent must match ralu_edge within 1e-5 relative.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { classifierFreeGuidance } from '../../src/core/guidance.js';
import { numSelected, presetFromDict } from '../../src/core/presets.js';
import { correlatedNoise, renoise, tweedieX0 } from '../../src/core/renoise.js';
import { rngFor } from '../../src/core/rng.js';
import { ropeTables } from '../../src/core/rope.js';
import { euler, raluSample, sampleBaseline } from '../../src/core/sampler.js';
import { fluxBaselineSigmas } from '../../src/core/schedules.js';
import { latentGradScores, selectRegions } from '../../src/core/edges.js';
import {
  assembleStage2, assembleStage3, downsampleTokens, gridPositions, makeTokens, packLatents, rasterOrder, unpackLatents,
} from '../../src/core/tokens.js';
import { SIGMA_TOLERANCE, TOLERANCE, array, index, recordedCalls, relativeError, tokens } from './vectors.js';

const raluRuns = index.runs.filter((r) => r.mode !== 'baseline' && !('guidance_scale' in r));
const presetOf = (run) => presetFromDict(index.presets.find((p) => p.name === run.mode));

function assertClose(what, actual, expected, tolerance = TOLERANCE) {
  assert.equal(actual.length, expected.length, `${what}: size`);
  const error = relativeError(actual, expected);
  assert.ok(error <= tolerance, `${what}: relative error ${error} > ${tolerance}`);
}

/** Hands out the recorded velocities in order, checking each call's inputs against the recorded ones. */
function replayDenoiser(calls, pick = (call) => call.velocity) {
  const state = { position: 0 };
  const denoiser = async (x, positions, sigma) => {
    assert.ok(state.position < calls.length, `denoiser call ${state.position} was not recorded`);
    const call = calls[state.position++];
    const where = `denoiser call ${state.position - 1} (stage ${call.stage})`;
    assert.equal(x.length, call.tokens.length, `${where}: length`);
    assertClose(`${where}: tokens`, x.data, call.tokens.data);
    assertClose(`${where}: positions`, positions, call.positions, 0);
    assertClose(`${where}: sigma`, [sigma], [call.sigma], SIGMA_TOLERANCE);
    return Float32Array.from(pick(call));
  };
  return { denoiser, state };
}

/** A generator that returns the run's recorded draws in order (the Kotlin ReplayRandom). */
function replayRandom(run) {
  const draws = run.draws.map((d) => ({ method: d.method, values: Float64Array.from(array(d.values)) }));
  let position = 0;
  const next = (method, count) => {
    const draw = draws[position++];
    assert.equal(draw.method, method);
    assert.equal(draw.values.length, count);
    return Float64Array.from(draw.values);
  };
  return { standardNormal: (n) => next('standard_normal', n), normal: (loc, scale, n) => next('normal', n) };
}

test('RALU runs reproduce every denoiser input, the selection and the final latent from the seeded generator', async () => {
  assert.deepEqual(new Set(raluRuns.map((r) => r.mode)), new Set(['flux-4x', 'flux-7x']));
  for (const run of raluRuns) {
    const calls = recordedCalls(run);
    const { denoiser, state } = replayDenoiser(calls);
    const stages = [];
    const result = await raluSample(denoiser, tokens(run.noise), run.grid[0], run.grid[1], presetOf(run), null,
      rngFor(run.seed, 'ralu'), { onStage: (s) => stages.push(s) });
    assert.equal(state.position, calls.length);
    assert.deepEqual(stages.map((s) => s.numTokens), run.stage_lengths);
    assert.deepEqual(Array.from(result.selected), Array.from(array(run.trace.selected)), `${run.name} selected`);
    assertClose(`${run.name} final`, result.tokens.data, array(run.trace.final));
  }
});

test('every intermediate of the RALU traces matches step by step', () => {
  for (const run of raluRuns) {
    const t = (role) => array(run.trace[role]);
    const name = run.name;
    const [gh, gw] = run.grid;
    const preset = presetOf(run);
    const calls = recordedCalls(run);
    const draws = replayRandom(run);
    const k = numSelected(preset, gh, gw);
    assert.equal(k, run.k);
    const [n1, n2] = preset.N;
    const lastStep = (call, sigmas) => {
      const dt = Math.fround(sigmas[sigmas.length - 1] - sigmas[sigmas.length - 2]);
      return makeTokens(call.tokens.length, call.tokens.channels,
        call.tokens.data.map((x, i) => Math.fround(x + Math.fround(dt * call.velocity[i]))));
    };

    assertClose(`${name} stage1 start`, downsampleTokens(tokens(run.noise), gh, gw).data, t('stage1_start'), 0);
    const positions1 = gridPositions(gh / 2, gw / 2);
    assertClose(`${name} stage1 positions`, positions1, t('stage1_positions'), 0);
    const final1 = lastStep(calls[n1 - 1], preset.stageSigmas[0]);
    assertClose(`${name} stage1 final`, final1.data, t('stage1_final'));
    const x0 = tweedieX0(final1, calls[n1 - 1].velocity, preset.stageSigmas[0].at(-1));
    assertClose(`${name} x0`, x0.data, t('x0'));
    const scores = latentGradScores(x0, gh / 2, gw / 2);
    assertClose(`${name} edge scores`, scores, t('edge_scores'));
    const selected = selectRegions(scores, k, draws);
    assert.deepEqual(Array.from(selected), Array.from(t('selected')));

    const two = assembleStage2(final1, positions1, selected);
    assertClose(`${name} stage2 assembled`, two.tokens.data, t('stage2_assembled'));
    assertClose(`${name} stage2 positions`, two.positions, t('stage2_positions'), 0);
    assert.deepEqual(Array.from(two.groups), Array.from(t('stage2_groups')));
    const noise1 = correlatedNoise(two.tokens.length, two.tokens.channels, two.groups, preset.c, draws);
    assertClose(`${name} renoise 1 noise`, noise1, t('renoise1_noise'));
    const start2 = renoise(two.tokens, noise1, preset.a[0], preset.b[0]);
    assertClose(`${name} stage2 start`, start2.data, t('stage2_start'));
    assertClose(`${name} stage2 first call`, start2.data, calls[n1].tokens.data);

    const final2 = lastStep(calls[n1 + n2 - 1], preset.stageSigmas[1]);
    assertClose(`${name} stage2 final`, final2.data, t('stage2_final'));
    const three = assembleStage3(final2, two.positions, (gh / 2) * (gw / 2) - k);
    assertClose(`${name} stage3 assembled`, three.tokens.data, t('stage3_assembled'));
    assertClose(`${name} stage3 positions (unsorted)`, three.positions, t('stage3_positions_unsorted'), 0);
    assert.deepEqual(Array.from(three.groups), Array.from(t('stage3_groups')));
    const noise2 = correlatedNoise(three.tokens.length, three.tokens.channels, three.groups, preset.c, draws);
    assertClose(`${name} renoise 2 noise`, noise2, t('renoise2_noise'));
    const renoised = renoise(three.tokens, noise2, preset.a[1], preset.b[1]);
    assertClose(`${name} stage3 renoised`, renoised.data, t('stage3_renoised'));
    const order = rasterOrder(three.positions);
    assert.deepEqual(Array.from(order), Array.from(t('raster_order')));
    const positions3 = new Float64Array(three.positions.length);
    order.forEach((o, i) => positions3.set(three.positions.subarray(o * 3, o * 3 + 3), i * 3));
    assertClose(`${name} stage3 positions`, positions3, t('stage3_positions'), 0);

    const final = lastStep(calls.at(-1), preset.stageSigmas[2]);
    assertClose(`${name} final`, final.data, t('final'));
    const latent = unpackLatents(final, gh, gw);
    assertClose(`${name} final latent`, latent, t('final_latent'));
    assertClose(`${name} pack(unpack)`, packLatents(latent, final.channels / 4, 2 * gh, 2 * gw).data, final.data, 0);

    [positions1, two.positions, positions3].forEach((positions, stage) => {
      const rope = ropeTables(positions, run.rope_axes_dim, 10000.0);
      assertClose(`${name} rope ${stage + 1} cos`, rope.cos, t(`rope${stage + 1}_cos`));
      assertClose(`${name} rope ${stage + 1} sin`, rope.sin, t(`rope${stage + 1}_sin`));
    });
  }
});

test('the baseline run reproduces the FLUX schedule and every Euler step', async () => {
  for (const run of index.runs.filter((r) => r.mode === 'baseline')) {
    const sigmas = fluxBaselineSigmas(run.num_steps, run.grid[0] * run.grid[1]);
    assertClose('baseline sigmas', sigmas, run.sigmas, SIGMA_TOLERANCE);
    const calls = recordedCalls(run);
    const { denoiser, state } = replayDenoiser(calls);
    const steps = [];
    const final = await sampleBaseline(denoiser, tokens(run.noise), run.grid[0], run.grid[1], sigmas, null,
      { onStep: (s) => steps.push(s) });
    assert.equal(state.position, run.num_steps);
    assert.equal(steps.length, run.num_steps);
    assertClose('baseline final', final.data, array(run.trace.final));
  }
});

test('guided runs reproduce every guided velocity bit for bit and the final latent', async () => {
  const guided = index.runs.filter((r) => 'guidance_scale' in r);
  assert.ok(guided.length);
  for (const run of guided) {
    assert.equal(run.negative_prompt, '');
    const calls = recordedCalls(run);
    const { denoiser: check, state } = replayDenoiser(calls, (call) => call.velocityUncond);
    const inner = async (x, positions, sigma, cond) => {
      if (cond === 'negative') return check(x, positions, sigma);
      assertClose('prompt row tokens', x.data, calls[state.position - 1].tokens.data, 0);
      return Float32Array.from(calls[state.position - 1].velocityCond);
    };
    const velocities = [];
    const cfg = classifierFreeGuidance(inner, run.guidance_scale);
    const recording = async (...args) => { const v = await cfg(...args); velocities.push(v); return v; };
    const result = await raluSample(recording, tokens(run.noise), run.grid[0], run.grid[1], presetOf(run),
      { negative: 'negative', prompt: 'prompt' }, rngFor(run.seed, 'ralu'));
    assert.equal(state.position, calls.length);
    calls.forEach((call, i) => assert.deepEqual(velocities[i], call.velocity, `${run.name} call ${i} guided velocity`));
    assertClose(`${run.name} final`, result.tokens.data, array(run.trace.final));
  }
});

test('an Euler run needs two sigmas and a velocity of the right size', async () => {
  const x = makeTokens(2, 4);
  await assert.rejects(euler(async () => new Float32Array(8), x, gridPositions(1, 2), [1], null), RangeError);
  await assert.rejects(euler(async () => new Float32Array(3), x, gridPositions(1, 2), [1, 0], null), RangeError);
});
