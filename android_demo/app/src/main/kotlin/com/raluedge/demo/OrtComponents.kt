package com.raluedge.demo

import ai.onnxruntime.OnnxTensor
import ai.onnxruntime.OrtEnvironment
import ai.onnxruntime.OrtSession
import com.raluedge.core.Conditioning
import com.raluedge.core.Denoiser
import com.raluedge.core.GraphEntry
import com.raluedge.core.OverrideTensor
import com.raluedge.core.Manifest
import com.raluedge.core.Positions
import com.raluedge.core.RgbImage
import com.raluedge.core.Rope
import com.raluedge.core.RopeTables
import com.raluedge.core.TextEncoder
import com.raluedge.core.TextEncoderSpec
import com.raluedge.core.TextEncoding
import com.raluedge.core.Tokens
import com.raluedge.core.UserError
import com.raluedge.core.VaeDecoder
import com.raluedge.core.VaeEncoder
import ai.onnxruntime.OnnxJavaType
import java.io.File
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.nio.FloatBuffer
import java.nio.LongBuffer

/**
 * ONNX Runtime sessions over the bundle's graphs, created on first use and closed on memory pressure.
 *
 * One session per graph: with the android target's "dynamic" packaging that is one denoiser session serving all
 * three RALU stage lengths (on the CPU EP this is both leaner and faster than three static sessions, because the CPU
 * EP prepacks weights per session; ENVIRONMENT.md). With "static" packaging (NPU-oriented bundles) there is one
 * session per stage graph; the Java API offers SessionOptions.addInitializer / addExternalInitializers to share
 * weights between sessions but no prepacked-weights container, so in low-memory mode the previous stage's session
 * is closed before the next one opens instead.
 */
class SessionPool(private val dir: File, private val manifest: Manifest, private val threads: Int) {
    val env: OrtEnvironment = OrtEnvironment.getEnvironment()
    private val sessions = HashMap<String, OrtSession>()
    private val sessionOptions = HashMap<String, OrtSession.SessionOptions>() // must outlive their sessions
    private val busy = HashMap<String, Int>()
    // LoRA (issue 17): merged tensors per graph from core's Lora.overrides, given to SessionOptions.addInitializer
    // when that graph's session opens; the OnnxTensors must outlive their sessions.
    private var loraOverrides: Map<String, Map<String, OverrideTensor>> = emptyMap()
    private val overrideTensors = HashMap<String, List<OnnxTensor>>()

    /** Set by onTrimMemory or on low-RAM devices: sessions are closed as soon as their stage or step is over. */
    @Volatile
    var lowMemory = false

    private fun options(): OrtSession.SessionOptions = OrtSession.SessionOptions().apply {
        setIntraOpNumThreads(threads)
        setOptimizationLevel(OrtSession.SessionOptions.OptLevel.ALL_OPT)
        addConfigEntry("session.intra_op.allow_spinning", "0") // do not spin cores between the many short runs
    }

    @Synchronized
    private fun acquire(graph: GraphEntry): OrtSession {
        val session = sessions.getOrPut(graph.name) {
            val file = File(dir, graph.file)
            val opts = options()
            val tensors = loraOverrides[graph.name].orEmpty().map { (name, t) -> name to onnxTensor(t) }
            for ((name, tensor) in tensors) opts.addInitializer(name, tensor)
            overrideTensors[graph.name] = tensors.map { it.second }
            try {
                env.createSession(file.absolutePath, opts).also { sessionOptions[graph.name] = opts }
            } catch (e: ai.onnxruntime.OrtException) {
                opts.close()
                overrideTensors.remove(graph.name)?.forEach { it.close() }
                throw UserError("${graph.file}: ONNX Runtime could not open it (${e.message?.lineSequence()?.firstOrNull()}); re-export the bundle for android with a matching onnxruntime version")
            }
        }
        busy[graph.name] = (busy[graph.name] ?: 0) + 1
        return session
    }

    @Synchronized
    private fun releaseUse(name: String) {
        busy[name] = (busy[name] ?: 1) - 1
    }

    /** Runs `graph` on `inputs` (closed afterwards) and maps the result with `read` before the result is closed. */
    fun <T> run(graph: GraphEntry, inputs: Map<String, OnnxTensor>, read: (OrtSession.Result) -> T): T {
        try {
            val session = acquire(graph)
            try {
                session.run(inputs).use { return read(it) }
            } finally {
                releaseUse(graph.name)
            }
        } finally {
            inputs.values.forEach { it.close() }
        }
    }

