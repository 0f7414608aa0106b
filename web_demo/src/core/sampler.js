// Samplers over the denoiser seam (DESIGN.md "The one seam", spec/RALU.md §2; port of ralu_edge/sampler.py):
// the Euler loop, the plain full-resolution baseline, and RALU's three-stage sampler (Algorithm R1). Every stage
// runs the same `euler`; only the transitions differ. The seam is async here (onnxruntime-web runs are):
//
//   velocity: Float32Array[L·C] = await denoiser(tokens, positions: Float64Array[L·3], sigma: number, cond)
//
// Randomness only from the passed-in generator, drawn in the Python order: one normal(0, 1e-6, M_down) for the
// tie-break jitter, then one standardNormal(L·C) per transition.

import { cannyScores, latentGradScores, selectRegions } from './edges.js';
import { checkGrid, numSelected } from './presets.js';
import { correlatedNoise, renoise, tweedieX0 } from './renoise.js';
import {
  assembleStage2, assembleStage3, downsampleTokens, gridPositions, makeTokens, restoreRasterOrder, unpackLatents,
} from './tokens.js';

const f32 = Math.fround;
const now = () => globalThis.performance.now();

/**
 * {tokens, velocity} after sigmas.length − 1 Euler steps x ← x + f32(σ_{i+1} − σ_i)·v(x, σ_i) (spec §1, §7.3).
 * The denoiser sees σ_i as float32; state stays float32 (§9.8). onStep({stage, step, sigma, sigmaNext,
 * numTokens}) runs after each step and may throw to cancel.
 */
export async function euler(denoiser, tokens, positions, sigmas, cond, { onStep = null, stage = 0 } = {}) {
  if (sigmas.length < 2) throw new RangeError(`an Euler run needs at least 2 sigmas, got ${sigmas.length}`);
  const x = Float32Array.from(tokens.data);
  let velocity = new Float32Array(x.length);
  for (let i = 0; i < sigmas.length - 1; i++) {
    const sigma = sigmas[i];
    const sigmaNext = sigmas[i + 1];
    velocity = await denoiser(makeTokens(tokens.length, tokens.channels, Float32Array.from(x)), positions, f32(sigma), cond);
    if (velocity.length !== x.length) throw new RangeError(`denoiser returned ${velocity.length} values, expected ${x.length}`);
    const dt = f32(sigmaNext - sigma);
    for (let j = 0; j < x.length; j++) x[j] = f32(x[j] + f32(dt * velocity[j]));
    if (onStep) await onStep({ stage, step: i, sigma, sigmaNext, numTokens: tokens.length });
  }
  return { tokens: makeTokens(tokens.length, tokens.channels, x), velocity };
}

/** Plain full-resolution sampling of packed noise [gridH·gridW, C] over `sigmas` ending at 0: final tokens. */
export async function sampleBaseline(denoiser, noise, gridH, gridW, sigmas, cond, { onStep = null } = {}) {
  const { tokens } = await euler(denoiser, noise, gridPositions(gridH, gridW), sigmas, cond, { onStep });
  return tokens;
}

/**
 * Edge scores of x̂₀ (spec §9.4): 'latent_grad', or 'canny' with `decode(latent Float32Array[C·h·w], C, h, w)`
 * resolving to {data: Float32Array[3·H·W] in [−1, 1], height, width}.
 */
async function edgeScores(x0, lowH, lowW, edgeProxy, decode) {
  if (edgeProxy === 'latent_grad') return latentGradScores(x0, lowH, lowW);
  if (edgeProxy === 'canny') {
    if (!decode) throw new RangeError("the 'canny' edge proxy needs a decode function");
    return cannyScores(await decode(unpackLatents(x0, lowH, lowW), x0.channels / 4, 2 * lowH, 2 * lowW), lowH, lowW);
  }
  throw new RangeError(`edge proxy must be 'latent_grad' or 'canny', got '${edgeProxy}'`);
}

/**
 * RALU sampling of one image (spec §2, Algorithm R1): low-res stage, edge-region selection, mixed-resolution
 * stage, full-res stage, renoising at each transition. noise: packed full-res initial noise [gridH·gridW,
 * 4·latent_channels]; preset: from presets.js; rng: the Generator for jitter and renoising. Exactly ΣN denoiser
 * calls. onStage({stage, numTokens, numSteps, seconds, transitionSeconds}) after each stage. Returns
 * {tokens (full-res, raster order), selected}.
 */
export async function raluSample(denoiser, noise, gridH, gridW, preset, cond, rng,
  { edgeProxy = 'latent_grad', decode = null, onStep = null, onStage = null } = {}) {
  checkGrid(gridH, gridW);
  if (noise.length !== gridH * gridW) throw new RangeError(`noise has ${noise.length} tokens, expected ${gridH * gridW}`);
  const [sigmas1, sigmas2, sigmas3] = preset.stageSigmas;
  const [t1, t2] = preset.transitions;
  const lowH = gridH / 2;
  const lowW = gridW / 2;
  const k = numSelected(preset, gridH, gridW);
  const timed = async (stage, x, positions, sigmas, started) => {
    const loopStarted = now();
    const result = await euler(denoiser, x, positions, sigmas, cond, { onStep, stage });
    if (onStage) {
      onStage({ stage, numTokens: x.length, numSteps: sigmas.length - 1, seconds: (now() - loopStarted) / 1000,
        transitionSeconds: (loopStarted - started) / 1000 });
    }
    return result;
  };

  let started = now();
  const positions1 = gridPositions(lowH, lowW);
  const stage1 = await timed(1, downsampleTokens(noise, gridH, gridW), positions1, sigmas1, started);

  started = now();
  const x0 = tweedieX0(stage1.tokens, stage1.velocity, sigmas1[sigmas1.length - 1]);
  const selected = selectRegions(await edgeScores(x0, lowH, lowW, edgeProxy, decode), k, rng);
  const two = assembleStage2(stage1.tokens, positions1, selected);
  const start2 = renoise(two.tokens, correlatedNoise(two.tokens.length, two.tokens.channels, two.groups, preset.c, rng), t1.a, t1.b);
  const stage2 = await timed(2, start2, two.positions, sigmas2, started);

  started = now();
  const three = assembleStage3(stage2.tokens, two.positions, lowH * lowW - k);
  const renoised = renoise(three.tokens, correlatedNoise(three.tokens.length, three.tokens.channels, three.groups, preset.c, rng), t2.a, t2.b);
  const sorted = restoreRasterOrder(renoised, three.positions);
  const stage3 = await timed(3, sorted.tokens, sorted.positions, sigmas3, started);
  return { tokens: stage3.tokens, selected };
}
