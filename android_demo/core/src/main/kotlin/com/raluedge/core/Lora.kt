package com.raluedge.core

import java.io.File
import java.io.RandomAccessFile
import java.nio.ByteBuffer
import java.nio.ByteOrder
import kotlin.math.abs
import kotlin.math.max
import kotlin.math.min

/**
 * LoRA on an exported bundle at session creation (issue 17, docs/lora.md), as ralu_runtime.lora does it: a
 * LoRA .safetensors is matched against the manifest's `lora` spec (diffusers/PEFT module names, kohya aliases
 * recorded at export) and each patched tensor is merged on the host, W' = W + s·(α/r)·B·A, then re-quantized per
 * output channel where the graph holds int8 (ralu_edge/lora.py, the same float64 sum and float32 rounding). The
 * result is a map graph -> initializer -> [OverrideTensor] that the app gives to ORT Java's
 * `SessionOptions.addInitializer` before it opens that graph's session: no graph rewrite, no file written.
 * Checked against vectors written by the Python runtime (LoraTest).
 */
class LoraFactors(val down: FloatArray, val up: FloatArray, val rank: Int, val inFeatures: Int, val outFeatures: Int,
                  val scale: Double)

/** One override: little-endian bytes in `dtype` ("float32", "int8", "uint8") of `shape`. */
class OverrideTensor(val dtype: String, val shape: IntArray, val bytes: ByteArray)

object LoraMath {
    /** Σ scale·(B·A) as [out, in] doubles. */
    fun delta(factors: List<LoraFactors>, out: Int, inF: Int): DoubleArray {
        val d = DoubleArray(out * inF)
        for (f in factors) {
            for (o in 0 until out) for (r in 0 until f.rank) {
                val b = f.scale * f.up[o * f.rank + r].toDouble()
                if (b == 0.0) continue
                val row = r * inF
                for (i in 0 until inF) d[o * inF + i] += b * f.down[row + i].toDouble()
            }
        }
        return d
    }

    /** W' = W + Σ scale·B·A, float32 [out, in]. */
    fun merged(weight: FloatArray, factors: List<LoraFactors>, out: Int, inF: Int): FloatArray {
        val d = delta(factors, out, inF)
        return FloatArray(out * inF) { (weight[it].toDouble() + d[it]).toFloat() }
    }

    /** absmax / 127 per row (1 for an all-zero row), float32. */
    fun channelScales(weight: FloatArray, out: Int, inF: Int): FloatArray = FloatArray(out) { o ->
        var m = 0f
        for (i in 0 until inF) m = max(m, abs(weight[o * inF + i]))
        if (m > 0f) m / 127f else 1f
    }

    fun quantizeRows(weight: FloatArray, scales: FloatArray, out: Int, inF: Int): ByteArray = ByteArray(out * inF) {
        val q = Math.rint((weight[it] / scales[it / inF]).toDouble())  // half to even, as numpy.round
        min(127.0, max(-127.0, q)).toInt().toByte()
    }

    /** (q', scales') of dequantize(q, scales) + Σ scale·B·A. */
    fun requantized(q: ByteArray, scales: FloatArray, factors: List<LoraFactors>, out: Int, inF: Int): Pair<ByteArray, FloatArray> {
        val w = FloatArray(out * inF) { q[it].toFloat() * scales[it / inF] }
        val m = merged(w, factors, out, inF)
        val s = channelScales(m, out, inF)
        return Pair(quantizeRows(m, s, out, inF), s)
    }
}

/** A manifest `lora_targets` entry (ralu_edge.manifest.LoraTarget). */
class LoraTarget(val graph: String, val module: String, val layout: String, val weight: String, val weightAt: Location,
                 val transposed: Boolean, val scale: String?, val scaleAt: Location?) {
    class Location(val file: String, val offset: Long, val dtype: String, val shape: IntArray)

    /** [out, in] of the Linear this tensor holds. */
    val outIn: Pair<Int, Int>
        get() = when {
            layout == "nbits" -> Pair(weightAt.shape[0], weightAt.shape[1] * weightAt.shape[2])
            transposed -> Pair(weightAt.shape[1], weightAt.shape[0])
            else -> Pair(weightAt.shape[0], weightAt.shape[1])
        }
}

