package com.raluedge.core

import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Test

/** Presets, sigma lists, transitions and stage lengths against the vectors' values from ralu_edge (spec/RALU.md §7-§9). */
class SchedulesTest {
    @Test
    fun everyPresetOfTheVectorsExistsWithTheSameSigmaListsAndTransitions() {
        val stored = Vectors.index.objects("presets")
        assertEquals(stored.map { it.string("name") }.toSet(), RaluPreset.PRESETS.keys)
        for (entry in stored) {
            val preset = RaluPreset.get(entry.string("name"))
            val name = preset.name
            assertClose("$name c", doubleArrayOf(preset.c), doubleArrayOf(entry.double("c")), SIGMA_TOLERANCE)
            assertClose("$name s", preset.s, entry.doubles("s"), SIGMA_TOLERANCE)
            assertClose("$name a", preset.transitions.map { it.a }.toDoubleArray(), entry.doubles("a"), SIGMA_TOLERANCE)
            assertClose("$name b", preset.transitions.map { it.b }.toDoubleArray(), entry.doubles("b"), SIGMA_TOLERANCE)
            val sigmas = entry.list("stage_sigmas")
            for (k in 0 until 3) {
                @Suppress("UNCHECKED_CAST")
                val expected = (sigmas[k] as List<Any?>).map { (it as Number).toDouble() }.toDoubleArray()
                assertClose("$name stage ${k + 1} sigmas", preset.stageSigmas[k], expected, SIGMA_TOLERANCE)
            }
            val grid = entry.ints("grid")
            assertArrayEquals("$name stage lengths", entry.ints("stage_lengths"), preset.stageLengths(grid[0], grid[1]))
            assertEquals("$name k", entry.int("k"), preset.numSelected(grid[0], grid[1]))
            assertEquals("$name nfe", entry.int("nfe"), preset.nfe)
            assertClose("$name alpha", doubleArrayOf(Renoise.correlationAlpha(preset.c)), doubleArrayOf(entry.double("alpha")), SIGMA_TOLERANCE)
        }
    }

    @Test
    fun lastStageEndsAtZeroAndTransitionsJumpUpwards() {
        for (preset in RaluPreset.PRESETS.values) {
            val stages = preset.stageSigmas
            assertEquals(0.0, stages[2].last(), 0.0)
            for (k in 0 until 2) assertTrue(preset.name, stages[k + 1][0] > stages[k].last())
            for (s in stages) for (i in 1 until s.size) assertTrue(preset.name, s[i] < s[i - 1])
        }
    }

    @Test
    fun baselineSchedulesMatchDiffusersValuesFromTheVectors() {
        val schedules = Vectors.index.obj("schedules")
        for (case in schedules.objects("flux_baseline")) {
            val sigmas = Schedules.fluxBaselineSigmas(case.int("num_steps"), case.int("image_seq_len"))
            assertClose("flux baseline ${case.int("num_steps")}/${case.int("image_seq_len")}", sigmas, case.doubles("sigmas"), SIGMA_TOLERANCE)
        }
        for (case in schedules.objects("static_shift")) {
            assertClose("static shift", Schedules.staticShiftSigmas(case.int("num_steps"), case.double("shift")), case.doubles("sigmas"), SIGMA_TOLERANCE)
        }
    }

    @Test
    fun workedExampleOfTheSpecHas2838TokenSteps() {
        val preset = RaluPreset.get("flux-4x")
        assertArrayEquals(intArrayOf(64, 121, 256), preset.stageLengths(16, 16))
        assertEquals(2838, Sampler.imageTokenSteps(preset, 16, 16)) // spec/RALU.md §9.6
    }

    @Test
    fun unknownPresetAndOddGridAreUserErrorsNamingTheFix() {
        try { RaluPreset.get("flux-9x"); fail() } catch (e: UserError) { assertTrue(e.message!!.contains("flux-4x")) }
        try { RaluPreset.get("flux-4x").numSelected(15, 16); fail() } catch (e: UserError) { assertTrue(e.message!!.contains("even")) }
    }
}
