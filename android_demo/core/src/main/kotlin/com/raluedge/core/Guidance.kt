package com.raluedge.core

/**
 * Classifier-free guidance over a batch-1 denoiser (port of ralu_edge/guidance.py): for bundles whose manifest records
 * `denoiser.guidance_scale` (a FLUX-family model trained with caption dropout; diffusers FluxPipeline's true_cfg_scale
 * with negative prompt ""), every step evaluates the negative conditioning first, then the prompt's, and returns
 * v = v_u + s * (v_c - v_u) in float32, the expression ralu_edge evaluates, so the two agree bit for bit. The app's
 * graphs take batch 1, so the two rows of the Python side's batch-2 call are two calls here.
 */
class ClassifierFreeGuidance(private val inner: Denoiser, val scale: Float, private val negative: Conditioning) : Denoiser {
    override fun velocity(tokens: Tokens, positions: Positions, sigma: Float, cond: Conditioning): FloatArray {
        val uncond = inner.velocity(tokens, positions, sigma, negative)
        val text = inner.velocity(tokens, positions, sigma, cond)
        require(uncond.size == text.size) { "guidance halves differ in size: ${uncond.size} and ${text.size}" }
        return FloatArray(uncond.size) { uncond[it] + scale * (text[it] - uncond[it]) }
    }

    companion object {
        /** The negative prompt of guidance, as the runtime and the conformance vectors encode it. */
        const val NEGATIVE_PROMPT = ""
    }
}
