// Renoising at RALU stage transitions (spec/RALU.md §7.1–7.2; port of ralu_edge/renoise.py): block-correlated
// noise in O(N) closed form, x ← a·x + b·z, and the Tweedie estimate x̂₀ = x − σ·v. Float32 results are rounded
// after every operation (Math.fround), as numpy evaluates them in float32.

import { makeTokens } from './tokens.js';

const f32 = Math.fround;

/** α = 1 − √(1 − 4c), the weight that gives groups of 4 the covariance I − cJ (§7.2); c in [0, 1/4]. */
export function correlationAlpha(c) {
  if (!(c >= 0 && c <= 0.25)) throw new RangeError(`c = ${c} is outside [0, 1/4]; I − cJ would not be a covariance`);
  return 1.0 - Math.sqrt(1.0 - 4.0 * c);
}

/**
 * Noise Float32Array[length·channels]: one standardNormal(length·channels) draw from `rng` (float64, C order), then
 * within each group of 4 tokens, per channel, ε − α·mean(ε), so Cov = I − cJ inside groups and I elsewhere.
 */
export function correlatedNoise(length, channels, groups, c, rng) {
  const eps = rng.standardNormal(length * channels);
  if (groups.length % 4) throw new RangeError('groups must hold 4 indices each');
  if (groups.length) {
    const alpha = correlationAlpha(c);
    for (let g = 0; g < groups.length; g += 4) {
      for (let ch = 0; ch < channels; ch++) {
        let sum = 0;
        for (let m = 0; m < 4; m++) sum += eps[groups[g + m] * channels + ch];
        const shift = alpha * (sum / 4);
        for (let m = 0; m < 4; m++) eps[groups[g + m] * channels + ch] -= shift;
      }
    }
  }
  return Float32Array.from(eps);
}

/** a·tokens + b·noise in float32 (§7.1; a multiplies the latent, b the noise). */
export function renoise(tokens, noise, a, b) {
  const af = f32(a);
  const bf = f32(b);
  const out = tokens.data.map((x, i) => f32(f32(af * x) + f32(bf * noise[i])));
  return makeTokens(tokens.length, tokens.channels, out);
}

/** Clean estimate x̂₀ = x − σ·v in float32 (spec §4, Algorithm R2 line 1). */
export function tweedieX0(tokens, velocity, sigma) {
  const s = f32(sigma);
  return makeTokens(tokens.length, tokens.channels, tokens.data.map((x, i) => f32(x - f32(s * velocity[i]))));
}
