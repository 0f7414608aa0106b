// Classifier-free guidance on the denoiser seam (port of ralu_edge/guidance.py): for bundles whose manifest
// records denoiser.guidance_scale, v = v_u + s·(v_c − v_u) in float32, in that order (the Python and Kotlin
// cores compute the same expression, so the three agree bit for bit on the same velocities).

const f32 = Math.fround;

/** v_u + s·(v_c − v_u), Float32Array, each operation rounded to float32. */
export function guidedVelocity(uncond, cond, scale) {
  const s = f32(scale);
  return uncond.map((u, i) => f32(u + f32(s * f32(cond[i] - u))));
}

/**
 * A guided denoiser over `inner`: it takes a conditioning {negative, prompt} (each what `inner` takes) and runs
 * the negative row first, then the prompt row (the graphs take batch 1).
 */
export function classifierFreeGuidance(inner, scale) {
  return async (tokens, positions, sigma, cond) => {
    const uncond = await inner(tokens, positions, sigma, cond.negative);
    const text = await inner(tokens, positions, sigma, cond.prompt);
    return guidedVelocity(uncond, text, scale);
  };
}
