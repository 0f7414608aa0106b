package com.raluedge.core

import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Test

/** The Canny edge proxy (spec/RALU.md §4, §9.4) against ralu_edge's NumPy port of OpenCV on the vectors' image. */
class EdgesTest {
    private val canny = Vectors.index.obj("canny")

    @Test
    fun greyMappingsCannyEdgesAndBlockSumsMatchExactly() {
        val image = Vectors.floats(canny.string("image"))
        val shape = Vectors.shape(canny.string("image"))
        val height = shape[2]
        val width = shape[3]
        for ((key, mapping) in listOf("affine" to Edges.GrayMapping.AFFINE, "reference_clip" to Edges.GrayMapping.REFERENCE_CLIP)) {
            val expected = canny.obj(key)
            val gray = Edges.grayUint8(image, height, width, mapping)
            assertArrayEquals("$key grey", Vectors.ints(expected.string("gray")), gray)
            val edges = Edges.cannyEdges(gray, height, width, canny.int("low_threshold"), canny.int("high_threshold"))
            assertArrayEquals("$key edges", Vectors.ints(expected.string("edges")), edges)
            val block = canny.int("block")
            val sums = Edges.blockSums(DoubleArray(edges.size) { edges[it].toDouble() }, height, width, block, block)
            assertClose("$key block sums", sums, Vectors.doubles(expected.string("block_sums")), 0.0)
        }
    }

    @Test
    fun cannyScoresUseTheDecodedImageBlocksOfEachLowResToken() {
        val image = Vectors.floats(canny.string("image"))
        val decode: LatentDecode = { _, _, _, _ -> RgbImage(64, 64, image) }
        val x0 = Tokens(16, 16, FloatArray(256))
        val scores = Edges.cannyScores(x0, 4, 4, decode, Edges.GrayMapping.AFFINE)
        assertEquals(16, scores.size)
        assertClose("canny scores", scores, Vectors.doubles(canny.obj("affine").string("block_sums")), 0.0)
    }

    @Test
    fun selectionIsTopKAscendingWithTheJitterBreakingTies() {
        val scores = doubleArrayOf(0.0, 5.0, 5.0, 1.0, 5.0)
        val jitter = doubleArrayOf(0.0, -1e-6, 2e-6, 0.0, 1e-6)
        val selected = Edges.selectRegions(scores, 2, ReplayRandom(listOf(Pair("normal", jitter))))
        assertArrayEquals(intArrayOf(2, 4), selected)
    }
}
