package com.raluedge.core

import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Test

/**
 * The recorded classifier-free guidance runs (export/conformance/: the real model's rows for the negative prompt ""
 * and for the prompt at every call) replayed through the Kotlin [ClassifierFreeGuidance] and sampler: every guided
 * velocity equals the one ralu_edge computed bit for bit, every denoiser input matches, and so does the final latent.
 */
class GuidanceReplayTest {
    private val guidedRuns = Vectors.index.objects("runs").filter { it.has("guidance_scale") }

    private val negative = Conditioning(FloatArray(1), 1, 1, FloatArray(1))
    private val prompt = Conditioning(FloatArray(1) { 1f }, 1, 1, FloatArray(1) { 1f })

    /** The model under guidance: the recorded row for whichever conditioning asks, inputs checked once per pair. */
    private class ReplayHalves(private val calls: List<RecordedCall>, private val negative: Conditioning) : Denoiser {
        val check = ReplayDenoiser(calls)

        override fun velocity(tokens: Tokens, positions: Positions, sigma: Float, cond: Conditioning): FloatArray {
            if (cond === negative) {
                check.velocity(tokens, positions, sigma, cond)
                return calls[check.position - 1].velocityUncond!!.copyOf()
            }
            assertClose("prompt row tokens", tokens.data, calls[check.position - 1].tokens.data, 0.0)
            return calls[check.position - 1].velocityCond!!.copyOf()
        }
    }

    @Test
    fun guidedRunsReproduceEveryGuidedVelocityAndTheFinalLatent() {
        assertTrue("the vectors hold a guided run", guidedRuns.isNotEmpty())
        for (run in guidedRuns) {
            val name = run.string("name")
            assertEquals("", run.string("negative_prompt"))
            val calls = recordedCalls(run)
            val halves = ReplayHalves(calls, negative)
            val guided = ArrayList<FloatArray>()
            val guidance = ClassifierFreeGuidance(halves, run.double("guidance_scale").toFloat(), negative)
            val recording = object : Denoiser {
                override fun velocity(tokens: Tokens, positions: Positions, sigma: Float, cond: Conditioning): FloatArray =
                    guidance.velocity(tokens, positions, sigma, cond).also { guided.add(it) }
            }
            val grid = run.ints("grid")
            val noise = Vectors.tokens(run.string("noise"))
            val final = if (run.string("mode") == "baseline") {
                Sampler.sampleBaseline(recording, noise, grid[0], grid[1], Schedules.fluxBaselineSigmas(run.int("num_steps"), grid[0] * grid[1]), prompt)
            } else {
                Sampler.raluSample(recording, noise, grid[0], grid[1], RaluPreset.get(run.string("mode")), prompt,
                    ReplayRandom(recordedDraws(run))).tokens
            }
            assertEquals(calls.size, halves.check.position)
            for ((i, call) in calls.withIndex()) assertArrayEquals("$name call $i guided velocity", call.velocity, guided[i], 0f)
            assertClose("$name final", final.data, Vectors.floats(run.obj("trace").string("final")))
        }
    }
}
