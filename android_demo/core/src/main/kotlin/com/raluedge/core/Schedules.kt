package com.raluedge.core

import kotlin.math.exp

/**
 * Noise-level schedules (spec/RALU.md §7.1, §7.3; port of ralu_edge/schedules.py): RALU's per-stage shifted
 * sigma grids and stage transitions, and the plain FLUX-style baselines. Every schedule is a DoubleArray of
 * noise levels sigma = 1 - t, decreasing within a stage.
 */
object Schedules {
    /** numpy.linspace(start, stop, num): i * step + start, the last point exactly `stop`. */
    fun linspace(start: Double, stop: Double, num: Int): DoubleArray {
        require(num >= 1) { "linspace needs num >= 1, got $num" }
        if (num == 1) return doubleArrayOf(start)
        val step = (stop - start) / (num - 1)
        val out = DoubleArray(num) { i -> i * step + start }
        out[num - 1] = stop
        return out
    }

    /** Shifted noise level h*sigma/(1 + (h-1)*sigma) (spec §7.3 line 4). */
    fun shiftSigma(sigma: Double, shift: Double): Double = shift * sigma / (1.0 + (shift - 1.0) * sigma)

    /** Inverse of [shiftSigma]: sigma/(h - (h-1)*sigma) (spec §7.3 line 2). */
    fun unshiftSigma(sigma: Double, shift: Double): Double = sigma / (shift - (shift - 1.0) * sigma)

    /**
     * Noise levels of one RALU stage from t = startT to t = endT: [numSteps + 1], linear in the unshifted
     * variable, then shifted by `shift` (spec §7.3 Algorithm R6). Ends at 1 - endT.
     */
    fun stageSigmas(startT: Double, endT: Double, shift: Double, numSteps: Int): DoubleArray {
        val ua = unshiftSigma(1.0 - startT, shift)
        val ub = unshiftSigma(1.0 - endT, shift)
        return linspace(ua, ub, numSteps + 1).map { shiftSigma(it, shift) }.toDoubleArray()
    }

    /** Renoising constants of one stage transition (spec §7.1): x <- a*Up(x) + b*z, restart at t = s. */
    class Transition(val s: Double, val a: Double, val b: Double)

    /** The (s, a, b) after a stage ending at t = endT, for Z = 1/sqrt(c): s = e/(Z(1-e)+e), a = 1/(Z(1-e)+e), b = 1-s. */
    fun transition(endT: Double, z: Double): Transition {
        val denominator = z * (1.0 - endT) + endT
        val s = endT / denominator
        return Transition(s, 1.0 / denominator, 1.0 - s)
    }

    /** Start times [0, s2, ..., sK] of every stage (spec §7.1). */
    fun stageStarts(endsT: DoubleArray, z: Double): DoubleArray =
        DoubleArray(endsT.size) { k -> if (k == 0) 0.0 else transition(endsT[k - 1], z).s }

    /** FLUX's resolution-dependent mu, linear in the image token count (diffusers `calculate_shift`). */
    fun fluxCalculateShift(
        imageSeqLen: Int, baseSeqLen: Int = 256, maxSeqLen: Int = 4096,
        baseShift: Double = 0.5, maxShift: Double = 1.15
    ): Double {
        val slope = (maxShift - baseShift) / (maxSeqLen - baseSeqLen)
        val intercept = baseShift - slope * baseSeqLen
        return imageSeqLen * slope + intercept
    }

    /**
     * FLUX's plain schedule [numSteps + 1] ending in 0, as diffusers' FluxPipeline builds it: linspace(1, 1/N, N)
     * in float32, shifted by e^mu/(e^mu + (1/sigma - 1)) in float32 (ralu_edge.schedules.flux_baseline_sigmas).
     */
    fun fluxBaselineSigmas(numSteps: Int, imageSeqLen: Int): DoubleArray {
        val mu = fluxCalculateShift(imageSeqLen)
        val expMu = exp(mu).toFloat()
        val base = linspace(1.0, 1.0 / numSteps, numSteps)
        val out = DoubleArray(numSteps + 1)
        for (i in 0 until numSteps) {
            val sigma = base[i].toFloat()
            out[i] = (expMu / (expMu + (1.0f / sigma - 1.0f))).toDouble()
        }
        return out
    }

    /** A statically shifted schedule [numSteps + 1]: shift(linspace(1, 1/N, N)), then 0 (the base model's own, h = 3). */
    fun staticShiftSigmas(numSteps: Int, shift: Double): DoubleArray {
        val base = linspace(1.0, 1.0 / numSteps, numSteps)
        return DoubleArray(numSteps + 1) { i -> if (i < numSteps) shiftSigma(base[i], shift) else 0.0 }
    }
}
