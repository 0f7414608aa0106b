package com.raluedge.core

import kotlin.math.abs

/**
 * Edge proxies and region selection at the end of RALU stage 1 (spec/RALU.md §4, §9.4; port of
 * ralu_edge/edges.py): one score per low-res token from the clean estimate x0, then the top k. Two proxies:
 * `latentGradScores` (Sobel in latent space, no decode; the default) and `cannyScores` (half-resolution decode,
 * grey, Canny 100/200 with aperture 3 and the L1 gradient, 16x16-pixel block sums).
 */
object Edges {
    const val TIE_BREAK_STD = 1e-6
    private const val TAN_22_5_Q15 = 13573L // OpenCV canny.cpp: tan(22.5 deg) * 2^15

    /** Grey mapping before Canny (spec §9.4): AFFINE maps [-1, 1] to [0, 255]; REFERENCE_CLIP is the reference's quirk. */
    enum class GrayMapping { AFFINE, REFERENCE_CLIP }

    /** (gx, gy) of the 3x3 Sobel with replicate padding over each of `planes` images [height, width]. */
    fun sobel(images: DoubleArray, planes: Int, height: Int, width: Int): Pair<DoubleArray, DoubleArray> {
        val gx = DoubleArray(images.size)
        val gy = DoubleArray(images.size)
        for (p in 0 until planes) {
            val base = p * height * width
            fun at(y: Int, x: Int): Double =
                images[base + y.coerceIn(0, height - 1) * width + x.coerceIn(0, width - 1)]
            for (y in 0 until height) for (x in 0 until width) {
                val right = at(y - 1, x + 1) + 2 * at(y, x + 1) + at(y + 1, x + 1)
                val left = at(y - 1, x - 1) + 2 * at(y, x - 1) + at(y + 1, x - 1)
                val below = at(y + 1, x - 1) + 2 * at(y + 1, x) + at(y + 1, x + 1)
                val above = at(y - 1, x - 1) + 2 * at(y - 1, x) + at(y - 1, x + 1)
                gx[base + y * width + x] = right - left
                gy[base + y * width + x] = below - above
            }
        }
        return Pair(gx, gy)
    }

    /** Sums over non-overlapping blockH x blockW blocks of a map [height, width], row-major. */
    fun blockSums(map: DoubleArray, height: Int, width: Int, blockH: Int, blockW: Int): DoubleArray {
        val bw = width / blockW
        val out = DoubleArray((height / blockH) * bw)
        for (y in 0 until height) for (x in 0 until width) out[(y / blockH) * bw + x / blockW] += map[y * width + x]
        return out
    }

    /**
     * Edge score per low-res token [lowH * lowW], raster order (spec §9.4 item 2): unpack x0 to [C, 2lowH, 2lowW],
     * Sobel per channel, sum over channels of |gx| + |gy|, then the sum over each token's 2x2 patch.
     */
    fun latentGradScores(x0: Tokens, lowH: Int, lowW: Int): DoubleArray {
        val latent = TokenOps.unpack(x0, lowH, lowW)
        val channels = x0.channels / 4
        val height = 2 * lowH
        val width = 2 * lowW
        val (gx, gy) = sobel(DoubleArray(latent.size) { latent[it].toDouble() }, channels, height, width)
        val magnitude = DoubleArray(height * width)
        for (c in 0 until channels) for (i in 0 until height * width) {
            magnitude[i] += abs(gx[c * height * width + i]) + abs(gy[c * height * width + i])
        }
        return blockSums(magnitude, height, width, 2, 2)
    }

    /** 8-bit grey [height * width] (values 0..255) from an RGB image [3, height, width] in [-1, 1], float32 as numpy. */
    fun grayUint8(image: FloatArray, height: Int, width: Int, mapping: GrayMapping): IntArray {
        val plane = height * width
        return IntArray(plane) { i ->
            var gray = 0.299f * image[i] + 0.587f * image[plane + i] + 0.114f * image[2 * plane + i]
            if (mapping == GrayMapping.AFFINE) gray = (gray + 1.0f) / 2.0f
            (gray.coerceIn(0.0f, 1.0f) * 255.0f).toInt()
        }
    }

