package com.raluedge.core

import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import java.io.File
import java.nio.ByteBuffer
import java.nio.ByteOrder
import kotlin.math.abs

/**
 * The conformance vectors written by export/conformance/ (android_demo/scripts/make_vectors.py): index.json and
 * little-endian .bin arrays. Found through the system property `vectors.dir`, else on the test classpath
 * (`vectors/index.json`, as Gradle and test-core.sh put src/test/resources there).
 */
object Vectors {
    val folder: File by lazy {
        System.getProperty("vectors.dir")?.let { return@lazy File(it) }
        val url = Vectors::class.java.classLoader.getResource("vectors/index.json")
            ?: throw IllegalStateException("conformance vectors not found: set -Dvectors.dir or put src/test/resources on the classpath")
        File(url.toURI()).parentFile
    }

    val index: JsonObject by lazy { JsonObject.parse(File(folder, "index.json").readText(Charsets.UTF_8), "index.json") }

    private fun entry(name: String): JsonObject = index.obj("arrays").obj(name)

    private fun bytes(name: String): ByteBuffer =
        ByteBuffer.wrap(File(folder, entry(name).string("file")).readBytes()).order(ByteOrder.LITTLE_ENDIAN)

    fun shape(name: String): IntArray = entry(name).ints("shape")

    fun floats(name: String): FloatArray {
        val e = entry(name)
        val b = bytes(name)
        return when (e.string("dtype")) {
            "float32" -> FloatArray(b.remaining() / 4) { b.getFloat(it * 4) }
            "float64" -> FloatArray(b.remaining() / 8) { b.getDouble(it * 8).toFloat() }
            else -> throw IllegalArgumentException("$name is ${e.string("dtype")}")
        }
    }

    fun doubles(name: String): DoubleArray {
        val e = entry(name)
        val b = bytes(name)
        return when (e.string("dtype")) {
            "float64" -> DoubleArray(b.remaining() / 8) { b.getDouble(it * 8) }
            "float32" -> DoubleArray(b.remaining() / 4) { b.getFloat(it * 4).toDouble() }
            else -> throw IllegalArgumentException("$name is ${e.string("dtype")}")
        }
    }

    fun ints(name: String): IntArray {
        val e = entry(name)
        val b = bytes(name)
        return when (e.string("dtype")) {
            "int64" -> IntArray(b.remaining() / 8) { b.getLong(it * 8).toInt() }
            "uint8" -> IntArray(b.remaining()) { b.get(it).toInt() and 0xFF }
            else -> throw IllegalArgumentException("$name is ${e.string("dtype")}")
        }
    }

    /** Packed tokens [1, L, C] as Tokens. */
    fun tokens(name: String): Tokens {
        val s = shape(name)
        return Tokens(s[s.size - 2], s[s.size - 1], floats(name))
    }

    fun positions(name: String): Positions = Positions(shape(name)[0], doubles(name))
}

/** max |actual - expected| / max |expected| (the Python side's relative_error). */
fun relativeError(actual: DoubleArray, expected: DoubleArray): Double {
    if (actual.size != expected.size) return Double.POSITIVE_INFINITY
    var scale = 0.0
    var error = 0.0
    for (i in expected.indices) {
        scale = maxOf(scale, abs(expected[i]))
        error = maxOf(error, abs(actual[i] - expected[i]))
    }
    return if (scale > 0) error / scale else error
}

fun assertClose(what: String, actual: DoubleArray, expected: DoubleArray, tolerance: Double = TOLERANCE) {
    assertEquals("$what: size", expected.size, actual.size)
    val error = relativeError(actual, expected)
    assertTrue("$what: relative error $error > $tolerance", error <= tolerance)
}

fun assertClose(what: String, actual: FloatArray, expected: FloatArray, tolerance: Double = TOLERANCE) =
    assertClose(what, DoubleArray(actual.size) { actual[it].toDouble() }, DoubleArray(expected.size) { expected[it].toDouble() }, tolerance)

const val TOLERANCE = 1e-5 // issue 7: host-side values within 1e-5 relative
const val SIGMA_TOLERANCE = 1e-6

/** A RandomSource that returns recorded draws in order and checks each request's kind and size. */
class ReplayRandom(private val draws: List<Pair<String, DoubleArray>>) : RandomSource {
    var position = 0
        private set

    private fun next(method: String, count: Int): DoubleArray {
        if (position >= draws.size) fail("draw $position ($method x $count) was not recorded")
        val (recorded, values) = draws[position++]
        assertEquals("draw ${position - 1} kind", recorded, method)
        assertEquals("draw ${position - 1} size", values.size, count)
        return values.copyOf()
    }

    override fun standardNormal(count: Int): DoubleArray = next("standard_normal", count)
    override fun normal(mean: Double, std: Double, count: Int): DoubleArray = next("normal", count)
    override fun uniform(low: Double, high: Double, count: Int): DoubleArray = next("uniform", count)
    override fun permutation(n: Int): IntArray = throw AssertionError("no permutation was recorded")
}

/**
 * One recorded denoiser call: inputs and the velocity the sampler saw. In a guided run that velocity is the guided one,
 * and velocityUncond / velocityCond are the real model's rows for the negative prompt "" and for the prompt.
 */
class RecordedCall(
    val tokens: Tokens, val positions: Positions, val sigma: Double, val velocity: FloatArray, val stage: Int,
    val velocityUncond: FloatArray? = null, val velocityCond: FloatArray? = null
)

/** Returns the recorded velocities in order, asserting that every input equals the recorded one. */
class ReplayDenoiser(private val calls: List<RecordedCall>) : Denoiser {
    var position = 0
        private set

    override fun velocity(tokens: Tokens, positions: Positions, sigma: Float, cond: Conditioning): FloatArray {
        if (position >= calls.size) fail("denoiser call $position was not recorded")
        val call = calls[position++]
        val where = "denoiser call ${position - 1} (stage ${call.stage})"
        assertEquals("$where: length", call.tokens.length, tokens.length)
        assertClose("$where: tokens", tokens.data, call.tokens.data)
        assertClose("$where: positions", positions.data, call.positions.data, 0.0)
        assertClose("$where: sigma", doubleArrayOf(sigma.toDouble()), doubleArrayOf(call.sigma), SIGMA_TOLERANCE)
        return call.velocity.copyOf()
    }
}

val NO_COND = Conditioning(FloatArray(0), 0, 0, FloatArray(0))

/** The manifest text `text` with `denoiser.guidance_scale` set to `scale` (a bundle whose model records CFG). */
fun withGuidanceScale(text: String, scale: Double): String {
    @Suppress("UNCHECKED_CAST")
    val root = LinkedHashMap(Json.parse(text) as Map<String, Any?>)
    @Suppress("UNCHECKED_CAST")
    root["denoiser"] = LinkedHashMap(root["denoiser"] as Map<String, Any?>).also { it["guidance_scale"] = scale }
    return Json.write(root)
}

fun recordedCalls(run: JsonObject): List<RecordedCall> = run.objects("calls").map {
    RecordedCall(Vectors.tokens(it.string("tokens")), Vectors.positions(it.string("positions")), it.double("sigma"),
        Vectors.floats(it.string("velocity")), it.int("stage"),
        it.stringOrNull("velocity_uncond")?.let { name -> Vectors.floats(name) },
        it.stringOrNull("velocity_cond")?.let { name -> Vectors.floats(name) })
}

fun recordedDraws(run: JsonObject): List<Pair<String, DoubleArray>> =
    run.objects("draws").map { Pair(it.string("method"), Vectors.doubles(it.string("values"))) }