object Lora {
    private val SUFFIXES = listOf(".lora_A.weight" to "down", ".lora_B.weight" to "up",
        ".lora_linear_layer.down.weight" to "down", ".lora_linear_layer.up.weight" to "up",
        ".lora.down.weight" to "down", ".lora.up.weight" to "up",
        ".lora_down.weight" to "down", ".lora_up.weight" to "up", ".alpha" to "alpha")

    fun targets(manifest: JsonObject): List<LoraTarget> = manifest.objects("graphs").flatMap { g ->
        if (!g.has("lora_targets")) emptyList() else g.objects("lora_targets").map { t ->
            LoraTarget(g.string("name"), t.string("module"), t.string("layout"), t.string("weight"), location(t.obj("weight_at")),
                t.boolOr("transposed", false), t.stringOrNull("scale"), t.objOrNull("scale_at")?.let { location(it) })
        }
    }

    private fun location(o: JsonObject) = LoraTarget.Location(o.string("file"), o.long("offset"), o.string("dtype"), o.ints("shape"))

    /**
     * {module: factors} of a LoRA file at `userScale` against the manifest; UserError (one sentence) for keys the
     * bundle cannot take or shapes of another model.
     */
    fun read(file: File, manifest: JsonObject, userScale: Double): Map<String, LoraFactors> {
        if (!file.isFile) throw UserError("${file.name}: no such LoRA file; pick a .safetensors LoRA")
        val spec = manifest.objOrNull("lora") ?: throw UserError("this bundle records no LoRA targets; export it again with this ralu-export")
        val shapes = targets(manifest).associate { it.module to it.outIn }
        val aliases = spec.objects("aliases").associate { a ->
            a.string("name") to a.objects("parts").map { Triple(it.string("module"), it.int("start"), it.int("stop")) }
        }
        val (tensors, metadata) = SafeTensors.read(file)
        val groups = LinkedHashMap<String, MutableMap<String, SafeTensors.Tensor>>()
        for ((key, tensor) in tensors) {
            val (suffix, kind) = SUFFIXES.firstOrNull { key.endsWith(it.first) }
                ?: throw UserError("${file.name}: key '$key' names no weight this bundle can take; the LoRA was made for another model")
            val name = key.removeSuffix(suffix)
            if (name !in shapes && name !in aliases) throw UserError("${file.name}: key '$key' names no weight this bundle can take; the LoRA was made for another model")
            groups.getOrPut(name) { HashMap() }[kind] = tensor
        }
        val saved = metadata["lora_adapter_metadata"]?.let { JsonObject.parse(it, "${file.name} metadata") }
        val ranks = groups.entries.associate { (name, parts) -> (aliases[name]?.first()?.first ?: name) to (parts["down"]?.shape?.get(0) ?: 0) }
        val result = LinkedHashMap<String, LoraFactors>()
        for ((name, parts) in groups) {
            val down = parts["down"] ?: throw UserError("${file.name}: $name has no down (A) matrix; the file is incomplete")
            val up = parts["up"] ?: throw UserError("${file.name}: $name has no up (B) matrix; the file is incomplete")
            val rank = down.shape[0]
            val inF = down.shape[1]
            val pieces = aliases[name] ?: listOf(Triple(name, 0, up.shape[0]))
            for ((module, start, stop) in pieces) {
                val component = module.substringBefore('.')
                val alpha = parts["alpha"]?.floats?.get(0)?.toDouble()
                    ?: saved?.let { if (it.has("$component.lora_alpha")) it.double("$component.lora_alpha") else null }
                    ?: ranks.filterKeys { it.startsWith("$component.") }.values.groupingBy { it }.eachCount().maxBy { it.value }!!.key.toDouble()
                val (out, expectedIn) = shapes.getValue(module)
                if (inF != expectedIn || stop - start != out || up.shape[0] < stop)
                    throw UserError("${file.name}: $name does not fit this bundle's $module [$out, $expectedIn]; the LoRA was made for another base model")
                val rows = up.floats.copyOfRange(start * rank, stop * rank)
                result[module] = LoraFactors(down.floats, rows, rank, inF, out, userScale * alpha / rank)
            }
        }
        return result
    }

