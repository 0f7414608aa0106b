package com.raluedge.core

import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Test
import java.io.File
import java.nio.ByteBuffer
import java.nio.ByteOrder

/**
 * The recorded cached runs (export/conformance/cache_vectors.py: the built-in model under TeaCache and TaylorSeer,
 * baseline and RALU) replayed through the Kotlin [CachedDenoiser] and sampler: the model's recorded velocities are
 * fed where it ran, and the Kotlin cache must make the same run/skip decisions, return the same reused or forecast
 * velocities and reach the same final latent as ralu_edge.
 */
class CacheReplayTest {
    /** The cache vector folder: beside the main vectors (`vectors.dir`/../cache_vectors), same format. */
    private val folder: File by lazy {
        val dir = File(Vectors.folder.parentFile, "cache_vectors")
        if (!File(dir, "index.json").isFile) fail("cache conformance vectors not found at $dir")
        dir
    }
    private val index: JsonObject by lazy { JsonObject.parse(File(folder, "index.json").readText(Charsets.UTF_8), "cache_vectors/index.json") }

    private fun buffer(name: String): Pair<JsonObject, ByteBuffer> {
        val entry = index.obj("arrays").obj(name)
        return Pair(entry, ByteBuffer.wrap(File(folder, entry.string("file")).readBytes()).order(ByteOrder.LITTLE_ENDIAN))
    }

    private fun floats(name: String): FloatArray {
        val (entry, b) = buffer(name)
        assertEquals("$name dtype", "float32", entry.string("dtype"))
        return FloatArray(b.remaining() / 4) { b.getFloat(it * 4) }
    }

    private fun doubles(name: String): DoubleArray {
        val (entry, b) = buffer(name)
        assertEquals("$name dtype", "float64", entry.string("dtype"))
        return DoubleArray(b.remaining() / 8) { b.getDouble(it * 8) }
    }

    private fun tokens(name: String): Tokens {
        val shape = index.obj("arrays").obj(name).ints("shape")
        return Tokens(shape[shape.size - 2], shape[shape.size - 1], floats(name))
    }

    /** The model under the cache: the recorded velocities of the calls that ran, in order. */
    private class ModelReplay(private val velocities: List<FloatArray>) : Denoiser {
        var position = 0
            private set

        override fun velocity(tokens: Tokens, positions: Positions, sigma: Float, cond: Conditioning): FloatArray {
            if (position >= velocities.size) fail("the cache ran the model more often than the recording")
            return velocities[position++].copyOf()
        }
    }

    @Test
    fun cachedRunsMakeTheRecordedDecisionsVelocitiesAndFinalLatent() {
        val runs = index.objects("runs")
        assertEquals(setOf("baseline", "flux-7x"), runs.map { it.string("mode") }.toSet())
        assertEquals(setOf("teacache", "taylorseer"), runs.map { CacheConfig.parse(it.string("cache")).method }.toSet())
        val coefficients = index.doubles("coefficients")
        val grid = index.ints("grid")
        for (run in runs) {
            val name = run.string("name")
            val recordedRan = run.list("ran").map { it as Boolean }
            val outputs = run.strings("outputs").map { floats(it) }
            assertTrue("$name skips at least one call", recordedRan.any { !it })
            val model = ModelReplay(outputs.filterIndexed { i, _ -> recordedRan[i] })
            val cached = CachedDenoiser(model, CacheConfig.parse(run.string("cache")), coefficients)
            val seen = ArrayList<FloatArray>()
            val seam = object : Denoiser {
                override fun velocity(tokens: Tokens, positions: Positions, sigma: Float, cond: Conditioning): FloatArray =
                    cached.velocity(tokens, positions, sigma, cond).also { seen.add(it) }
            }
            val noise = tokens(run.string("noise"))
            val final = if (run.string("mode") == "baseline") {
                val sigmas = Schedules.fluxBaselineSigmas(index.int("baseline_steps"), grid[0] * grid[1])
                Sampler.sampleBaseline(seam, noise, grid[0], grid[1], sigmas, NO_COND)
            } else {
                val draws = run.objects("draws").map { Pair(it.string("method"), doubles(it.string("values"))) }
                Sampler.raluSample(seam, noise, grid[0], grid[1], RaluPreset.get(run.string("mode")), NO_COND, ReplayRandom(draws)).tokens
            }
            assertArrayEquals("$name decisions", recordedRan.toBooleanArray(), cached.stats().ran)
            assertEquals("$name model calls", recordedRan.count { it }, model.position)
            assertEquals("$name seam calls", outputs.size, seen.size)
            for (i in outputs.indices) assertClose("$name call $i velocity", seen[i], outputs[i])
            assertClose("$name final", final.data, floats(run.string("final")))
        }
    }

    @Test
    fun cacheTextParsesAsTheRuntimeParsesIt() {
        assertEquals("teacache:0.3", CacheConfig.parse("teacache").label)
        assertEquals("teacache:0.15", CacheConfig.parse("teacache:0.15").label)
        assertEquals("taylorseer:2,3", CacheConfig.parse("taylorseer:2,3").label)
        assertEquals("taylorseer:1,2", CacheConfig.parse("taylorseer").label)
        assertEquals("none", CacheConfig.parse("none").label)
        for (bad in listOf("fastcache", "teacache:abc", "teacache:-1", "taylorseer:1,0", "taylorseer:a", "none:1")) {
            try {
                CacheConfig.parse(bad)
                fail("'$bad' was accepted")
            } catch (e: UserError) {
                assertTrue("'$bad': ${e.message}", e.message!!.contains("e.g."))
            }
        }
    }

