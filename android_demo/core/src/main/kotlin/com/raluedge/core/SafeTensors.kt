package com.raluedge.core

import java.io.File
import java.io.RandomAccessFile
import java.nio.ByteBuffer
import java.nio.ByteOrder

/**
 * The safetensors format (8-byte little-endian header length, a JSON header, raw little-endian data): what the
 * Python side reads for learned embeddings (`learned_embeds.safetensors`, diffusers' layout) and ZO checkpoints
 * (`ZOState.to_arrays`). Float32 and int64 tensors; metadata is a string-to-string map. Writes are atomic:
 * a temporary file in the same folder, then a rename.
 */
object SafeTensors {
    class Tensor(val shape: IntArray, val floats: FloatArray)

    fun write(file: File, tensors: Map<String, Tensor>, metadata: Map<String, String> = emptyMap()) {
        val header = LinkedHashMap<String, Any?>()
        if (metadata.isNotEmpty()) header["__metadata__"] = metadata
        var offset = 0L
        for ((name, t) in tensors) {
            require(t.floats.size == t.shape.fold(1) { a, b -> a * b }) { "tensor $name: ${t.floats.size} values for shape ${t.shape.toList()}" }
            val end = offset + 4L * t.floats.size
            header[name] = linkedMapOf("dtype" to "F32", "shape" to t.shape.map { it.toLong() }, "data_offsets" to listOf(offset, end))
            offset = end
        }
        var headerBytes = Json.write(header).toByteArray(Charsets.UTF_8)
        val padding = (8 - headerBytes.size % 8) % 8
        if (padding > 0) headerBytes += ByteArray(padding) { 0x20.toByte() }
        val buffer = ByteBuffer.allocate(8 + headerBytes.size + offset.toInt()).order(ByteOrder.LITTLE_ENDIAN)
        buffer.putLong(headerBytes.size.toLong())
        buffer.put(headerBytes)
        for (t in tensors.values) for (x in t.floats) buffer.putFloat(x)
        val tmp = File(file.parentFile, ".${file.name}.tmp")
        tmp.writeBytes(buffer.array())
        if (!tmp.renameTo(file)) {
            file.delete()
            if (!tmp.renameTo(file)) throw java.io.IOException("could not move $tmp to $file")
        }
    }

    /** (tensors as float32, metadata) of a safetensors file; F32, F16 and I64 tensors are read. */
    fun read(file: File): Pair<Map<String, Tensor>, Map<String, String>> {
        RandomAccessFile(file, "r").use { raf ->
            val lengthBytes = ByteArray(8)
            raf.readFully(lengthBytes)
            val headerLength = ByteBuffer.wrap(lengthBytes).order(ByteOrder.LITTLE_ENDIAN).long
            if (headerLength <= 0 || headerLength > raf.length() - 8) throw UserError("${file.name}: not a safetensors file (bad header length); delete it or pick another file")
            val headerBytes = ByteArray(headerLength.toInt())
            raf.readFully(headerBytes)
            val header = JsonObject.parse(String(headerBytes, Charsets.UTF_8), file.name)
            val base = 8 + headerLength
            val tensors = LinkedHashMap<String, Tensor>()
            var metadata: Map<String, String> = emptyMap()
            for ((name, value) in header.map) {
                if (name == "__metadata__") {
                    metadata = JsonObject.asObject(value, "${file.name} metadata").map.mapValues { it.value.toString() }
                    continue
                }
                val entry = JsonObject.asObject(value, "${file.name}.$name")
                val offsets = entry.list("data_offsets").map { (it as Long) }
                val shape = entry.ints("shape")
                val bytes = ByteArray((offsets[1] - offsets[0]).toInt())
                raf.seek(base + offsets[0])
                raf.readFully(bytes)
                val data = ByteBuffer.wrap(bytes).order(ByteOrder.LITTLE_ENDIAN)
                val count = shape.fold(1) { a, b -> a * b }
                val floats = when (val dtype = entry.string("dtype")) {
                    "F32" -> FloatArray(count) { data.getFloat(it * 4) }
                    "F16" -> FloatArray(count) { halfToFloat(data.getShort(it * 2)) }
                    "I64" -> FloatArray(count) { data.getLong(it * 8).toFloat() }
                    else -> throw UserError("${file.name}: tensor $name has dtype $dtype; the app reads F32, F16 and I64")
                }
                tensors[name] = Tensor(shape, floats)
            }
            return Pair(tensors, metadata)
        }
    }