    /** graph -> initializer -> merged tensor, for the targets the LoRAs touch; base bytes read from the bundle. */
    fun overrides(bundleDir: File, manifest: JsonObject, loras: List<Map<String, LoraFactors>>): Map<String, Map<String, OverrideTensor>> {
        val out = LinkedHashMap<String, MutableMap<String, OverrideTensor>>()
        for (t in targets(manifest)) {
            val factors = loras.mapNotNull { it[t.module] }
            if (factors.isEmpty()) continue
            out.getOrPut(t.graph) { LinkedHashMap() }.putAll(targetOverrides(bundleDir, t, factors))
        }
        return out
    }

    private fun targetOverrides(bundleDir: File, t: LoraTarget, factors: List<LoraFactors>): Map<String, OverrideTensor> {
        val (o, i) = t.outIn
        val base = readBytes(bundleDir, t.weightAt)
        return when (t.layout) {
            "float" -> {
                val stored = FloatArray(o * i) { base.getFloat(it * 4) }
                val w = if (t.transposed) transpose(stored, i, o) else stored
                val m = LoraMath.merged(w, factors, o, i)
                mapOf(t.weight to floatTensor(if (t.transposed) transpose(m, o, i) else m, t.weightAt.shape))
            }
            "qdq" -> {
                val stored = ByteArray(o * i) { base.get(it) }
                val q = if (t.transposed) transposeBytes(stored, i, o) else stored
                val scalesBuf = readBytes(bundleDir, t.scaleAt!!)
                val (q2, s2) = LoraMath.requantized(q, FloatArray(o) { scalesBuf.getFloat(it * 4) }, factors, o, i)
                mapOf(t.weight to OverrideTensor("int8", t.weightAt.shape, if (t.transposed) transposeBytes(q2, o, i) else q2),
                    t.scale!! to floatTensor(s2, intArrayOf(o)))
            }
            "nbits" -> {
                val blocks = t.weightAt.shape[1]
                val q = ByteArray(o * i) { ((base.get(it).toInt() and 0xFF) - 128).toByte() }
                val scalesBuf = readBytes(bundleDir, t.scaleAt!!)
                val (q2, s2) = LoraMath.requantized(q, FloatArray(o) { scalesBuf.getFloat(it * blocks * 4) }, factors, o, i)
                mapOf(t.weight to OverrideTensor("uint8", t.weightAt.shape, ByteArray(o * i) { (q2[it] + 128).toByte() }),
                    t.scale!! to floatTensor(FloatArray(o * blocks) { s2[it / blocks] }, intArrayOf(o * blocks)))
            }
            else -> throw UserError("manifest LoRA target ${t.weight} has layout '${t.layout}', which this app does not know; update the app")
        }
    }

    private fun readBytes(bundleDir: File, at: LoraTarget.Location): ByteBuffer {
        val size = at.shape.fold(1) { a, b -> a * b } * (if (at.dtype == "float32") 4 else 1)
        val bytes = ByteArray(size)
        RandomAccessFile(File(bundleDir, at.file), "r").use { it.seek(at.offset); it.readFully(bytes) }
        return ByteBuffer.wrap(bytes).order(ByteOrder.LITTLE_ENDIAN)
    }

    private fun floatTensor(values: FloatArray, shape: IntArray): OverrideTensor {
        val b = ByteBuffer.allocate(values.size * 4).order(ByteOrder.LITTLE_ENDIAN)
        for (v in values) b.putFloat(v)
        return OverrideTensor("float32", shape, b.array())
    }

    /** [rows, cols] -> [cols, rows]. */
    private fun transpose(a: FloatArray, rows: Int, cols: Int) = FloatArray(a.size) { a[(it % rows) * cols + it / rows] }
    private fun transposeBytes(a: ByteArray, rows: Int, cols: Int) = ByteArray(a.size) { a[(it % rows) * cols + it / rows] }
}
