package com.raluedge.core

/**
 * Token bookkeeping for RALU (spec/RALU.md §3, §5, §6; port of ralu_edge/tokens.py): FLUX 2x2 packing,
 * position ids, the nearest downsample of stage 1, the mixed-resolution assemblies of stages 2 and 3 with
 * their correlated-noise groups, and the raster restore. One image at a time (batch 1); functions never
 * modify their inputs.
 */

/** Packed tokens of one image: [length, channels] float32, row-major; channels in FLUX's (c, dy, dx) order. */
class Tokens(val length: Int, val channels: Int, val data: FloatArray) {
    init {
        require(data.size == length * channels) { "tokens data has ${data.size} values, expected $length x $channels" }
    }

    fun copy(): Tokens = Tokens(length, channels, data.copyOf())

    /** The tokens at `indices`, in that order (numpy `tokens[:, indices]`). */
    fun gather(indices: IntArray): Tokens {
        val out = FloatArray(indices.size * channels)
        for ((i, index) in indices.withIndex()) System.arraycopy(data, index * channels, out, i * channels, channels)
        return Tokens(indices.size, channels, out)
    }

    /** Each token repeated `times` times in place (numpy `np.repeat(tokens, times, axis=1)`). */
    fun repeatEach(times: Int): Tokens {
        val out = FloatArray(length * times * channels)
        for (i in 0 until length) for (t in 0 until times) {
            System.arraycopy(data, i * channels, out, (i * times + t) * channels, channels)
        }
        return Tokens(length * times, channels, out)
    }

    companion object {
        /** The concatenation [a || b] along the sequence. */
        fun concat(a: Tokens, b: Tokens): Tokens {
            require(a.channels == b.channels) { "cannot concatenate tokens of ${a.channels} and ${b.channels} channels" }
            val out = FloatArray(a.data.size + b.data.size)
            System.arraycopy(a.data, 0, out, 0, a.data.size)
            System.arraycopy(b.data, 0, out, a.data.size, b.data.size)
            return Tokens(a.length + b.length, a.channels, out)
        }
    }
}

/** Position ids [length, 3] float64, row-major: (0, row, col), possibly fractional (RALU stage 2). */
class Positions(val length: Int, val data: DoubleArray) {
    init {
        require(data.size == length * 3) { "positions data has ${data.size} values, expected $length x 3" }
    }

    fun row(i: Int): Double = data[i * 3 + 1]
    fun col(i: Int): Double = data[i * 3 + 2]

    fun gather(indices: IntArray): Positions {
        val out = DoubleArray(indices.size * 3)
        for ((i, index) in indices.withIndex()) System.arraycopy(data, index * 3, out, i * 3, 3)
        return Positions(indices.size, out)
    }

    fun scaled(factor: Double): Positions = Positions(length, DoubleArray(data.size) { data[it] * factor })

    companion object {
        fun concat(a: Positions, b: Positions): Positions = Positions(a.length + b.length, a.data + b.data)

        /** All-zero ids of `length` text tokens (the FLUX convention). */
        fun zeros(length: Int): Positions = Positions(length, DoubleArray(length * 3))
    }
}

/** A stage's sequence after an assembly: tokens, positions and correlated-noise groups [G * 4] (spec §7.2). */
class Assembly(val tokens: Tokens, val positions: Positions, val groups: IntArray)

object TokenOps {
    /** (row, col) offsets of the 4 children of a duplicated token, in order (spec §5, Algorithm R3). */
    private val CHILD_OFFSETS = arrayOf(doubleArrayOf(0.0, 0.0), doubleArrayOf(0.0, 0.5), doubleArrayOf(0.5, 0.0), doubleArrayOf(0.5, 0.5))

    /** Packed tokens [(H/2)(W/2), 4C] from a latent [C, H, W] (diffusers `_pack_latents`). */
    fun pack(latent: FloatArray, channels: Int, height: Int, width: Int): Tokens {
        require(latent.size == channels * height * width) { "latent has ${latent.size} values, expected ${channels}x${height}x$width" }
        val gh = height / 2
        val gw = width / 2
        val out = FloatArray(latent.size)
        for (i in 0 until gh) for (j in 0 until gw) for (c in 0 until channels) for (dy in 0..1) for (dx in 0..1) {
            out[((i * gw + j) * channels + c) * 4 + dy * 2 + dx] = latent[(c * height + 2 * i + dy) * width + 2 * j + dx]
        }
        return Tokens(gh * gw, channels * 4, out)
    }