    @Test
    fun forecastIsExactForAQuadraticInSigma() {
        fun f(s: Double) = floatArrayOf((1.0 - 2.0 * s + 3.0 * s * s).toFloat(), (0.5 * s * s).toFloat())
        val sigmas = doubleArrayOf(0.5, 0.7, 0.9)
        val forecast = CacheMath.taylorForecast(sigmas, sigmas.map { f(it) }, 0.3)
        assertClose("quadratic forecast", forecast, f(0.3), 1e-5)
    }
}

/** The manifest's `cache` calibration reaches the Kotlin side: absent in an older bundle, three numbers when exported. */
class CacheManifestTest {
    private val fixture = File(Vectors.folder, "bundle/ralu_config.json").readText(Charsets.UTF_8)

    private fun withCache(coefficients: List<Any>): String {
        @Suppress("UNCHECKED_CAST")
        val root = LinkedHashMap(Json.parse(fixture) as Map<String, Any?>)
        root["cache"] = mapOf("signal" to "input_rel_l1,sigma_step", "coefficients" to coefficients)
        return Json.write(root)
    }

    @Test
    fun calibrationIsReadWhenPresentAndNullWhenNot() {
        assertEquals(null, Manifest.parse(fixture).cacheCoefficients)
        val coefficients = Manifest.parse(withCache(listOf(-3.2, 6.6, 0.007))).cacheCoefficients!!
        assertArrayEquals(doubleArrayOf(-3.2, 6.6, 0.007), coefficients, 0.0)
        try {
            Manifest.parse(withCache(listOf(1.0, 2.0)))
            fail("two coefficients were accepted")
        } catch (e: UserError) {
            assertTrue(e.message!!, e.message!!.contains("cache.coefficients"))
        }
    }
}

/** The app's Generator with a cache (fake ORT components over the bundle fixture, as PipelineTest): counts and refusal. */
class GeneratorCacheTest {
    private val bundle = File(Vectors.folder, Vectors.index.obj("extra").string("bundle"))
    private val manifest = Manifest.read(bundle)
    private val tokenizers = manifest.tokenizers.associate { it.name to HfTokenizer.fromJson(File(bundle, it.file).readText()) }

    private class ConstantEncoder(val spec: TextEncoderSpec) : TextEncoder {
        override fun encode(inputIds: LongArray, placeholderIds: LongArray, placeholderEmbeds: FloatArray): TextEncoding {
            val seq = FloatArray(inputIds.size * spec.hiddenSize) { 0.1f }
            return TextEncoding(seq, inputIds.size, spec.hiddenSize, if (spec.use == "pooled") seq.copyOfRange(0, spec.hiddenSize) else null)
        }
    }

    private class Counting : Denoiser {
        var calls = 0
        override fun velocity(tokens: Tokens, positions: Positions, sigma: Float, cond: Conditioning): FloatArray {
            calls++
            return FloatArray(tokens.data.size) { tokens.data[it] * (0.5f + sigma) }
        }
    }

    private val decoder = object : VaeDecoder {
        override fun decode(rawLatent: FloatArray, channels: Int, height: Int, width: Int): RgbImage {
            val f = manifest.vae.factor
            return RgbImage(height * f, width * f, FloatArray(3 * height * f * width * f) { rawLatent[it % rawLatent.size].coerceIn(-1f, 1f) })
        }
    }

    private val prompts = PromptEncoder(manifest, tokenizers, manifest.textEncoders.associate { it.name to ConstantEncoder(it) as TextEncoder })

    @Test
    fun taylorSeerRunsTheModelOnlyOnItsStepsAndReportsTheCounts() {
        val model = Counting()
        val result = Generator(manifest, prompts, model, decoder).generate("a red circle", "flux-7x", 6, 3L, cache = CacheConfig.parse("taylorseer:1,2"))
        // flux-7x stages of 2, 3 and 5 steps; every stage restarts the cache: runs at 0 | 0, 2 | 0, 2, 4
        assertEquals(6, model.calls)
        assertEquals(6, result.callsMade)
        assertEquals(4, result.callsSkipped)
        assertEquals("taylorseer:1,2", result.cache)
        val plain = Generator(manifest, prompts, Counting(), decoder).generate("a red circle", "flux-7x", 6, 3L)
        assertEquals(10, plain.callsMade)
        assertEquals("none", plain.cache)
    }

    @Test
    fun teaCacheOnABundleWithoutCalibrationIsRefusedWithTheFix() {
        assertEquals(null, manifest.cacheCoefficients)
        try {
            Generator(manifest, prompts, Counting(), decoder).generate("a red circle", "flux-7x", 6, 3L, cache = CacheConfig.parse("teacache"))
            fail("teacache ran without calibration")
        } catch (e: UserError) {
            assertTrue(e.message!!, e.message!!.contains("taylorseer"))
        }
    }
}