    /**
     * Row `row` of the float32 matrix `name` [rows, d] without reading the rest (token-embedding tables are large:
     * 49408 x 768 floats for CLIP-L); UserError when the tensor is missing or not a float32 matrix.
     */
    fun readRow(file: File, name: String, row: Int): FloatArray {
        RandomAccessFile(file, "r").use { raf ->
            val lengthBytes = ByteArray(8)
            raf.readFully(lengthBytes)
            val headerLength = ByteBuffer.wrap(lengthBytes).order(ByteOrder.LITTLE_ENDIAN).long
            if (headerLength <= 0 || headerLength > raf.length() - 8) throw UserError("${file.name}: not a safetensors file; re-export the bundle")
            val headerBytes = ByteArray(headerLength.toInt())
            raf.readFully(headerBytes)
            val header = JsonObject.parse(String(headerBytes, Charsets.UTF_8), file.name)
            if (!header.has(name)) throw UserError("${file.name} has no tensor '$name'; re-export the bundle")
            val entry = header.obj(name)
            val shape = entry.ints("shape")
            if (entry.string("dtype") != "F32" || shape.size != 2) throw UserError("${file.name}: '$name' is not a float32 matrix; re-export the bundle")
            if (row !in 0 until shape[0]) throw UserError("token id $row is outside the ${shape[0]}-row table in ${file.name}")
            val start = (entry.list("data_offsets")[0] as Long) + 8 + headerLength + 4L * row * shape[1]
            val bytes = ByteArray(4 * shape[1])
            raf.seek(start)
            raf.readFully(bytes)
            val data = ByteBuffer.wrap(bytes).order(ByteOrder.LITTLE_ENDIAN)
            return FloatArray(shape[1]) { data.getFloat(it * 4) }
        }
    }

    private fun halfToFloat(h: Short): Float {
        val bits = h.toInt() and 0xFFFF
        val sign = (bits ushr 15) shl 31
        val exponent = (bits ushr 10) and 0x1F
        val mantissa = bits and 0x3FF
        return when (exponent) {
            0 -> (if (sign != 0) -1f else 1f) * mantissa * Math.pow(2.0, -24.0).toFloat()
            31 -> java.lang.Float.intBitsToFloat(sign or 0x7F800000 or (mantissa shl 13))
            else -> java.lang.Float.intBitsToFloat(sign or ((exponent + 112) shl 23) or (mantissa shl 13))
        }
    }
}

/**
 * ZO checkpoints in the Python layout (ralu_edge.zo.ZOState.to_arrays): tensors theta, adam_m, adam_v, sg_buffer,
 * sg_proj and metadata strings format, version, step, adam_step, sg_write_index, sg_fill_count, d_eff, base_seed,
 * plus the caller's (config, tokens, bundle hash, data hash) so a resumed run can refuse a mismatched setup.
 */
object ZoCheckpoint {
    const val FORMAT = "ralu-zo-state"
    const val VERSION = 1

    fun write(file: File, state: ZoState, extra: Map<String, String>) {
        val tensors = linkedMapOf(
            "theta" to SafeTensors.Tensor(intArrayOf(state.dim), state.theta),
            "adam_m" to SafeTensors.Tensor(intArrayOf(state.dim), state.adamM),
            "adam_v" to SafeTensors.Tensor(intArrayOf(state.dim), state.adamV),
            "sg_buffer" to SafeTensors.Tensor(intArrayOf(state.tau, state.dim), state.sgBuffer),
            "sg_proj" to SafeTensors.Tensor(intArrayOf(state.sgRank, state.dim), state.sgProj)
        )
        val meta = linkedMapOf(
            "format" to FORMAT, "version" to VERSION.toString(), "step" to state.step.toString(),
            "adam_step" to state.adamStep.toString(), "sg_write_index" to state.sgWriteIndex.toString(),
            "sg_fill_count" to state.sgFillCount.toString(), "d_eff" to state.dEff.toString(), "base_seed" to state.seed.toString()
        )
        meta.putAll(extra)
        SafeTensors.write(file, tensors, meta)
    }

    /** (state, metadata) of a checkpoint; UserError when it is damaged or from another format. */
    fun read(file: File): Pair<ZoState, Map<String, String>> {
        val (t, meta) = SafeTensors.read(file)
        try {
            if (meta["format"] != FORMAT || meta["version"] != VERSION.toString()) {
                throw UserError("${file.name} is not a $FORMAT version $VERSION checkpoint; start a new run without resuming")
            }
            val theta = t.getValue("theta").floats
            val buffer = t.getValue("sg_buffer")
            val proj = t.getValue("sg_proj")
            val state = ZoState(theta, t.getValue("adam_m").floats, t.getValue("adam_v").floats, buffer.shape[0], buffer.floats,
                proj.floats, proj.shape[0], meta.getValue("step").toInt(), meta.getValue("adam_step").toInt(),
                meta.getValue("sg_write_index").toInt(), meta.getValue("sg_fill_count").toInt(), meta.getValue("base_seed").toLong())
            if (meta["d_eff"] != null && meta["d_eff"] != state.dEff.toString()) throw UserError("${file.name} is damaged (d_eff disagrees with its projection); start a new run")
            return Pair(state, meta)
        } catch (e: NoSuchElementException) {
            throw UserError("${file.name} is incomplete (${e.message}); delete it or start a new run without resuming")
        } catch (e: IllegalArgumentException) {
            throw UserError("${file.name} is damaged (${e.message}); delete it or start a new run without resuming")
        }
    }
}