    /** Closes the named sessions unless they are running. */
    @Synchronized
    fun release(names: Collection<String>) {
        for (name in names) {
            if ((busy[name] ?: 0) > 0) continue
            sessions.remove(name)?.close()
            sessionOptions.remove(name)?.close()
            overrideTensors.remove(name)?.forEach { it.close() }
        }
    }

    /**
     * Use these LoRA overrides (graph -> initializer -> tensor; empty: the bundle's own weights) from now on: the
     * sessions of graphs whose overrides change close now and reopen with the new initializers on next use.
     */
    @Synchronized
    fun setLora(overrides: Map<String, Map<String, OverrideTensor>>) {
        val touched = loraOverrides.keys + overrides.keys
        loraOverrides = overrides
        release(touched)
    }

    private fun onnxTensor(t: OverrideTensor): OnnxTensor {
        val buffer = ByteBuffer.allocateDirect(t.bytes.size).order(ByteOrder.nativeOrder())
        val source = ByteBuffer.wrap(t.bytes).order(ByteOrder.LITTLE_ENDIAN)
        val type = when (t.dtype) {
            "float32" -> { while (source.hasRemaining()) buffer.putFloat(source.float); OnnxJavaType.FLOAT }
            "int8" -> { buffer.put(t.bytes); OnnxJavaType.INT8 }
            "uint8" -> { buffer.put(t.bytes); OnnxJavaType.UINT8 }
            else -> throw UserError("LoRA override of dtype ${t.dtype} is not supported; update the app")
        }
        buffer.rewind()
        return OnnxTensor.createTensor(env, buffer, t.shape.map { it.toLong() }.toLongArray(), type)
    }

    /** Closes every idle session (they reopen on next use). */
    @Synchronized
    fun trim() = release(sessions.keys.toList())

    fun floats(env: OrtEnvironment, data: FloatArray, vararg shape: Long): OnnxTensor =
        OnnxTensor.createTensor(env, FloatBuffer.wrap(data), shape)

    fun longs(env: OrtEnvironment, data: LongArray, vararg shape: Long): OnnxTensor =
        OnnxTensor.createTensor(env, LongBuffer.wrap(data), shape)

    companion object {
        /** The float32 output `name` of a result, copied out. */
        fun output(result: OrtSession.Result, name: String): FloatArray {
            val value = result.get(name).orElseThrow { UserError("a graph gave no output '$name'; re-export the bundle") }
            val buffer = (value as OnnxTensor).floatBuffer
            return FloatArray(buffer.remaining()).also { buffer.get(it) }
        }
    }
}

/** The denoiser seam over the bundle's denoiser graph(s): RoPE tables (or ids) built on the host from the positions. */
class OrtDenoiser(private val pool: SessionPool, private val manifest: Manifest) : Denoiser {
    private var ropeFor: Positions? = null
    private var rope: RopeTables? = null
    private var lastGraph: String? = null

    override fun velocity(tokens: Tokens, positions: Positions, sigma: Float, cond: Conditioning): FloatArray {
        val graph = manifest.graph(manifest.denoiser.graphFor(tokens.length))
        if (pool.lowMemory && lastGraph != null && lastGraph != graph.name) pool.release(listOf(lastGraph!!))
        lastGraph = graph.name
        val env = pool.env
        val names = graph.inputs.map { it.name }.toSet()
        val inputs = LinkedHashMap<String, OnnxTensor>()
        inputs["hidden_states"] = pool.floats(env, tokens.data, 1, tokens.length.toLong(), tokens.channels.toLong())
        inputs["encoder_hidden_states"] = pool.floats(env, cond.textStates, 1, cond.textLength.toLong(), cond.textDim.toLong())
        inputs["pooled_projections"] = pool.floats(env, cond.pooled, 1, cond.pooled.size.toLong())
        inputs["timestep"] = pool.floats(env, floatArrayOf(sigma), 1)
        if ("guidance" in names) inputs["guidance"] = pool.floats(env, floatArrayOf(cond.guidance ?: 3.5f), 1)
        if ("rope_cos" in names) {
            val tables = ropeTables(positions, cond.textLength)
            val shape = longArrayOf(tables.length.toLong(), tables.headDim.toLong())
            inputs["rope_cos"] = pool.floats(env, tables.cos, *shape)
            inputs["rope_sin"] = pool.floats(env, tables.sin, *shape)
        } else {
            inputs["img_ids"] = pool.floats(env, FloatArray(positions.data.size) { positions.data[it].toFloat() }, positions.length.toLong(), 3)
            inputs["txt_ids"] = pool.floats(env, FloatArray(cond.textLength * 3), cond.textLength.toLong(), 3)
        }
        return pool.run(graph, inputs) { SessionPool.output(it, graph.outputs[0].name) }
    }