    /** Canny edge map [height * width] (0 or 255) of a grey image (values 0..255), after OpenCV Canny(gray, low, high). */
    fun cannyEdges(gray: IntArray, height: Int, width: Int, low: Int = 100, high: Int = 200): IntArray {
        val (gxD, gyD) = sobel(DoubleArray(gray.size) { gray[it].toDouble() }, 1, height, width)
        val gx = LongArray(gray.size) { gxD[it].toLong() }
        val gy = LongArray(gray.size) { gyD[it].toLong() }
        val magnitude = LongArray(gray.size) { abs(gx[it]) + abs(gy[it]) }
        fun m(y: Int, x: Int): Long = if (y < 0 || x < 0 || y >= height || x >= width) 0L else magnitude[y * width + x]
        val candidate = BooleanArray(gray.size)
        val strong = java.util.ArrayDeque<Int>()
        val edge = BooleanArray(gray.size)
        for (y in 0 until height) for (x in 0 until width) {
            val i = y * width + x
            val centre = magnitude[i]
            val ax = abs(gx[i])
            val ay = abs(gy[i]) shl 15
            val tg22x = ax * TAN_22_5_Q15
            val keep = when {
                ay < tg22x -> centre > m(y, x - 1) && centre >= m(y, x + 1)
                ay > tg22x + (ax shl 16) -> centre > m(y - 1, x) && centre >= m(y + 1, x)
                (gx[i] xor gy[i]) >= 0 -> centre > m(y - 1, x - 1) && centre > m(y + 1, x + 1)
                else -> centre > m(y - 1, x + 1) && centre > m(y + 1, x - 1)
            }
            candidate[i] = keep && centre > low
            if (candidate[i] && centre > high) { edge[i] = true; strong.add(i) }
        }
        while (strong.isNotEmpty()) { // hysteresis: grow strong edges through 8-connected candidates
            val i = strong.poll()
            val y = i / width
            val x = i % width
            for (dy in -1..1) for (dx in -1..1) {
                val ny = y + dy
                val nx = x + dx
                if (ny < 0 || nx < 0 || ny >= height || nx >= width) continue
                val j = ny * width + nx
                if (candidate[j] && !edge[j]) { edge[j] = true; strong.add(j) }
            }
        }
        return IntArray(gray.size) { if (edge[it]) 255 else 0 }
    }

    /**
     * Scores per low-res token from a half-resolution decode (spec §4 "Reference edge proxy"): `decode` maps the
     * unpacked x0 latent [C, 2lowH, 2lowW] (the sampler's normalised latent) to RGB [3, H, W] in [-1, 1]; Canny
     * pixel counts x255 per (H/lowH) x (W/lowW) block.
     */
    fun cannyScores(x0: Tokens, lowH: Int, lowW: Int, decode: LatentDecode, mapping: GrayMapping): DoubleArray {
        val image = decode(TokenOps.unpack(x0, lowH, lowW), x0.channels / 4, 2 * lowH, 2 * lowW)
        require(image.height % lowH == 0 && image.width % lowW == 0) {
            "decode returned ${image.height}x${image.width}, not a multiple of the low-res grid ${lowH}x$lowW"
        }
        val gray = grayUint8(image.pixels, image.height, image.width, mapping)
        val edges = cannyEdges(gray, image.height, image.width)
        return blockSums(DoubleArray(edges.size) { edges[it].toDouble() }, image.height, image.width,
            image.height / lowH, image.width / lowW)
    }

    /**
     * Indices [k], ascending, of the k largest scores after a N(0, 1e-6^2) tie-break jitter drawn from `random`
     * (spec §4 Algorithm R2 lines 3-4): one normal(0, 1e-6, scores.size) draw; plain top-k.
     */
    fun selectRegions(scores: DoubleArray, k: Int, random: RandomSource): IntArray {
        val jitter = random.normal(0.0, TIE_BREAK_STD, scores.size)
        val jittered = DoubleArray(scores.size) { scores[it] + jitter[it] }
        val order = (0 until scores.size).sortedWith(compareBy<Int> { -jittered[it] })
        return order.take(k).sorted().toIntArray()
    }
}
