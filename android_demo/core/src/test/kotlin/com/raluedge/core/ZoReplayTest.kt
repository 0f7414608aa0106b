package com.raluedge.core

import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Test
import java.io.File
import kotlin.math.abs

/**
 * Recorded personalization steps (ralu_edge.zo over the shapes model) replayed through the Kotlin ZO optimizer:
 * each step's batch from the recorded draws, the losses from the recorded velocities, then RGE, SG projection,
 * ZOAdam and the SG refresh. After a refresh the run continues from the recorded P: its null-space rows are
 * arbitrary in any SVD (spec §6), so only its determined rows are compared.
 */
class ZoReplayTest {
    private val zo = Vectors.index.obj("zo")

    @Test
    fun everyZoUpdateMatchesThePythonRun() {
        val config = ZoConfig.fromJson(zo.obj("config"))
        val puts = PutsConfig.fromJson(zo.obj("puts"))
        assertClose("sigma range", puts.sigmaRange(zo.int("image_pixels")), zo.doubles("sigma_range"), SIGMA_TOLERANCE)
        val moments = Vectors.floats(zo.string("moments"))
        val shape = Vectors.shape(zo.string("moments")) // [images, 2, 2C, h, w]
        val perMoments = shape[2] * shape[3] * shape[4]
        var state = Zo.initState(Vectors.floats(zo.string("theta0")), config, zo.long("seed"))
        var refreshes = 0
        for (record in zo.objects("steps")) {
            val step = record.int("step")
            val where = "zo step $step"
            val draw = StepDraw(record.int("image_index"), record.bool("flip"), record.double("sigma"),
                Vectors.floats(record.string("noise")), Vectors.floats(record.string("posterior_noise")))
            val offset = (draw.imageIndex * 2 + (if (draw.flip) 1 else 0)) * perMoments
            val batch = Timesteps.personalizationBatch(moments.copyOfRange(offset, offset + perMoments), shape[2] / 2,
                shape[3], shape[4], draw, zo.double("shift_factor"), zo.double("scaling_factor"))
            assertClose("$where x0", batch.x0.data, Vectors.floats(record.string("x0")))
            assertClose("$where x_sigma", batch.xSigma.data, Vectors.floats(record.string("x_sigma")))
            assertClose("$where target", batch.target.data, Vectors.floats(record.string("target")))
            val velocities = Vectors.floats(record.string("velocities"))
            val perQuery = batch.target.data.size
            val directions = Vectors.floats(record.string("directions"))
            val (next, info) = Zo.step(state, directions, { queries ->
                assertEquals(config.n + 1, queries.size)
                DoubleArray(queries.size) { q -> Timesteps.mseLoss(velocities.copyOfRange(q * perQuery, (q + 1) * perQuery), batch.target.data) }
            }, config)
            assertClose("$where losses", info.losses, Vectors.doubles(record.string("losses")))
            assertClose("$where gradient", info.gradient, Vectors.doubles(record.string("gradient")))
            assertClose("$where theta", next.theta, Vectors.floats(record.string("theta")))
            assertClose("$where adam_m", next.adamM, Vectors.floats(record.string("adam_m")))
            assertClose("$where adam_v", next.adamV, Vectors.floats(record.string("adam_v")))
            assertEquals("$where refreshed", record.bool("sg_refreshed"), info.sgRefreshed)
            assertEquals("$where d_eff", record.int("d_eff"), info.dEff)
            assertEquals("$where loss", record.double("loss"), info.loss, TOLERANCE * abs(record.double("loss")))
            state = next
            if (info.sgRefreshed) {
                refreshes++
                val expected = Vectors.floats(record.string("sg_proj"))
                assertProjectorsAgree(where, next.sgProj, expected, next.sgRank, next.dim, Vectors.doubles(record.string("sg_singular_values")))
                state = next.withProjection(expected, next.sgRank)
            }
        }
        assertEquals(2, refreshes)
        val (restored, meta) = ZoCheckpoint.read(File(Vectors.folder, zo.string("checkpoint")))
        assertClose("python checkpoint theta", restored.theta, Vectors.floats(zo.objects("steps").last().string("theta")), 0.0)
        assertClose("python checkpoint vs kotlin theta", restored.theta, state.theta)
        assertEquals(state.dEff, restored.dEff)
        assertEquals(state.step, restored.step)
        assertEquals("ralu-zo-state", meta["format"])
    }

    @Test
    fun subspaceRefreshMatchesNumpyOnTheDeterminedDirections() {
        for ((i, case) in Vectors.index.objects("subspace").withIndex()) {
            val shape = Vectors.shape(case.string("history"))
            val history = Vectors.floats(case.string("history"))
            val standardized = Subspace.standardizeColumns(history, shape[0], shape[1])
            assertClose("case $i standardized", standardized, Vectors.doubles(case.string("standardized")))
            val (proj, rank) = Subspace.lowVarianceDirections(history, shape[0], shape[1], case.double("nu"))
            val expected = Vectors.floats(case.string("proj"))
            assertEquals("case $i rank", expected.size / shape[1], rank)
            assertProjectorsAgree("case $i", proj, expected, rank, shape[1], Vectors.doubles(case.string("singular_values")))
            for (a in 0 until rank) for (b in 0 until rank) {
                var dot = 0.0
                for (d in 0 until shape[1]) dot += proj[a * shape[1] + d].toDouble() * proj[b * shape[1] + d]
                assertEquals("case $i orthonormal", if (a == b) 1.0 else 0.0, dot, 1e-5)
            }
        }
    }

    /** P^T P over the rows the history determines (singular value > 1e-6 max, separated by 1e-6) agrees to 1e-5. */
    private fun assertProjectorsAgree(where: String, actual: FloatArray, expected: FloatArray, rank: Int, dim: Int, singular: DoubleArray) {
        assertEquals("$where rank", expected.size / dim, rank)
        val scale = singular.fold(0.0) { a, b -> maxOf(a, b) }
        val first = singular.size - rank
        val rows = (0 until rank).filter { j ->
            val i = first + j
            val gaps = listOf(i - 1, i + 1).filter { it in singular.indices }.map { abs(singular[i] - singular[it]) }
            singular[i] > 1e-6 * scale && gaps.all { it > 1e-6 * scale }
        }
        fun projector(p: FloatArray) = DoubleArray(dim * dim) { idx ->
            val a = idx / dim
            val b = idx % dim
            var s = 0.0
            for (r in rows) s += p[r * dim + a].toDouble() * p[r * dim + b]
            s
        }
        if (rows.isNotEmpty()) assertClose("$where projector", projector(actual), projector(expected))
        assertTrue(rank >= rows.size)
    }
}
