package com.raluedge.core

import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Test
import java.io.File
import java.nio.ByteBuffer
import java.nio.ByteOrder
import kotlin.math.abs

/**
 * The LoRA merge against vectors the Python runtime wrote (export/conformance/lora_vectors.py, issue 17): the
 * real LoRA's CLIP q_proj factors on the android int8 .ort's MatMulNBits weight and on the same weight as QDQ,
 * and its block-0 q/k/v factors fused in kohya's layout on the desktop .onnx's float W^T.
 */
class LoraTest {
    private val folder: File by lazy { File(Vectors.folder.parentFile, "lora_vectors") }
    private val index: JsonObject by lazy { JsonObject.parse(File(folder, "index.json").readText(), "lora_vectors/index.json") }
    private val manifest: JsonObject by lazy { JsonObject.parse(File(folder, index.string("manifest")).readText(), "lora manifest") }

    private fun computed(): Map<String, Map<String, OverrideTensor>> {
        val factors = Lora.read(File(folder, index.string("lora")), manifest, index.double("scale"))
        return Lora.overrides(folder, manifest, listOf(factors))
    }

    @Test
    fun mergedAndRequantizedTensorsEqualThePythonRuntimes() {
        val ours = computed()
        val expected = index.objects("expected")
        assertEquals(expected.size, ours.values.sumBy { it.size })
        for (e in expected) {
            val tensor = ours[e.string("graph")]?.get(e.string("name")) ?: throw AssertionError("no override ${e.string("name")}")
            assertEquals(e.string("dtype"), tensor.dtype)
            assertTrue(e.ints("shape").contentEquals(tensor.shape))
            val want = File(folder, e.string("file")).readBytes()
            assertEquals(want.size, tensor.bytes.size)
            when (tensor.dtype) {
                "float32" -> {
                    val a = ByteBuffer.wrap(tensor.bytes).order(ByteOrder.LITTLE_ENDIAN)
                    val b = ByteBuffer.wrap(want).order(ByteOrder.LITTLE_ENDIAN)
                    var maxRef = 0f
                    var maxDiff = 0f
                    for (i in 0 until want.size / 4) {
                        maxRef = maxOf(maxRef, abs(b.getFloat(i * 4)))
                        maxDiff = maxOf(maxDiff, abs(a.getFloat(i * 4) - b.getFloat(i * 4)))
                    }
                    assertTrue("${e.string("name")}: max diff $maxDiff of $maxRef", maxDiff <= 1e-6f * maxRef)
                }
                else -> {
                    // int8 codes: float64 sums in another order may flip a value sitting on a rounding boundary
                    var off = 0
                    for (i in want.indices) {
                        val d = abs(tensor.bytes[i] - want[i])
                        assertTrue("${e.string("name")}[$i] differs by $d", d <= 1)
                        if (d != 0) off++
                    }
                    assertTrue("${e.string("name")}: $off codes differ", off * 1000 <= want.size)
                }
            }
        }
    }

    @Test
    fun aKeyTheBundleCannotTakeIsOneUserError() {
        val bad = File.createTempFile("lora", ".safetensors")
        try {
            SafeTensors.write(bad, mapOf("transformer.no_such_block.lora_A.weight" to SafeTensors.Tensor(intArrayOf(1, 2), floatArrayOf(1f, 2f))))
            Lora.read(bad, manifest, 1.0)
            fail("expected a UserError")
        } catch (e: UserError) {
            assertTrue(e.message!!, e.message!!.contains("no_such_block"))
        } finally {
            bad.delete()
        }
    }

    @Test
    fun requantizationKeepsEveryRowAtFullRange() {
        val w = FloatArray(6) { (it - 2.5f) / 3f }
        val s = LoraMath.channelScales(w, 2, 3)
        val f = LoraFactors(floatArrayOf(1f, 0f, 0f), floatArrayOf(0.5f, -0.25f), 1, 3, 2, 1.0)
        val (q, s2) = LoraMath.requantized(LoraMath.quantizeRows(w, s, 2, 3), s, listOf(f), 2, 3)
        for (row in 0 until 2) assertEquals(127, (0 until 3).map { abs(q[row * 3 + it].toInt()) }.max())
        assertTrue(s2.all { it > 0f })
    }
}
