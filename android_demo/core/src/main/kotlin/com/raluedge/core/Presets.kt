package com.raluedge.core

import kotlin.math.abs

/**
 * RALU presets (spec/RALU.md §8; port of ralu_edge/presets.py): per-stage step counts N, stage end times e,
 * shifts h, noise constant Z = 1/sqrt(c) and up-ratio r, with everything derived from them.
 */
class RaluPreset(
    val name: String,
    val n: IntArray,
    val e: DoubleArray,
    val h: DoubleArray,
    val z: Double,
    val r: Double
) {
    init {
        if (n.size != 3 || n.any { it < 1 }) throw UserError("preset '$name': N must be three step counts >= 1, got ${n.toList()}")
        if (e.size != 3 || e[2] != 1.0 || !(0.0 < e[0] && e[0] < e[1] && e[1] < e[2])) {
            throw UserError("preset '$name': stage ends e must increase within (0, 1] and end at 1.0, got ${e.toList()}")
        }
        if (h.size != 3 || h.any { !(it > 0.0) || it.isInfinite() }) {
            throw UserError("preset '$name': shifts h must be three positive numbers, got ${h.toList()}")
        }
        if (!(z >= 2.0) || z.isInfinite()) throw UserError("preset '$name': Z = $z makes I - cJ indefinite; use Z >= 2")
        if (!(r >= 0.0 && r <= 1.0)) throw UserError("preset '$name': up-ratio r = $r is outside [0, 1]")
    }

    /** Correlation constant c = 1/Z^2 (spec §7.1). */
    val c: Double get() = 1.0 / (z * z)

    /** Stage start times (0, s2, s3) (spec §7.1). */
    val s: DoubleArray get() = Schedules.stageStarts(e, z)

    /** The two transitions (s, a, b) after stages 1 and 2 (spec §7.1). */
    val transitions: List<Schedules.Transition> get() = listOf(Schedules.transition(e[0], z), Schedules.transition(e[1], z))

    /** The three stages' sigma lists, N_k + 1 each; the last ends at 0 (spec §7.3, §8). */
    val stageSigmas: List<DoubleArray>
        get() {
            val starts = s
            return (0 until 3).map { k -> Schedules.stageSigmas(starts[k], e[k], h[k], n[k]) }
        }

    /** Denoiser evaluations per image: sum of N. */
    val nfe: Int get() = n.sum()

    /** k = int(M_down * r) in double precision for a packed full-res grid (spec §9.2). */
    fun numSelected(gridH: Int, gridW: Int): Int {
        checkGrid(gridH, gridW)
        return ((gridH / 2) * (gridW / 2) * r).toInt()
    }

    /** (L1, L2, L3) = (M_down, M_down + 3k, M) image tokens per stage (spec §9.2). */
    fun stageLengths(gridH: Int, gridW: Int): IntArray {
        val mDown = (gridH / 2) * (gridW / 2)
        return intArrayOf(mDown, mDown + 3 * numSelected(gridH, gridW), gridH * gridW)
    }

    companion object {
        private const val DERIVED_TOLERANCE = 1e-6

        /** Raise UserError unless the packed grid is positive and even in both axes (spec §9.2). */
        fun checkGrid(gridH: Int, gridW: Int) {
            if (gridH < 2 || gridW < 2 || gridH % 2 != 0 || gridW % 2 != 0) {
                throw UserError("RALU needs an even packed token grid, got ${gridH}x$gridW; use an image size that is a multiple of 4 x the VAE factor")
            }
        }

        /**
         * The preset a manifest stores (`RaluPreset.to_dict()`): derived entries (c, s, a, b, stage_sigmas), when
         * present, must agree with the recomputed ones to 1e-6, as ralu_edge.presets.RaluPreset.from_dict demands.
         */
        fun fromJson(obj: JsonObject): RaluPreset {
            val preset = RaluPreset(obj.string("name"), obj.ints("N"), obj.doubles("e"), obj.doubles("h"),
                obj.double("Z"), obj.double("r"))
            val derived = mapOf(
                "c" to doubleArrayOf(preset.c), "s" to preset.s,
                "a" to preset.transitions.map { it.a }.toDoubleArray(),
                "b" to preset.transitions.map { it.b }.toDoubleArray()
            )
            for ((key, expected) in derived) {
                if (!obj.has(key)) continue
                val stored = if (key == "c") doubleArrayOf(obj.double(key)) else obj.doubles(key)
                if (!close(stored, expected)) throw stale(preset.name, key)
            }
            if (obj.has("stage_sigmas")) {
                val stored = obj.list("stage_sigmas")
                val expected = preset.stageSigmas
                if (stored.size != 3) throw stale(preset.name, "stage_sigmas")
                for (k in 0 until 3) {
                    @Suppress("UNCHECKED_CAST")
                    val values = (stored[k] as? List<Any?> ?: throw stale(preset.name, "stage_sigmas"))
                        .map { (it as Number).toDouble() }.toDoubleArray()
                    if (!close(values, expected[k])) throw stale(preset.name, "stage_sigmas")
                }
            }
            return preset
        }

        private fun close(a: DoubleArray, b: DoubleArray): Boolean =
            a.size == b.size && a.indices.all { abs(a[it] - b[it]) <= DERIVED_TOLERANCE }

        private fun stale(name: String, key: String) =
            UserError("RALU preset '$name': stored $key disagrees with its N, e, h, Z; re-export the bundle")

        /** The built-in presets (spec/RALU.md §8), the same table as ralu_edge.presets.PRESETS. */
        val PRESETS: Map<String, RaluPreset> = listOf(
            RaluPreset("flux-4x", intArrayOf(5, 6, 7), doubleArrayOf(0.3, 0.45, 1.0), doubleArrayOf(5.019, 2.589, 2.226), 6.317, 0.3),
            RaluPreset("flux-5x", intArrayOf(4, 5, 6), doubleArrayOf(0.3, 0.45, 1.0), doubleArrayOf(5.115, 2.642, 2.254), 7.522, 0.2),
            RaluPreset("flux-7x", intArrayOf(2, 3, 5), doubleArrayOf(0.2, 0.3, 1.0), doubleArrayOf(8.141, 2.856, 2.193), 6.261, 0.1),
            RaluPreset("sd3-2x", intArrayOf(5, 6, 9), doubleArrayOf(0.2, 0.3, 1.0), doubleArrayOf(6.121, 2.237, 1.973), 4.132, 0.3),
            RaluPreset("sd3-3x", intArrayOf(3, 3, 6), doubleArrayOf(0.25, 0.3, 1.0), doubleArrayOf(6.401, 2.601, 2.273), 6.259, 0.2),
            RaluPreset("sd3-2x-paper", intArrayOf(5, 6, 9), doubleArrayOf(0.2, 0.3, 1.0), doubleArrayOf(6.21, 2.23, 1.97), 4.13, 0.3),
            RaluPreset("sd3-3x-paper", intArrayOf(3, 3, 6), doubleArrayOf(0.25, 0.3, 1.0), doubleArrayOf(6.40, 2.60, 2.23), 6.26, 0.2)
        ).associateBy { it.name }

        /** The built-in preset called `name`; UserError listing the choices otherwise. */
        fun get(name: String): RaluPreset =
            PRESETS[name] ?: throw UserError("unknown RALU preset '$name'; choose one of ${PRESETS.keys.joinToString(", ")}")
    }
}
