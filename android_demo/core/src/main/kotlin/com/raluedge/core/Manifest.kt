package com.raluedge.core

import java.io.File
import java.io.FileInputStream
import java.security.MessageDigest

/**
 * The bundle manifest `ralu_config.json` (DESIGN.md "Bundles"; schema in ralu_edge/manifest.py): every file with
 * its sha256 and size, the graphs with their inputs and outputs, resolutions, VAE normalisation, RoPE axes, the
 * denoiser packaging, text encoders, tokenizers and RALU presets. The parser reads what the app uses, checks its
 * types and cross-references, and ignores fields it does not know; every problem is one UserError sentence.
 */
class FileEntry(val path: String, val sha256: String, val size: Long)

class TensorSpec(val name: String, val dtype: String, val shape: List<Any>, val optional: Boolean)

class GraphEntry(
    val name: String, val role: String, val file: String, val format: String, val precision: String,
    val inputs: List<TensorSpec>, val outputs: List<TensorSpec>, val dataFiles: List<String>,
    val staticDims: Map<String, Int>
) {
    fun input(name: String): TensorSpec = inputs.firstOrNull { it.name == name }
        ?: throw UserError("${Manifest.NAME}: graph '${this.name}' has no input '$name'; re-export the bundle with ralu-export")
}

class Resolution(val height: Int, val width: Int, val latentHeight: Int, val latentWidth: Int, val gridHeight: Int, val gridWidth: Int)

class VaeSpec(val latentChannels: Int, val factor: Int, val scalingFactor: Double, val shiftFactor: Double, val normalizationInGraph: Boolean)

class RopeSpec(val axesDim: IntArray, val theta: Double, val headDim: Int)

class StageGraph(val graph: String, val numImageTokens: Int?)

/**
 * `guidance` says whether the graph takes a distilled-guidance input; `guidanceScale` is the classifier-free guidance
 * scale every mode runs with (null: no CFG), the true_cfg_scale a FLUX-family model records in its sampling.json.
 */
class DenoiserSpec(
    val packaging: String, val tokenDim: String, val ropeTokenDim: String?, val tokenChannels: Int, val textLength: Int,
    val textDim: Int, val pooledDim: Int, val guidance: Boolean, val stageGraphs: List<StageGraph>, val fullResGraph: String?,
    val guidanceScale: Double? = null
) {
    /** The graph serving `numImageTokens` image tokens; UserError when the bundle has none for it. */
    fun graphFor(numImageTokens: Int): String = stageGraphs.firstOrNull { it.numImageTokens == null || it.numImageTokens == numImageTokens }?.graph
        ?: throw UserError("this bundle has static denoiser graphs for ${stageGraphs.mapNotNull { it.numImageTokens }.sorted()} image tokens, not $numImageTokens; re-export it with the resolution and preset you need")
}

class TextEncoderSpec(
    val name: String, val graph: String, val tokenizer: String, val kind: String, val use: String, val hiddenSize: Int,
    val vocabRows: Int, val sequenceOutput: String, val pooledOutput: String?, val placeholderIdsInput: String,
    val placeholderEmbedsInput: String, val precision: String, val tokenEmbeddings: String?
)

class TokenizerSpec(
    val name: String, val file: String, val kind: String, val maxLength: Int, val padTokenId: Int, val eosTokenId: Int,
    val bosTokenId: Int?, val firstFreeId: Int
)

class PresetEntry(val name: String, val preset: RaluPreset, val stageLengths: Map<Pair<Int, Int>, IntArray>)