    /** Latent [C, 2*gridH, 2*gridW] from raster-ordered packed tokens (diffusers `_unpack_latents`). */
    fun unpack(tokens: Tokens, gridH: Int, gridW: Int): FloatArray {
        require(tokens.length == gridH * gridW && tokens.channels % 4 == 0) {
            "tokens ${tokens.length}x${tokens.channels} do not form a ${gridH}x$gridW packed grid"
        }
        val channels = tokens.channels / 4
        val height = gridH * 2
        val width = gridW * 2
        val out = FloatArray(tokens.data.size)
        for (i in 0 until gridH) for (j in 0 until gridW) for (c in 0 until channels) for (dy in 0..1) for (dx in 0..1) {
            out[(c * height + 2 * i + dy) * width + 2 * j + dx] = tokens.data[((i * gridW + j) * channels + c) * 4 + dy * 2 + dx]
        }
        return out
    }

    /** Ids (0, row, col) of a raster-ordered grid. */
    fun gridPositions(gridH: Int, gridW: Int): Positions {
        val out = DoubleArray(gridH * gridW * 3)
        for (i in 0 until gridH) for (j in 0 until gridW) {
            out[(i * gridW + j) * 3 + 1] = i.toDouble()
            out[(i * gridW + j) * 3 + 2] = j.toDouble()
        }
        return Positions(gridH * gridW, out)
    }

    /** Low-res tokens [(gridH/2)(gridW/2), 4C]: unpack, keep even latent rows and columns, repack (spec §3 item 2). */
    fun downsample(tokens: Tokens, gridH: Int, gridW: Int): Tokens {
        val channels = tokens.channels / 4
        val latent = unpack(tokens, gridH, gridW)
        val height = gridH * 2
        val width = gridW * 2
        val small = FloatArray(channels * gridH * gridW)
        for (c in 0 until channels) for (y in 0 until gridH) for (x in 0 until gridW) {
            small[(c * gridH + y) * gridW + x] = latent[(c * height + 2 * y) * width + 2 * x]
        }
        return pack(small, channels, gridH, gridW)
    }

    /** Ids of the 4 children of each token: rows 4q..4q+3 at (h, w), (h, w+.5), (h+.5, w), (h+.5, w+.5). */
    fun childPositions(positions: Positions): Positions {
        val out = DoubleArray(positions.length * 12)
        for (q in 0 until positions.length) for (child in 0..3) {
            val at = (q * 4 + child) * 3
            out[at] = positions.data[q * 3]
            out[at + 1] = positions.data[q * 3 + 1] + CHILD_OFFSETS[child][0]
            out[at + 2] = positions.data[q * 3 + 2] + CHILD_OFFSETS[child][1]
        }
        return Positions(positions.length * 4, out)
    }

    private fun consecutiveGroups(start: Int, numGroups: Int): IntArray = IntArray(numGroups * 4) { start + it }

    /**
     * Stage-2 sequence [unselected || 4 children of each selected] (spec §5, Algorithm R3): tokens
     * [M_down + 3k, C], positions, and k groups over the last 4k tokens. `selected`: distinct low-res indices.
     */
    fun assembleStage2(tokens: Tokens, positions: Positions, selected: IntArray): Assembly {
        val sorted = selected.sortedArray()
        for (i in sorted.indices) {
            require(sorted[i] in 0 until tokens.length && (i == 0 || sorted[i] != sorted[i - 1])) {
                "selected must be distinct indices in [0, ${tokens.length}), got ${selected.toList()}"
            }
        }
        val isSelected = BooleanArray(tokens.length)
        for (q in sorted) isSelected[q] = true
        val single = (0 until tokens.length).filter { !isSelected[it] }.toIntArray()
        val newTokens = Tokens.concat(tokens.gather(single), tokens.gather(sorted).repeatEach(4))
        val newPositions = Positions.concat(positions.gather(single), childPositions(positions.gather(sorted)))
        return Assembly(newTokens, newPositions, consecutiveGroups(single.size, sorted.size))
    }

    /**
     * Full-resolution sequence [4 children of each 1x token || existing children], ids doubled (spec §6,
     * Algorithm R4); not yet in raster order. Groups cover the first 4 * numSingle tokens.
     */
    fun assembleStage3(tokens: Tokens, positions: Positions, numSingle: Int): Assembly {
        val singles = IntArray(numSingle) { it }
        val rest = IntArray(tokens.length - numSingle) { numSingle + it }
        val newTokens = Tokens.concat(tokens.gather(singles).repeatEach(4), tokens.gather(rest))
        val newPositions = Positions.concat(childPositions(positions.gather(singles)), positions.gather(rest)).scaled(2.0)
        return Assembly(newTokens, newPositions, consecutiveGroups(0, numSingle))
    }

    /** Permutation putting tokens in row-major order of their ids: a stable sort by (row, col) (Algorithm R5). */
    fun rasterOrder(positions: Positions): IntArray =
        (0 until positions.length).sortedWith(compareBy<Int>({ positions.row(it) }, { positions.col(it) })).toIntArray()
}
