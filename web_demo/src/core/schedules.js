// Noise-level schedules (spec/RALU.md §7.1, §7.3; port of ralu_edge/schedules.py): RALU's per-stage shifted
// sigma grids and stage transitions, and the plain FLUX baseline. Every schedule is a Float64Array of noise
// levels sigma = 1 − t; t appears only where the spec states a formula in t (stage ends e, starts s).

const f32 = Math.fround;

/** numpy.linspace(start, stop, num) with endpoint: start + i·step, the last point set to stop exactly. */
export function linspace(start, stop, num) {
  const out = new Float64Array(num);
  const step = num > 1 ? (stop - start) / (num - 1) : 0;
  for (let i = 0; i < num; i++) out[i] = i * step + start;
  if (num > 1) out[num - 1] = stop;
  return out;
}

/** Shifted noise level h·σ/(1 + (h−1)·σ) (spec/RALU.md §7.3 line 4). */
export function shiftSigma(sigma, shift) {
  return (shift * sigma) / (1.0 + (shift - 1.0) * sigma);
}

/** Inverse of shiftSigma: σ/(h − (h−1)·σ) (§7.3 line 2). */
export function unshiftSigma(sigma, shift) {
  return sigma / (shift - (shift - 1.0) * sigma);
}

/**
 * Noise levels of one RALU stage from t = startT to t = endT: Float64Array[numSteps + 1], decreasing; linear in
 * the unshifted variable, then shifted by h_k (§7.3, Algorithm R6).
 */
export function stageSigmas(startT, endT, shift, numSteps) {
  const u = linspace(unshiftSigma(1.0 - startT, shift), unshiftSigma(1.0 - endT, shift), numSteps + 1);
  return u.map((x) => shiftSigma(x, shift));
}

/** Renoising constants after a stage ending at t = endT, for Z = 1/√c: {s, a, b} (§7.1). */
export function transition(endT, z) {
  const denominator = z * (1.0 - endT) + endT;
  const s = endT / denominator;
  return { s, a: 1.0 / denominator, b: 1.0 - s };
}

/** FLUX's resolution-dependent μ (diffusers `calculate_shift`). */
export function fluxCalculateShift(imageSeqLen, baseSeqLen = 256, maxSeqLen = 4096, baseShift = 0.5, maxShift = 1.15) {
  const slope = (maxShift - baseShift) / (maxSeqLen - baseSeqLen);
  const intercept = baseShift - slope * baseSeqLen;
  return imageSeqLen * slope + intercept;
}

/**
 * FLUX's plain schedule, Float64Array[numSteps + 1] ending in 0: diffusers' FluxPipeline + FlowMatchEuler
 * (dynamic exponential shift), evaluated in float32 as the scheduler does (ralu_edge.schedules.flux_baseline_sigmas).
 */
export function fluxBaselineSigmas(numSteps, imageSeqLen) {
  const expMu = f32(Math.exp(fluxCalculateShift(imageSeqLen)));
  const out = new Float64Array(numSteps + 1);
  linspace(1.0, 1.0 / numSteps, numSteps).forEach((s, i) => {
    const sigma = f32(s);
    out[i] = f32(expMu / f32(expMu + f32(f32(1.0 / sigma) - 1.0)));
  });
  return out;
}

/**
 * SD3's plain schedule (ralu_edge.schedules.sd3_baseline_sigmas): diffusers' FlowMatchEuler(shift) with its
 * double shift quirk, rounded to float32, 0 appended.
 */
export function sd3BaselineSigmas(numSteps, shift = 3.0, numTrainTimesteps = 1000) {
  const trainSigma = f32(f32(1.0) / f32(numTrainTimesteps));
  const sigmaMin = f32(f32(f32(shift) * trainSigma) / f32(1.0 + f32(f32(shift - 1.0) * trainSigma)));
  const sigmaMax = f32(f32(shift) / f32(1.0 + f32(shift - 1.0)));
  const timesteps = linspace(sigmaMax * numTrainTimesteps, sigmaMin * numTrainTimesteps, numSteps);
  const out = new Float64Array(numSteps + 1);
  timesteps.forEach((t, i) => { out[i] = f32(shiftSigma(t / numTrainTimesteps, shift)); });
  return out;
}
