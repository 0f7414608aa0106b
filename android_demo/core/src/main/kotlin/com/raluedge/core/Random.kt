package com.raluedge.core

import java.util.SplittableRandom
import java.util.zip.CRC32
import kotlin.math.ln
import kotlin.math.sqrt

/**
 * Where every random draw of the host side comes from (STYLE.md "Randomness": no global RNG). The Python side
 * draws from numpy PCG64 generators, which this code cannot reproduce bit for bit cheaply; conformance tests
 * therefore inject the recorded draws (a replaying RandomSource), and the app uses [SeededRandom].
 * Arrays are filled in C order, as numpy fills an array of the same shape.
 */
interface RandomSource {
    /** `count` draws of N(0, 1) (numpy `standard_normal`, float64). */
    fun standardNormal(count: Int): DoubleArray

    /** `count` draws of N(mean, std^2) (numpy `normal(mean, std, count)`). */
    fun normal(mean: Double, std: Double, count: Int): DoubleArray

    /** `count` draws of U[low, high) (numpy `uniform`). */
    fun uniform(low: Double, high: Double, count: Int): DoubleArray

    /** A random permutation of 0 until n (numpy `permutation`). */
    fun permutation(n: Int): IntArray
}

/**
 * A deterministic RandomSource per (seed, purpose, step), mirroring `ralu_edge.rng.rng_for` in intent (crc32 of
 * the purpose, never a salted hash) but not in values: java.util.SplittableRandom plus Box-Muller normals. The
 * same (seed, purpose, step) always gives the same draws on every device, so a resumed personalization run
 * repeats its draws exactly; images differ from the Python runtime's for the same seed.
 */
class SeededRandom(seed: Long, purpose: String, step: Long = 0) : RandomSource {
    private val random: SplittableRandom
    private var spare = Double.NaN

    init {
        val crc = CRC32()
        crc.update(purpose.toByteArray(Charsets.UTF_8))
        random = SplittableRandom(mix(mix(mix(seed) xor crc.value) xor step))
    }

    private fun gaussian(): Double {
        if (!spare.isNaN()) {
            val out = spare
            spare = Double.NaN
            return out
        }
        var u: Double
        var v: Double
        var s: Double
        do {
            u = 2.0 * random.nextDouble() - 1.0
            v = 2.0 * random.nextDouble() - 1.0
            s = u * u + v * v
        } while (s >= 1.0 || s == 0.0)
        val factor = sqrt(-2.0 * ln(s) / s)
        spare = v * factor
        return u * factor
    }

    override fun standardNormal(count: Int): DoubleArray = DoubleArray(count) { gaussian() }
    override fun normal(mean: Double, std: Double, count: Int): DoubleArray = DoubleArray(count) { mean + std * gaussian() }
    override fun uniform(low: Double, high: Double, count: Int): DoubleArray =
        DoubleArray(count) { low + (high - low) * random.nextDouble() }

    override fun permutation(n: Int): IntArray {
        val out = IntArray(n) { it }
        for (i in n - 1 downTo 1) {
            val j = random.nextInt(i + 1)
            val t = out[i]; out[i] = out[j]; out[j] = t
        }
        return out
    }

    private companion object {
        /** SplitMix64's finaliser, so that nearby seeds give unrelated streams. */
        fun mix(x: Long): Long {
            var z = x + -7046029254386353131L
            z = (z xor (z ushr 30)) * -4658895280553007687L
            z = (z xor (z ushr 27)) * -7723592293110705685L
            return z xor (z ushr 31)
        }
    }
}