class Manifest(
    val target: String, val precision: String, val resolutions: List<Resolution>, val vae: VaeSpec, val textLength: Int,
    val rope: RopeSpec, val denoiser: DenoiserSpec, val textEncoders: List<TextEncoderSpec>, val tokenizers: List<TokenizerSpec>,
    val graphs: List<GraphEntry>, val presets: List<PresetEntry>, val files: List<FileEntry>, val modelName: String,
    /** TeaCache's rescale (c0, c1, c2) the export calibrated (manifest `cache.coefficients`, Cache.kt); null: none. */
    val cacheCoefficients: DoubleArray? = null
) {
    fun graph(name: String): GraphEntry = graphs.firstOrNull { it.name == name }
        ?: throw UserError("$NAME: no graph '$name' (the bundle has ${graphs.joinToString(", ") { it.name }}); re-export the bundle with ralu-export")

    fun tokenizer(name: String): TokenizerSpec = tokenizers.firstOrNull { it.name == name }
        ?: throw UserError("$NAME: tokenizer '$name' is referenced but not described; re-export the bundle with ralu-export")

    fun preset(name: String): PresetEntry = presets.firstOrNull { it.name == name }
        ?: throw UserError("this bundle has no RALU preset '$name'; it carries ${presets.joinToString(", ") { it.name }.ifEmpty { "none" }} (re-export with --presets)")

    companion object {
        const val NAME = "ralu_config.json"
        const val FORMAT = "ralu-bundle"
        const val FORMAT_VERSION = 1L

        /** The manifest in `text`; UserError on any missing, mistyped or dangling entry. */
        fun parse(text: String): Manifest {
            val root = JsonObject.parse(text, NAME)
            if (root.string("format") != FORMAT) throw fail("format", "is '${root.string("format")}', not '$FORMAT'")
            if (root.long("format_version") != FORMAT_VERSION) {
                throw UserError("$NAME: format_version ${root.long("format_version")} is not the supported $FORMAT_VERSION; re-export the bundle with a matching ralu-export")
            }
            val files = root.objects("files").map { FileEntry(safePath(it.string("path")), sha(it), it.long("size")) }
            val graphs = root.objects("graphs").map(::graphEntry)
            val denoiser = denoiserSpec(root.obj("denoiser"))
            val manifest = Manifest(
                target = root.string("target"), precision = root.string("precision"),
                resolutions = root.objects("resolutions").map {
                    Resolution(it.int("height"), it.int("width"), it.int("latent_height"), it.int("latent_width"), it.int("grid_height"), it.int("grid_width"))
                },
                vae = root.obj("vae").let { VaeSpec(it.int("latent_channels"), it.int("factor"), it.double("scaling_factor"), it.double("shift_factor"), it.boolOr("normalization_in_graph", false)) },
                textLength = root.int("text_length"),
                rope = root.obj("rope").let { RopeSpec(it.ints("axes_dim"), it.double("theta"), it.int("head_dim")) },
                denoiser = denoiser,
                textEncoders = root.objects("text_encoders").map(::textEncoderSpec),
                tokenizers = root.objects("tokenizers").map {
                    TokenizerSpec(it.string("name"), safePath(it.string("file")), it.string("kind"), it.int("max_length"), it.int("pad_token_id"),
                        it.int("eos_token_id"), it.intOrNull("bos_token_id"), it.int("first_free_id"))
                },
                graphs = graphs, presets = root.objects("presets").map(::presetEntry), files = files,
                modelName = root.objOrNull("model")?.stringOrNull("name") ?: "unknown",
                cacheCoefficients = root.objOrNull("cache")?.doubles("coefficients")?.also {
                    if (it.size != 3 || !it.all { c -> c.isFinite() }) throw fail("cache.coefficients", "should be 3 finite numbers")
                }
            )
            manifest.checkReferences()
            return manifest
        }

        /** The manifest of a bundle folder (schema checked; call [verifyFiles] to hash the files). */
        fun read(bundleDir: File): Manifest {
            val file = File(bundleDir, NAME)
            if (!file.isFile) {
                throw UserError("$bundleDir: no $NAME, so this is not a complete ralu-export bundle; export one with `ralu-export --model shapes --target android --out DIR` and push it to the app's storage")
            }
            return parse(file.readText(Charsets.UTF_8))
        }

        private fun fail(where: String, problem: String) = UserError("$NAME: $where $problem; re-export the bundle with ralu-export")

        private fun sha(entry: JsonObject): String {
            val value = entry.string("sha256")
            if (!Regex("^[0-9a-f]{64}$").matches(value)) throw fail("files entry '${entry.string("path")}'", "has a malformed sha256 '$value'")
            return value
        }

        private fun safePath(path: String): String {
            if (path.isEmpty() || path.startsWith("/") || path.contains("\\") || path.split("/").contains("..")) {
                throw fail("path '$path'", "is not a relative path inside the bundle")
            }
            return path
        }

        private fun tensorSpecs(list: List<JsonObject>): List<TensorSpec> = list.map {
            TensorSpec(it.string("name"), it.string("dtype"), it.list("shape").map { d -> d ?: "?" }, it.boolOr("optional", false))
        }

        private fun graphEntry(g: JsonObject): GraphEntry {
            val staticDims = g.objOrNull("static_dims")?.map?.mapValues { (it.value as? Long)?.toInt() ?: throw fail("graph '${g.string("name")}'", "has a non-integer static dim") } ?: emptyMap()
            return GraphEntry(g.string("name"), g.string("role"), safePath(g.string("file")), g.string("format"), g.string("precision"),
                tensorSpecs(g.objects("inputs")), tensorSpecs(g.objects("outputs")),
                if (g.has("data_files")) g.strings("data_files").map(::safePath) else emptyList(), staticDims)
        }

        private fun denoiserSpec(d: JsonObject): DenoiserSpec {
            if (d.has("timestep") && d.string("timestep") != "sigma") throw fail("denoiser.timestep", "is '${d.string("timestep")}', not 'sigma'")
            val scale = if (d.has("guidance_scale")) d.double("guidance_scale") else null
            if (scale != null && !(scale >= 1.0 && scale.isFinite())) throw fail("denoiser.guidance_scale", "is $scale, not a finite number of at least 1")
            return DenoiserSpec(d.string("packaging"), d.string("token_dim"), d.stringOrNull("rope_token_dim"), d.int("token_channels"),
                d.int("text_length"), d.int("text_dim"), d.int("pooled_dim"), d.bool("guidance"),
                d.objects("stage_graphs").map { StageGraph(it.string("graph"), it.intOrNull("num_image_tokens")) },
                d.stringOrNull("full_res_graph"), scale)
        }

        private fun textEncoderSpec(e: JsonObject) = TextEncoderSpec(
            e.string("name"), e.string("graph"), e.string("tokenizer"), e.string("kind"), e.string("use"), e.int("hidden_size"),
            e.int("vocab_rows"), e.string("sequence_output"), e.stringOrNull("pooled_output"), e.string("placeholder_ids_input"),
            e.string("placeholder_embeds_input"), e.string("precision"), e.stringOrNull("token_embeddings")?.let(::safePath)
        )

        private fun presetEntry(p: JsonObject): PresetEntry {
            val preset = RaluPreset.fromJson(p.obj("preset"))
            if (preset.name != p.string("name")) throw fail("preset '${p.string("name")}'", "holds a preset named '${preset.name}'")
            val stages = p.objects("stages").associate { Pair(it.int("height"), it.int("width")) to it.ints("stage_lengths") }
            return PresetEntry(preset.name, preset, stages)
        }
    }

    private fun checkReferences() {
        val listed = files.map { it.path }.toSet()
        if (listed.size != files.size) throw fail("files", "lists a path twice")
        for (g in graphs) for (path in listOf(g.file) + g.dataFiles) {
            if (path !in listed && listed.none { it.startsWith(path.trimEnd('/') + "/") }) {
                throw fail("graph '${g.name}'", "uses '$path', which the files list lacks")
            }
        }
        for (e in textEncoders) {
            val g = graph(e.graph)
            g.input(e.placeholderIdsInput)
            g.input(e.placeholderEmbedsInput)
            tokenizer(e.tokenizer)
            if (e.tokenEmbeddings != null && e.tokenEmbeddings !in listed) throw fail("text encoder '${e.name}'", "names '${e.tokenEmbeddings}', which the files list lacks")
        }
        for (t in tokenizers) if (t.file !in listed) throw fail("tokenizer '${t.name}'", "uses '${t.file}', which the files list lacks")
        for (s in denoiser.stageGraphs) graph(s.graph)
        if (resolutions.isEmpty()) throw fail("resolutions", "is empty")
    }

    /**
     * Check that every listed file exists with its size and sha256 (the runtime trusts nothing the manifest does not
     * vouch for); UserError naming the first file that is missing, truncated or altered. `onFile(done, total)`
     * reports progress; hashing reads each file once in 1 MiB chunks.
     */
    fun verifyFiles(bundleDir: File, onFile: ((Int, Int) -> Unit)? = null) {
        for ((i, entry) in files.withIndex()) {
            val file = File(bundleDir, entry.path)
            val label = "${bundleDir.name}/${entry.path}"
            if (!file.isFile) throw UserError("$label: missing from the bundle; re-export the bundle and push it again")
            if (file.length() != entry.size) {
                throw UserError("$label: ${file.length()} bytes but the manifest says ${entry.size}; the file is truncated or replaced, push the bundle again")
            }
            val digest = sha256Hex(file)
            if (digest != entry.sha256) {
                throw UserError("$label: sha256 ${digest.take(12)}… but the manifest says ${entry.sha256.take(12)}…; the file was altered, push the bundle again")
            }
            onFile?.invoke(i + 1, files.size)
        }
    }
}

/** Lower-case hex sha256 of a file's bytes, read in 1 MiB chunks. */
fun sha256Hex(file: File): String {
    val digest = MessageDigest.getInstance("SHA-256")
    FileInputStream(file).use { input ->
        val buffer = ByteArray(1 shl 20)
        while (true) {
            val n = input.read(buffer)
            if (n < 0) break
            digest.update(buffer, 0, n)
        }
    }
    return digest.digest().joinToString("") { String.format("%02x", it) }
}