    /** Tables for the text rows then the image tokens; reused while a stage keeps its positions. */
    private fun ropeTables(positions: Positions, textLength: Int): RopeTables {
        val cached = rope
        if (cached != null && ropeFor === positions) return cached
        val tables = Rope.withText(textLength, positions, manifest.rope.axesDim, manifest.rope.theta)
        ropeFor = positions
        rope = tables
        return tables
    }
}

/** A text encoder graph with injectable placeholder embeddings (optional inputs left out when none are injected). */
class OrtTextEncoder(private val pool: SessionPool, private val manifest: Manifest, private val spec: TextEncoderSpec) : TextEncoder {
    override fun encode(inputIds: LongArray, placeholderIds: LongArray, placeholderEmbeds: FloatArray): TextEncoding {
        val graph = manifest.graph(spec.graph)
        val idsInput = graph.inputs.firstOrNull { it.dtype == "int64" && it.name != spec.placeholderIdsInput }?.name ?: "input_ids"
        val env = pool.env
        val inputs = LinkedHashMap<String, OnnxTensor>()
        inputs[idsInput] = pool.longs(env, inputIds, 1, inputIds.size.toLong())
        if (placeholderIds.isNotEmpty()) {
            inputs[spec.placeholderIdsInput] = pool.longs(env, placeholderIds, placeholderIds.size.toLong())
            inputs[spec.placeholderEmbedsInput] = pool.floats(env, placeholderEmbeds, placeholderIds.size.toLong(), spec.hiddenSize.toLong())
        }
        val encoding = pool.run(graph, inputs) { result ->
            TextEncoding(SessionPool.output(result, spec.sequenceOutput), inputIds.size, spec.hiddenSize,
                spec.pooledOutput?.let { SessionPool.output(result, it) })
        }
        if (pool.lowMemory) pool.release(listOf(graph.name))
        return encoding
    }
}

/** The VAE decoder graph: raw latent [1, C, h, w] -> image [1, 3, H, W]. */
class OrtVaeDecoder(private val pool: SessionPool, private val manifest: Manifest) : VaeDecoder {
    override fun decode(rawLatent: FloatArray, channels: Int, height: Int, width: Int): RgbImage {
        val graph = manifest.graphs.firstOrNull { it.role == "vae_decoder" } ?: throw UserError("this bundle has no vae_decoder graph; re-export it")
        val input = pool.floats(pool.env, rawLatent, 1, channels.toLong(), height.toLong(), width.toLong())
        val pixels = pool.run(graph, mapOf(graph.inputs[0].name to input)) { SessionPool.output(it, graph.outputs[0].name) }
        if (pool.lowMemory) pool.release(listOf(graph.name))
        val f = manifest.vae.factor
        return RgbImage(height * f, width * f, pixels)
    }
}

/** The VAE encoder graph: image [1, 3, H, W] in [-1, 1] -> raw posterior parameters [1, 2C, h, w] (mean || logvar). */
class OrtVaeEncoder(private val pool: SessionPool, private val manifest: Manifest) : VaeEncoder {
    override fun encode(image: RgbImage): FloatArray {
        val graph = manifest.graphs.firstOrNull { it.role == "vae_encoder" }
            ?: throw UserError("this bundle has no vae_encoder graph, which personalization needs; re-export it with ralu-export --target android")
        val input = pool.floats(pool.env, image.pixels, 1, 3, image.height.toLong(), image.width.toLong())
        val name = graph.outputs.firstOrNull { it.name == "latent_parameters" }?.name ?: graph.outputs[0].name
        return pool.run(graph, mapOf(graph.inputs[0].name to input)) { SessionPool.output(it, name) }
    }
}
