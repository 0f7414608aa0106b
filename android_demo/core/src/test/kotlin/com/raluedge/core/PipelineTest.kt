package com.raluedge.core

import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Rule
import org.junit.Test
import org.junit.rules.TemporaryFolder
import java.io.File
import kotlin.math.sin

/**
 * The app's composition over fake ORT components (the bundle fixture's manifest and real tokenizers): generation in
 * every mode, prompt encoding with a learned token, personalization that pauses and resumes from its checkpoint
 * exactly where an uninterrupted run would be, and the learned-embedding file.
 */
class PipelineTest {
    @get:Rule
    val temp = TemporaryFolder()

    private val bundle = File(Vectors.folder, Vectors.index.obj("extra").string("bundle"))
    private val manifest = Manifest.read(bundle)
    private val tokenizers = manifest.tokenizers.associate { it.name to HfTokenizer.fromJson(File(bundle, it.file).readText()) }

    /** A text encoder whose output depends on the ids and on any injected rows, so the loss depends on theta. */
    private inner class FakeEncoder(val spec: TextEncoderSpec) : TextEncoder {
        override fun encode(inputIds: LongArray, placeholderIds: LongArray, placeholderEmbeds: FloatArray): TextEncoding {
            val d = spec.hiddenSize
            val seq = FloatArray(inputIds.size * d)
            for (t in inputIds.indices) {
                val j = placeholderIds.indexOf(inputIds[t])
                for (k in 0 until d) seq[t * d + k] = if (j >= 0) placeholderEmbeds[j * d + k] else (sin(inputIds[t] * 0.1 + k) * 0.5).toFloat()
            }
            return TextEncoding(seq, inputIds.size, d, if (spec.use == "pooled") seq.copyOfRange(0, d) else null)
        }
    }

    /** v = x - x0(cond): a velocity that depends on the text states through their mean. */
    private val denoiser = object : Denoiser {
        override fun velocity(tokens: Tokens, positions: Positions, sigma: Float, cond: Conditioning): FloatArray {
            val bias = cond.textStates.average().toFloat() + cond.pooled.average().toFloat()
            return FloatArray(tokens.data.size) { tokens.data[it] - bias * (it % 7) / 7f }
        }
    }

    private val decoder = object : VaeDecoder {
        override fun decode(rawLatent: FloatArray, channels: Int, height: Int, width: Int): RgbImage {
            val f = manifest.vae.factor
            return RgbImage(height * f, width * f, FloatArray(3 * height * f * width * f) { rawLatent[it % rawLatent.size].coerceIn(-1f, 1f) })
        }
    }

    private val prompts = PromptEncoder(manifest, tokenizers, manifest.textEncoders.associate { it.name to FakeEncoder(it) as TextEncoder })

    @Test
    fun generatorRunsBaselineAndEveryPresetWithTheirStepCounts() {
        val generator = Generator(manifest, prompts, denoiser, decoder)
        assertEquals(listOf("baseline", "flux-4x", "flux-5x", "flux-7x"), generator.modes)
        for (mode in generator.modes) {
            var steps = 0
            val result = generator.generate("a red circle", mode, 6, 3L, onStep = { steps++ })
            assertEquals(mode, result.nfe, steps)
            assertEquals(128, result.image.height)
            val again = generator.generate("a red circle", mode, 6, 3L)
            assertArrayEquals("$mode is deterministic for a seed", result.image.pixels, again.image.pixels, 0f)
        }
        try { generator.generate(" ", "flux-4x", 6, 3L); fail() } catch (e: UserError) { assertTrue(e.message!!.contains("empty")) }
        try { generator.generate("x", "flux-9x", 6, 3L); fail() } catch (e: UserError) { assertTrue(e.message!!.contains("flux-4x")) }
    }

    @Test
    fun aManifestGuidanceScaleMakesEveryModeRunTheEmptyNegativeFirstThenThePrompt() {
        val text = File(bundle, Manifest.NAME).readText()
        val guidedManifest = Manifest.parse(withGuidanceScale(text, 3.0))
        val guidedPrompts = PromptEncoder(guidedManifest, tokenizers, guidedManifest.textEncoders.associate { it.name to FakeEncoder(it) as TextEncoder })
        val negative = guidedPrompts.encodeNegative()
        val positive = guidedPrompts.encode("a red circle")
        val seen = ArrayList<Conditioning>()
        val recording = object : Denoiser {
            override fun velocity(tokens: Tokens, positions: Positions, sigma: Float, cond: Conditioning): FloatArray {
                seen.add(cond)
                return denoiser.velocity(tokens, positions, sigma, cond)
            }
        }
        val generator = Generator(guidedManifest, guidedPrompts, recording, decoder)
        for (mode in generator.modes) {
            seen.clear()
            val result = generator.generate("a red circle", mode, 3, 3L)
            assertEquals(3.0, result.guidanceScale!!, 0.0)
            assertEquals("$mode: two calls per step", 2 * result.nfe, seen.size)
            for ((i, cond) in seen.withIndex()) {
                val expected = if (i % 2 == 0) negative else positive
                assertArrayEquals("$mode call $i", expected.textStates, cond.textStates, 0f)
            }
            val plain = Generator(manifest, prompts, denoiser, decoder).generate("a red circle", mode, 3, 3L)
            assertEquals(null, plain.guidanceScale)
            assertTrue("$mode: guidance changes the image", !plain.image.pixels.contentEquals(result.image.pixels))
        }
        assertTrue("the negative prompt encodes differently", !negative.textStates.contentEquals(positive.textStates))
    }

