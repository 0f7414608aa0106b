package com.raluedge.core

import kotlin.math.abs

/**
 * Temporal caching over the denoiser seam (port of ralu_edge/cache.py, issue 16): [CachedDenoiser] wraps any
 * [Denoiser] (outside [ClassifierFreeGuidance], so a skipped step saves both rows) and runs it only when its cache
 * says so. TeaCache reuses the last computed velocity until the fitted change since it (c0 * relative L1 change of
 * the input tokens + c1 * sigma step + c2, coefficients from the manifest's `cache` calibration) sums to a threshold;
 * TaylorSeer runs every `interval`-th call of a segment and extrapolates the others through the last order + 1
 * computed velocities (Newton's divided differences in sigma). A segment is a run of calls on one token set with
 * decreasing sigma: a RALU stage transition changes the token set and jumps sigma up with fresh noise, so nothing
 * cached before it predicts the calls after it, and the cache starts over. Arithmetic follows the Python side
 * (double accumulations, float32 results), checked against the recorded runs in the cache conformance vectors.
 */
class CacheConfig(
    val method: String = "none",
    val threshold: Double = 0.3,
    val order: Int = 1,
    val interval: Int = 2
) {
    init {
        if (method !in METHODS) throw UserError("cache '$method' does not exist; choose one of: ${METHODS.joinToString(", ")}.")
        if (!(threshold.isFinite() && threshold > 0)) throw UserError("TeaCache threshold $threshold must be a positive number, e.g. teacache:0.3.")
        if (order !in 0..4) throw UserError("TaylorSeer order $order must be 0 to 4, e.g. taylorseer:1,2.")
        if (interval < 1) throw UserError("TaylorSeer interval $interval must be at least 1, e.g. taylorseer:1,2.")
    }

    /** The canonical `--cache` text (`teacache:0.3`, `taylorseer:1,2`, `none`), as ralu_edge labels it. */
    val label: String
        get() = when (method) {
            "teacache" -> "teacache:${formatG(threshold)}"
            "taylorseer" -> "taylorseer:$order,$interval"
            else -> "none"
        }

    companion object {
        val METHODS = listOf("none", "teacache", "taylorseer")

        /** `none`, `teacache[:threshold]` or `taylorseer[:order,interval]`; UserError naming the syntax otherwise. */
        fun parse(text: String): CacheConfig {
            val colon = text.indexOf(':')
            val method = (if (colon < 0) text else text.substring(0, colon)).trim()
            val args = if (colon < 0) null else text.substring(colon + 1).trim()
            if (method !in METHODS) throw UserError("cache '$text' is not one of none, teacache[:threshold], taylorseer[:order,interval]; e.g. --cache teacache:0.3.")
            if (args == null) return CacheConfig(method)
            if (method == "none") throw UserError("cache '$text': none takes no arguments; write it alone, e.g. --cache none.")
            if (method == "teacache") {
                val threshold = args.toDoubleOrNull() ?: throw UserError("cache '$text': write teacache:THRESHOLD (a number, e.g. 0.3).")
                return CacheConfig(method, threshold = threshold)
            }
            val parts = args.split(",").map { it.trim().toIntOrNull() }
            if (parts.size !in 1..2 || parts.any { it == null }) throw UserError("cache '$text': write taylorseer:ORDER,INTERVAL (two integers, e.g. 1,2).")
            return CacheConfig(method, order = parts[0]!!, interval = if (parts.size == 2) parts[1]!! else 2)
        }

        private fun formatG(x: Double): String = if (x == Math.rint(x) && abs(x) < 1e15) x.toLong().toString() else x.toString()
    }
}

/** What a cached run did: computed calls, skipped calls, and per seam call whether the model ran. */
class CacheStats(val callsMade: Int, val callsSkipped: Int, val ran: BooleanArray)

object CacheMath {
    /** mean |current - previous| / mean |previous| in double (TeaCache's relative L1); the change itself when previous is 0. */
    fun relativeL1(current: FloatArray, previous: FloatArray): Double {
        require(current.size == previous.size) { "relative L1 of ${current.size} and ${previous.size} values" }
        var scale = 0.0
        var change = 0.0
        for (i in current.indices) {
            scale += abs(previous[i].toDouble())
            change += abs(current[i].toDouble() - previous[i].toDouble())
        }
        return if (scale > 0) change / scale else change / maxOf(current.size, 1)
    }

