package com.raluedge.core

/**
 * Samplers over the denoiser seam (spec/RALU.md §2; port of ralu_edge/sampler.py): the Euler loop, the plain
 * full-resolution baseline, and RALU's three-stage sampler (Algorithm R1). Every stage calls the same [euler];
 * only the transitions differ. Randomness only from the passed-in [RandomSource]: one normal(0, 1e-6, M_down)
 * draw for the tie-break jitter, then one standardNormal(L * C) draw per transition, in that order.
 */

/** What `onStep` receives after each Euler step; stage 1..3 for RALU, 0 for a single-stage sampler. */
class StepInfo(val stage: Int, val step: Int, val sigma: Double, val sigmaNext: Double, val numTokens: Int)

/** What `onStage` receives after each RALU stage: tokens, steps, seconds in its loop and in the transition before it. */
class StageInfo(val stage: Int, val numTokens: Int, val numSteps: Int, val seconds: Double, val transitionSeconds: Double)

class EulerResult(val tokens: Tokens, val lastVelocity: FloatArray)

/** RALU output: full-resolution tokens in raster order and the low-res indices upsampled early (spec §4). */
class RaluResult(val tokens: Tokens, val selected: IntArray)

/** The edge proxy of region selection (spec §9.4): latent Sobel (no decode) or Canny on a half-res decode. */
sealed class EdgeProxy {
    object LatentGrad : EdgeProxy()
    class Canny(val decode: LatentDecode, val mapping: Edges.GrayMapping = Edges.GrayMapping.AFFINE) : EdgeProxy()
}

object Sampler {
    /**
     * (final tokens, last velocity) after sigmas.size - 1 Euler steps x <- x + float32(sigma_{i+1} - sigma_i) * v(x, sigma_i)
     * (spec §7.3 line 5). The denoiser sees sigma_i as float32. State stays float32 (spec §9.8). `onStep` may throw
     * to cancel (the exception propagates).
     */
    fun euler(
        denoiser: Denoiser, tokens: Tokens, positions: Positions, sigmas: DoubleArray, cond: Conditioning,
        stage: Int = 0, onStep: ((StepInfo) -> Unit)? = null
    ): EulerResult {
        require(sigmas.size >= 2) { "an Euler run needs at least 2 sigmas, got ${sigmas.size}" }
        val x = tokens.data.copyOf()
        var velocity = FloatArray(x.size)
        for (i in 0 until sigmas.size - 1) {
            val sigma = sigmas[i]
            val sigmaNext = sigmas[i + 1]
            velocity = denoiser.velocity(Tokens(tokens.length, tokens.channels, x.copyOf()), positions, sigma.toFloat(), cond)
            require(velocity.size == x.size) { "denoiser returned ${velocity.size} values, expected ${x.size}" }
            val dt = (sigmaNext - sigma).toFloat()
            for (j in x.indices) x[j] = x[j] + dt * velocity[j]
            onStep?.invoke(StepInfo(stage, i, sigma, sigmaNext, tokens.length))
        }
        return EulerResult(Tokens(tokens.length, tokens.channels, x), velocity)
    }

    /** Plain full-resolution sampling of packed noise [gridH * gridW, C] over `sigmas` ending at 0. */
    fun sampleBaseline(
        denoiser: Denoiser, noise: Tokens, gridH: Int, gridW: Int, sigmas: DoubleArray, cond: Conditioning,
        onStep: ((StepInfo) -> Unit)? = null
    ): Tokens = euler(denoiser, noise, TokenOps.gridPositions(gridH, gridW), sigmas, cond, 0, onStep).tokens

    /**
     * The stages' sigma lists and the two transitions (spec §7.1, §7.3); renoise = false is the no-rescheduling
     * ablation (a = 1, b = 0, each stage restarting where the previous one ended).
     */
    fun stagePlan(preset: RaluPreset, renoise: Boolean = true): Pair<List<DoubleArray>, List<Schedules.Transition>> {
        val starts = if (renoise) preset.s else doubleArrayOf(0.0, preset.e[0], preset.e[1])
        val transitions = if (renoise) preset.transitions
        else listOf(Schedules.Transition(preset.e[0], 1.0, 0.0), Schedules.Transition(preset.e[1], 1.0, 0.0))
        val sigmas = (0 until 3).map { k -> Schedules.stageSigmas(starts[k], preset.e[k], preset.h[k], preset.n[k]) }
        return Pair(sigmas, transitions)
    }

