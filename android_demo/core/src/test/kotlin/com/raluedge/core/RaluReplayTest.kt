package com.raluedge.core

import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Test

/**
 * The recorded RALU and baseline runs replayed through the Kotlin sampler, feeding the recorded velocities and random
 * draws: every denoiser input (tokens, positions, sigma) and every host-side intermediate must match ralu_edge.
 */
class RaluReplayTest {
    private val runs = Vectors.index.objects("runs")

    @Test
    fun raluRunsReproduceEveryDenoiserInputSelectionAndTheFinalLatent() {
        val raluRuns = runs.filter { it.string("mode") != "baseline" }
        assertEquals(setOf("flux-4x", "flux-7x"), raluRuns.map { it.string("mode") }.toSet())
        for (run in raluRuns) {
            val grid = run.ints("grid")
            val calls = recordedCalls(run)
            val denoiser = ReplayDenoiser(calls)
            val random = ReplayRandom(recordedDraws(run))
            val stages = ArrayList<StageInfo>()
            val result = Sampler.raluSample(denoiser, Vectors.tokens(run.string("noise")), grid[0], grid[1],
                RaluPreset.get(run.string("mode")), NO_COND, random, onStage = { stages.add(it) })
            val trace = run.obj("trace")
            assertEquals(calls.size, denoiser.position)
            assertEquals(3, random.position)
            assertArrayEquals(run.ints("stage_lengths"), stages.map { it.numTokens }.toIntArray())
            assertArrayEquals("${run.string("name")} selected", Vectors.ints(trace.string("selected")), result.selected)
            assertClose("${run.string("name")} final", result.tokens.data, Vectors.floats(trace.string("final")))
        }
    }

    @Test
    fun everyIntermediateOfTheTraceMatchesStepByStep() {
        for (run in runs.filter { it.string("mode") != "baseline" }) checkTrace(run)
    }