    @Test
    fun learnedTokenRowsAreInjectedAtItsPlaceholderOnly() {
        val rows = manifest.textEncoders.associate { LearnedToken.keyFor(it) to FloatArray(it.hiddenSize) { 7f } }
        val inputs = prompts.inputs("a photo of <shape-token>", listOf(LearnedToken("<shape-token>", rows)))
        for (spec in manifest.textEncoders) {
            val input = inputs.getValue(spec.name)
            assertEquals(1, input.placeholderIds.size)
            assertTrue(input.inputIds.contains(input.placeholderIds[0]))
            assertEquals(manifest.tokenizer(spec.tokenizer).firstFreeId.toLong(), input.placeholderIds[0])
        }
        assertEquals(0, prompts.inputs("a photo", listOf(LearnedToken("<shape-token>", rows))).values.first().placeholderIds.size)
    }

    @Test
    fun personalizationPausedAndResumedFromItsCheckpointEqualsAnUninterruptedRun() {
        val config = ZoConfig(tau = 3)
        val personalizer = Personalizer(manifest, prompts, denoiser, config)
        val res = manifest.resolutions[0]
        val size = 2 * manifest.vae.latentChannels * res.latentHeight * res.latentWidth
        val moments = (0 until 3).map { i -> Array(2) { f -> FloatArray(size) { k -> (sin(k * 0.01 + i + 0.5 * f) * 0.3).toFloat() } } }
        val theta0 = personalizer.initialTheta("circle", tokenizers) { spec, id -> FloatArray(spec.hiddenSize) { k -> (id % 13) * 0.01f + k * 1e-3f } }
        assertEquals(manifest.textEncoders.fold(0) { total, e -> total + e.hiddenSize }, theta0.size)
        val caption = "a photo of a <shape-token>"
        val start = Zo.initState(theta0, config, 5L)
        val uninterrupted = personalizer.run(start, "<shape-token>", caption, moments, 7, checkpoint = {})

        val file = File(temp.root, "zo_state.safetensors")
        var calls = 0
        val paused = personalizer.run(start, "<shape-token>", caption, moments, 7, checkpoint = { ZoCheckpoint.write(file, it, mapOf("token" to "<shape-token>")) },
            shouldPause = { ++calls == 4 })
        assertEquals(4, paused.step)
        val (restored, meta) = ZoCheckpoint.read(file)
        assertEquals("<shape-token>", meta["token"])
        val resumed = personalizer.run(restored, "<shape-token>", caption, moments, 7, checkpoint = {})
        assertArrayEquals(uninterrupted.theta, resumed.theta, 0f)
        assertArrayEquals(uninterrupted.adamV, resumed.adamV, 0f)
        assertTrue(uninterrupted.sgRank >= 0 && uninterrupted.step == 7)

        val token = LearnedToken("<shape-token>", personalizer.rows(resumed.theta))
        val embeds = File(temp.root, "learned_embeds.safetensors")
        token.save(embeds, "circle")
        val (tensors, embedsMeta) = SafeTensors.read(embeds)
        assertEquals("pt", embedsMeta["format"])
        assertEquals(setOf("clip_l", "t5"), tensors.keys)
        assertArrayEquals(token.rows.getValue("clip_l"), LearnedToken.load(embeds).rows.getValue("clip_l"), 0f)
        try { personalizer.initialTheta("checkered circle", tokenizers) { s, _ -> FloatArray(s.hiddenSize) }; fail() } catch (e: UserError) { }
        try { LearnedToken.checkNew("<|endoftext|>", tokenizers.values); fail() } catch (e: UserError) { assertTrue(e.message!!.contains("vocabulary")) }
        try { LearnedToken.checkNew("my cat", tokenizers.values); fail() } catch (e: UserError) { assertTrue(e.message!!.contains("spaces")) }
        LearnedToken.checkNew("<my-cat>", tokenizers.values)
    }
}