    /**
     * RALU sampling of one image (spec §2, Algorithm R1): `noise` is the packed full-res initial noise
     * [gridH * gridW, 4 * latentChannels]. Exactly sum(N) denoiser calls.
     */
    fun raluSample(
        denoiser: Denoiser, noise: Tokens, gridH: Int, gridW: Int, preset: RaluPreset, cond: Conditioning,
        random: RandomSource, edgeProxy: EdgeProxy = EdgeProxy.LatentGrad, renoise: Boolean = true,
        onStep: ((StepInfo) -> Unit)? = null, onStage: ((StageInfo) -> Unit)? = null
    ): RaluResult {
        RaluPreset.checkGrid(gridH, gridW)
        require(noise.length == gridH * gridW) { "noise has ${noise.length} tokens, expected ${gridH * gridW}" }
        val (sigmas, transitions) = stagePlan(preset, renoise)
        val lowH = gridH / 2
        val lowW = gridW / 2
        val k = preset.numSelected(gridH, gridW)

        var started = System.nanoTime()
        var x = TokenOps.downsample(noise, gridH, gridW)
        var positions = TokenOps.gridPositions(lowH, lowW)
        val stage1 = timedStage(1, denoiser, x, positions, sigmas[0], cond, started, onStep, onStage)

        started = System.nanoTime()
        val x0 = Renoise.tweedieX0(stage1.tokens, stage1.lastVelocity, sigmas[0].last())
        val scores = when (edgeProxy) {
            is EdgeProxy.LatentGrad -> Edges.latentGradScores(x0, lowH, lowW)
            is EdgeProxy.Canny -> Edges.cannyScores(x0, lowH, lowW, edgeProxy.decode, edgeProxy.mapping)
        }
        val selected = Edges.selectRegions(scores, k, random)
        val two = TokenOps.assembleStage2(stage1.tokens, positions, selected)
        x = renoised(two, transitions[0], preset.c, random, renoise)
        val stage2 = timedStage(2, denoiser, x, two.positions, sigmas[1], cond, started, onStep, onStage)

        started = System.nanoTime()
        val three = TokenOps.assembleStage3(stage2.tokens, two.positions, lowH * lowW - k)
        x = renoised(three, transitions[1], preset.c, random, renoise)
        val order = TokenOps.rasterOrder(three.positions)
        x = x.gather(order)
        positions = three.positions.gather(order)
        val stage3 = timedStage(3, denoiser, x, positions, sigmas[2], cond, started, onStep, onStage)
        return RaluResult(stage3.tokens, selected)
    }

    private fun renoised(assembly: Assembly, step: Schedules.Transition, c: Double, random: RandomSource, enabled: Boolean): Tokens {
        if (!enabled) return assembly.tokens
        val t = assembly.tokens
        return Renoise.renoise(t, Renoise.correlatedNoise(t.length, t.channels, assembly.groups, c, random), step.a, step.b)
    }

    private fun timedStage(
        stage: Int, denoiser: Denoiser, x: Tokens, positions: Positions, sigmas: DoubleArray, cond: Conditioning,
        transitionStarted: Long, onStep: ((StepInfo) -> Unit)?, onStage: ((StageInfo) -> Unit)?
    ): EulerResult {
        val loopStarted = System.nanoTime()
        val result = euler(denoiser, x, positions, sigmas, cond, stage, onStep)
        onStage?.invoke(StageInfo(stage, x.length, sigmas.size - 1, (System.nanoTime() - loopStarted) / 1e9,
            (loopStarted - transitionStarted) / 1e9))
        return result
    }

    /** sum_k N_k * L_k image token-steps of RALU on a packed grid (spec §9.6); 2838 for flux-4x at 16x16. */
    fun imageTokenSteps(preset: RaluPreset, gridH: Int, gridW: Int): Int {
        val lengths = preset.stageLengths(gridH, gridW)
        var total = 0
        for (k in 0 until 3) total += preset.n[k] * lengths[k]
        return total
    }
}
