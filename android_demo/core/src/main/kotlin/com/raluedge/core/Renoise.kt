package com.raluedge.core

import kotlin.math.sqrt

/**
 * Renoising at RALU stage transitions (spec/RALU.md §7.1-7.2; port of ralu_edge/renoise.py): block-correlated
 * noise in O(N) closed form, the transition x <- a*x + b*z, and the Tweedie estimate x0 = x - sigma*v.
 */
object Renoise {
    /** alpha = 1 - sqrt(1 - 4c), the weight that gives groups of 4 the covariance I - cJ (spec §7.2). */
    fun correlationAlpha(c: Double): Double {
        require(c in 0.0..0.25) { "c = $c is outside [0, 1/4]; I - cJ would not be a covariance" }
        return 1.0 - sqrt(1.0 - 4.0 * c)
    }

    /**
     * Noise [length, channels] float32: eps ~ N(0, I) from `random` (one standardNormal(length * channels)
     * draw, C order), then within each group of 4 tokens, per channel, eps - alpha*mean(eps), so that
     * Cov = I - cJ inside groups and I elsewhere. `groups`: [G * 4] disjoint sequence indices.
     */
    fun correlatedNoise(length: Int, channels: Int, groups: IntArray, c: Double, random: RandomSource): FloatArray {
        val eps = random.standardNormal(length * channels)
        require(eps.size == length * channels) { "the random source returned ${eps.size} draws, expected ${length * channels}" }
        require(groups.size % 4 == 0) { "groups must hold 4 indices each" }
        if (groups.isNotEmpty()) {
            val alpha = correlationAlpha(c)
            for (g in 0 until groups.size / 4) for (ch in 0 until channels) {
                var sum = 0.0
                for (m in 0..3) sum += eps[groups[g * 4 + m] * channels + ch]
                val shift = alpha * (sum / 4.0)
                for (m in 0..3) eps[groups[g * 4 + m] * channels + ch] -= shift
            }
        }
        return FloatArray(eps.size) { eps[it].toFloat() }
    }

    /** a*tokens + b*noise in float32 (spec §7.1; a multiplies the latent, b the noise). */
    fun renoise(tokens: Tokens, noise: FloatArray, a: Double, b: Double): Tokens {
        val af = a.toFloat()
        val bf = b.toFloat()
        return Tokens(tokens.length, tokens.channels, FloatArray(tokens.data.size) { af * tokens.data[it] + bf * noise[it] })
    }

    /** Clean estimate x0 = x - sigma*v in float32 (spec §4, Algorithm R2 line 1). */
    fun tweedieX0(tokens: Tokens, velocity: FloatArray, sigma: Double): Tokens {
        val s = sigma.toFloat()
        return Tokens(tokens.length, tokens.channels, FloatArray(tokens.data.size) { tokens.data[it] - s * velocity[it] })
    }
}