    /** c0 * signal + c1 * sigmaStep + c2, floored at 0. */
    fun rescaled(signal: Double, sigmaStep: Double, coefficients: DoubleArray): Double {
        require(coefficients.size == 3) { "the TeaCache rescale has 3 coefficients, got ${coefficients.size}" }
        return maxOf(coefficients[0] * signal + coefficients[1] * sigmaStep + coefficients[2], 0.0)
    }

    /** (run the model?, the new accumulated change): run once accumulated + change reaches the threshold. */
    fun teacacheRuns(accumulated: Double, change: Double, threshold: Double): Pair<Boolean, Double> {
        val total = accumulated + change
        return if (total >= threshold) Pair(true, 0.0) else Pair(false, total)
    }

    /** The velocity at `sigma` from the polynomial through (sigmas[j], velocities[j]) (most recent first), float32. */
    fun taylorForecast(sigmas: DoubleArray, velocities: List<FloatArray>, sigma: Double): FloatArray {
        require(sigmas.size == velocities.size && sigmas.isNotEmpty()) { "need as many sigmas as velocities, at least one" }
        val n = sigmas.size
        val size = velocities[0].size
        val out = FloatArray(size)
        val table = DoubleArray(n)
        for (e in 0 until size) {
            for (j in 0 until n) table[j] = velocities[j][e].toDouble()
            for (level in 1 until n) for (j in n - 1 downTo level) {
                table[j] = (table[j] - table[j - 1]) / (sigmas[j] - sigmas[j - level])
            }
            var result = table[n - 1]
            for (j in n - 2 downTo 0) result = table[j] + (sigma - sigmas[j]) * result
            out[e] = result.toFloat()
        }
        return out
    }
}

/** A denoiser that runs [inner] only when its cache says so; one per image (or call [reset]). */
class CachedDenoiser(
    private val inner: Denoiser,
    val config: CacheConfig,
    private val coefficients: DoubleArray = DoubleArray(0)
) : Denoiser {
    private class Segment(val length: Int, val positions: DoubleArray, var sigma: Double, var tokens: FloatArray) {
        var accumulated = 0.0
        var calls = 0
        val computedSigmas = ArrayList<Double>()
        val computed = ArrayList<FloatArray>()
    }

    private var segment: Segment? = null
    private val ran = ArrayList<Boolean>()

    init {
        require(config.method != "teacache" || coefficients.size == 3) { "teacache needs the 3 rescale coefficients calibrated for the model" }
    }

    fun reset() {
        segment = null
        ran.clear()
    }

    fun stats(): CacheStats {
        val made = ran.count { it }
        return CacheStats(made, ran.size - made, ran.toBooleanArray())
    }

    override fun velocity(tokens: Tokens, positions: Positions, sigma: Float, cond: Conditioning): FloatArray {
        val s = sigma.toDouble()
        var current = segment
        val run: Boolean
        if (current == null || tokens.length != current.length || !(s < current.sigma) || !positions.data.contentEquals(current.positions)) {
            current = Segment(tokens.length, positions.data.copyOf(), s, tokens.data)
            run = true
        } else {
            run = decide(current, tokens.data, s)
        }
        current.sigma = s
        current.tokens = tokens.data.copyOf()
        current.calls += 1
        segment = current
        ran.add(run)
        if (run) {
            val velocity = inner.velocity(tokens, positions, sigma, cond)
            val keep = if (config.method == "taylorseer") config.order + 1 else 1
            current.computedSigmas.add(0, s)
            current.computed.add(0, velocity.copyOf())
            while (current.computed.size > keep) {
                current.computed.removeAt(current.computed.size - 1)
                current.computedSigmas.removeAt(current.computedSigmas.size - 1)
            }
            return velocity
        }
        if (config.method == "taylorseer") {
            return CacheMath.taylorForecast(current.computedSigmas.toDoubleArray(), current.computed, s)
        }
        return current.computed[0].copyOf()
    }

    private fun decide(current: Segment, tokens: FloatArray, sigma: Double): Boolean = when (config.method) {
        "taylorseer" -> current.calls % config.interval == 0
        "teacache" -> {
            val change = CacheMath.rescaled(CacheMath.relativeL1(tokens, current.tokens), current.sigma - sigma, coefficients)
            val (run, accumulated) = CacheMath.teacacheRuns(current.accumulated, change, config.threshold)
            current.accumulated = accumulated
            run
        }
        else -> true
    }
}