    private fun checkTrace(run: JsonObject) {
        val name = run.string("name")
        val t = run.obj("trace")
        fun f(role: String) = Vectors.floats(t.string(role))
        fun i(role: String) = Vectors.ints(t.string(role))
        val grid = run.ints("grid")
        val preset = RaluPreset.get(run.string("mode"))
        val (sigmas, transitions) = Sampler.stagePlan(preset)
        val calls = recordedCalls(run)
        val draws = recordedDraws(run)
        val lowH = grid[0] / 2
        val lowW = grid[1] / 2
        val k = preset.numSelected(grid[0], grid[1])
        assertEquals(run.int("k"), k)
        val n1 = preset.n[0]
        val n2 = preset.n[1]

        val start1 = TokenOps.downsample(Vectors.tokens(run.string("noise")), grid[0], grid[1])
        assertClose("$name stage1 start", start1.data, f("stage1_start"), 0.0)
        val positions1 = TokenOps.gridPositions(lowH, lowW)
        assertClose("$name stage1 positions", positions1.data, Vectors.doubles(t.string("stage1_positions")), 0.0)
        val final1 = lastStep(calls[n1 - 1], sigmas[0])
        assertClose("$name stage1 final", final1.data, f("stage1_final"))
        val x0 = Renoise.tweedieX0(final1, calls[n1 - 1].velocity, sigmas[0].last())
        assertClose("$name x0", x0.data, f("x0"))
        val scores = Edges.latentGradScores(x0, lowH, lowW)
        assertClose("$name edge scores", scores, Vectors.doubles(t.string("edge_scores")))
        val selected = Edges.selectRegions(scores, k, ReplayRandom(draws.subList(0, 1)))
        assertArrayEquals("$name selected", i("selected"), selected)

        val two = TokenOps.assembleStage2(final1, positions1, selected)
        assertClose("$name stage2 assembled", two.tokens.data, f("stage2_assembled"))
        assertClose("$name stage2 positions", two.positions.data, Vectors.doubles(t.string("stage2_positions")), 0.0)
        assertArrayEquals("$name stage2 groups", i("stage2_groups"), two.groups)
        val noise1 = Renoise.correlatedNoise(two.tokens.length, two.tokens.channels, two.groups, preset.c, ReplayRandom(draws.subList(1, 2)))
        assertClose("$name renoise 1 noise", noise1, f("renoise1_noise"))
        val start2 = Renoise.renoise(two.tokens, noise1, transitions[0].a, transitions[0].b)
        assertClose("$name stage2 start", start2.data, f("stage2_start"))
        assertClose("$name stage2 first call", start2.data, calls[n1].tokens.data)

        val final2 = lastStep(calls[n1 + n2 - 1], sigmas[1])
        assertClose("$name stage2 final", final2.data, f("stage2_final"))
        val three = TokenOps.assembleStage3(final2, two.positions, lowH * lowW - k)
        assertClose("$name stage3 assembled", three.tokens.data, f("stage3_assembled"))
        assertClose("$name stage3 positions (unsorted)", three.positions.data, Vectors.doubles(t.string("stage3_positions_unsorted")), 0.0)
        assertArrayEquals("$name stage3 groups", i("stage3_groups"), three.groups)
        val noise2 = Renoise.correlatedNoise(three.tokens.length, three.tokens.channels, three.groups, preset.c, ReplayRandom(draws.subList(2, 3)))
        assertClose("$name renoise 2 noise", noise2, f("renoise2_noise"))
        val renoised = Renoise.renoise(three.tokens, noise2, transitions[1].a, transitions[1].b)
        assertClose("$name stage3 renoised", renoised.data, f("stage3_renoised"))
        val order = TokenOps.rasterOrder(three.positions)
        assertArrayEquals("$name raster order", i("raster_order"), order)
        assertClose("$name stage3 start", renoised.gather(order).data, f("stage3_start"))
        assertClose("$name stage3 positions", three.positions.gather(order).data, Vectors.doubles(t.string("stage3_positions")), 0.0)

        val final = lastStep(calls.last(), sigmas[2])
        assertClose("$name final", final.data, f("final"))
        assertClose("$name final latent", TokenOps.unpack(final, grid[0], grid[1]), f("final_latent"))
        assertClose("$name pack(unpack)", TokenOps.pack(f("final_latent"), final.channels / 4, 2 * grid[0], 2 * grid[1]).data, final.data, 0.0)

        val axes = run.ints("rope_axes_dim")
        for ((stage, positions) in listOf(positions1, two.positions, three.positions.gather(order)).withIndex()) {
            val rope = Rope.tables(positions, axes, 10000.0)
            assertClose("$name rope ${stage + 1} cos", rope.cos, f("rope${stage + 1}_cos"))
            assertClose("$name rope ${stage + 1} sin", rope.sin, f("rope${stage + 1}_sin"))
        }
    }

    private fun lastStep(call: RecordedCall, stageSigmas: DoubleArray): Tokens {
        val dt = (stageSigmas[stageSigmas.size - 1] - stageSigmas[stageSigmas.size - 2]).toFloat()
        return Tokens(call.tokens.length, call.tokens.channels, FloatArray(call.tokens.data.size) { call.tokens.data[it] + dt * call.velocity[it] })
    }

    @Test
    fun baselineRunReproducesTheFluxScheduleAndEveryEulerStep() {
        for (run in runs.filter { it.string("mode") == "baseline" }) {
            val grid = run.ints("grid")
            val sigmas = Schedules.fluxBaselineSigmas(run.int("num_steps"), grid[0] * grid[1])
            assertClose("baseline sigmas", sigmas, run.doubles("sigmas"), SIGMA_TOLERANCE)
            val denoiser = ReplayDenoiser(recordedCalls(run))
            val steps = ArrayList<StepInfo>()
            val final = Sampler.sampleBaseline(denoiser, Vectors.tokens(run.string("noise")), grid[0], grid[1], sigmas, NO_COND) { steps.add(it) }
            assertEquals(run.int("num_steps"), denoiser.position)
            assertEquals(run.int("num_steps"), steps.size)
            assertClose("baseline final", final.data, Vectors.floats(run.obj("trace").string("final")))
        }
    }
}
