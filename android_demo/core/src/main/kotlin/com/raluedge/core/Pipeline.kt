package com.raluedge.core

/**
 * How the app composes the host-side pieces over its ORT components (STYLE.md: compose, no god object): prompt
 * encoding with learned tokens, generation (baseline or a RALU preset the bundle carries), and zeroth-order
 * personalization. Each class only wires the functions of the other files together, so the app stays thin and
 * everything here runs on the JVM with fake components.
 */

/**
 * A learned placeholder token: its string and one embedding row per text encoder, keyed as in
 * learned_embeds.safetensors (spec §11.4, §11.6; ralu_export.textual_inversion): "clip_l" for the CLIP encoder,
 * "t5" for the T5 encoder.
 */
class LearnedToken(val token: String, val rows: Map<String, FloatArray>) {
    /** Writes learned_embeds.safetensors: one [1, d] float32 tensor per key, metadata format "pt", token, init word. */
    fun save(file: java.io.File, initWord: String?) {
        val meta = linkedMapOf("format" to "pt", "token" to token)
        if (initWord != null) meta["init_word"] = initWord
        SafeTensors.write(file, rows.mapValues { SafeTensors.Tensor(intArrayOf(1, it.value.size), it.value) }, meta)
    }

    companion object {
        /** The key of an encoder's row in learned_embeds.safetensors. */
        fun keyFor(spec: TextEncoderSpec): String = if (spec.kind == "clip") "clip_l" else spec.kind

        /** A learned_embeds.safetensors written by the app or by ralu-personalize; UserError when it is not one. */
        fun load(file: java.io.File): LearnedToken {
            val (tensors, meta) = SafeTensors.read(file)
            val token = meta["token"] ?: throw UserError("${file.name} has no 'token' in its metadata; personalize again")
            return LearnedToken(token, tensors.mapValues { it.value.floats })
        }

        /** UserError unless `token` can be a new placeholder: one word, not already in any of the tokenizers. */
        fun checkNew(token: String, tokenizers: Collection<HfTokenizer>) {
            if (token.isEmpty() || token.any { it.isWhitespace() }) throw UserError("learned token '$token' must be one word without spaces, e.g. '<my-cat>'")
            if (tokenizers.any { it.tokenToId(token) != null }) throw UserError("token '$token' is already in the vocabulary; pick a new string such as '<$token>'")
        }
    }
}

/** Token ids of one prompt for one encoder, and the placeholder ids / rows to inject. */
class EncoderInput(val inputIds: LongArray, val placeholderIds: LongArray, val placeholderRows: FloatArray)

/** Tokenizes prompts (adding learned tokens) and runs the text encoders into a [Conditioning]. */
class PromptEncoder(
    private val manifest: Manifest,
    private val tokenizers: Map<String, HfTokenizer>,
    private val encoders: Map<String, TextEncoder>
) {
    /** Per encoder name, the inputs for `prompt` with each learned token's rows injected at its placeholder id. */
    fun inputs(prompt: String, learned: List<LearnedToken>): Map<String, EncoderInput> {
        if (prompt.isBlank()) throw UserError("the prompt is empty; type what the image should show")
        return tokenize(prompt, learned)
    }

    /** The conditioning of classifier-free guidance's negative prompt "" (which [inputs] refuses as a user prompt). */
    fun encodeNegative(): Conditioning = conditioning(tokenize(ClassifierFreeGuidance.NEGATIVE_PROMPT, emptyList()))

    private fun tokenize(prompt: String, learned: List<LearnedToken>): Map<String, EncoderInput> =
        manifest.textEncoders.associate { spec ->
            val tokenizerSpec = manifest.tokenizer(spec.tokenizer)
            val tokenizer = tokenizers[spec.tokenizer] ?: throw IllegalStateException("tokenizer ${spec.tokenizer} not loaded")
            val ids = tokenizer.addTokens(learned.map { it.token })
            val encoded = tokenizer.encodePadded(prompt, tokenizerSpec.maxLength, tokenizerSpec.padTokenId).first
            val used = learned.indices.filter { i -> encoded.contains(ids[i]) }
            val rows = FloatArray(used.size * spec.hiddenSize)
            for ((j, i) in used.withIndex()) {
                val row = learned[i].rows[LearnedToken.keyFor(spec)]
                    ?: throw UserError("learned token '${learned[i].token}' has no embedding for ${spec.name}; personalize again with this bundle")
                if (row.size != spec.hiddenSize) throw UserError("learned token '${learned[i].token}' has ${row.size} values for ${spec.name}, which takes ${spec.hiddenSize}; personalize again with this bundle")
                System.arraycopy(row, 0, rows, j * spec.hiddenSize, spec.hiddenSize)
            }
            spec.name to EncoderInput(LongArray(encoded.size) { encoded[it].toLong() }, LongArray(used.size) { ids[used[it]].toLong() }, rows)
        }

    /** Conditioning from the encoders' outputs: the "sequence" encoder's states and the "pooled" encoder's vector. */
    fun conditioning(inputs: Map<String, EncoderInput>, rowsOverride: Map<String, FloatArray> = emptyMap()): Conditioning {
        var states: TextEncoding? = null
        var pooled: FloatArray? = null
        for (spec in manifest.textEncoders) {
            val input = inputs.getValue(spec.name)
            val encoder = encoders[spec.name] ?: throw IllegalStateException("text encoder ${spec.name} not loaded")
            val out = encoder.encode(input.inputIds, input.placeholderIds, rowsOverride[spec.name] ?: input.placeholderRows)
            if (spec.use == "sequence") states = out else pooled = out.pooled
                ?: throw UserError("${Manifest.NAME}: text encoder ${spec.name} is used pooled but gives no pooled output; re-export the bundle")
        }
        val s = states ?: throw UserError("${Manifest.NAME}: no text encoder gives the sequence states; re-export the bundle")
        return Conditioning(s.sequence, s.length, s.hiddenSize, pooled ?: FloatArray(0), if (manifest.denoiser.guidance) 3.5f else null)
    }

    fun encode(prompt: String, learned: List<LearnedToken> = emptyList()): Conditioning = conditioning(inputs(prompt, learned))
}

/** guidanceScale: the classifier-free guidance scale the image was made with (null: none), for its PNG parameters. */
class GenerationResult(
    val image: RgbImage, val nfe: Int, val tokenSteps: Int, val secondsDenoise: Double, val secondsTotal: Double,
    val guidanceScale: Double? = null,
    /** The temporal cache's label (Cache.kt) and what it did: callsMade + callsSkipped = nfe. */
    val cache: String = "none", val callsMade: Int = nfe, val callsSkipped: Int = 0
)

/**
 * Text-to-image over a bundle: "baseline" (plain FLUX schedule, `steps` steps) or one of the bundle's RALU presets.
 * A manifest with `denoiser.guidance_scale` makes every mode run classifier-free guidance (negative prompt "").
 */
class Generator(
    private val manifest: Manifest,
    private val prompts: PromptEncoder,
    private val denoiser: Denoiser,
    private val vaeDecoder: VaeDecoder
) {
    val modes: List<String> get() = listOf("baseline") + manifest.presets.map { it.name }

    fun generate(
        prompt: String, mode: String, steps: Int, seed: Long, learned: List<LearnedToken> = emptyList(),
        onStep: ((StepInfo) -> Unit)? = null, onStage: ((StageInfo) -> Unit)? = null, cache: CacheConfig = CacheConfig()
    ): GenerationResult {
        if (cache.method == "teacache" && manifest.cacheCoefficients == null) {
            throw UserError("this bundle's manifest has no TeaCache calibration; re-export it with ralu-export, or use taylorseer, which needs none")
        }
        val started = System.nanoTime()
        if (mode != "baseline") manifest.preset(mode)
        if (mode == "baseline" && steps < 1) throw UserError("steps must be at least 1 for the baseline, got $steps")
        val res = manifest.resolutions[0]
        val cond = prompts.encode(prompt, learned)
        val scale = manifest.denoiser.guidanceScale
        val unguided = if (scale == null) denoiser else ClassifierFreeGuidance(denoiser, scale.toFloat(), prompts.encodeNegative())
        // outside guidance, as ralu_runtime: a skipped step saves both CFG calls
        val guided = CachedDenoiser(unguided, cache, manifest.cacheCoefficients ?: DoubleArray(0))
        val channels = manifest.vae.latentChannels
        val latentNoise = SeededRandom(seed, "initial_noise").standardNormal(channels * res.latentHeight * res.latentWidth)
        val noise = TokenOps.pack(FloatArray(latentNoise.size) { latentNoise[it].toFloat() }, channels, res.latentHeight, res.latentWidth)
        val denoiseStarted = System.nanoTime()
        val tokens: Tokens
        val nfe: Int
        val tokenSteps: Int
        if (mode == "baseline") {
            tokens = Sampler.sampleBaseline(guided, noise, res.gridHeight, res.gridWidth,
                Schedules.fluxBaselineSigmas(steps, res.gridHeight * res.gridWidth), cond, onStep)
            nfe = steps
            tokenSteps = steps * res.gridHeight * res.gridWidth
        } else {
            val preset = manifest.preset(mode).preset
            tokens = Sampler.raluSample(guided, noise, res.gridHeight, res.gridWidth, preset, cond, SeededRandom(seed, "ralu"),
                onStep = onStep, onStage = onStage).tokens
            nfe = preset.nfe
            tokenSteps = Sampler.imageTokenSteps(preset, res.gridHeight, res.gridWidth)
        }
        val denoiseSeconds = (System.nanoTime() - denoiseStarted) / 1e9
        val image = decode(tokens, res)
        val cacheStats = guided.stats()
        return GenerationResult(image, nfe, tokenSteps, denoiseSeconds, (System.nanoTime() - started) / 1e9, scale,
            cache.label, cacheStats.callsMade, cacheStats.callsSkipped)
    }

    /** RGB of raster-ordered tokens: unpack, undo the sampler's normalisation (z = x / scale + shift), decode. */
    fun decode(tokens: Tokens, res: Resolution): RgbImage {
        val latent = TokenOps.unpack(tokens, res.gridHeight, res.gridWidth)
        val vae = manifest.vae
        val raw = if (vae.normalizationInGraph) latent
        else FloatArray(latent.size) { (latent[it] / vae.scalingFactor + vae.shiftFactor).toFloat() }
        return vaeDecoder.decode(raw, vae.latentChannels, res.latentHeight, res.latentWidth)
    }
}

/** What the Personalize screen shows after each step. */
class PersonalizeProgress(val step: Int, val totalSteps: Int, val loss: Double, val runningLoss: Double, val info: ZoStepInfo)

/**
 * Zeroth-order personalization over the bundle's graphs (spec/ZO_PERSONALIZATION.md Algorithm Z1 on a flow model,
 * §11): theta = the placeholder's rows for every text encoder, concatenated; each step draws (image, flip, sigma,
 * noise) and e_1..e_n from [SeededRandom]s of (seed, purpose, step), evaluates n + 1 losses through the text
 * encoders and the denoiser, and updates theta with [Zo.step]. Resumable from a [ZoCheckpoint].
 */
class Personalizer(
    private val manifest: Manifest,
    private val prompts: PromptEncoder,
    private val denoiser: Denoiser,
    val config: ZoConfig = ZoConfig(),
    val puts: PutsConfig = PutsConfig()
) {
    /** theta0: the initializer word's embedding rows, concatenated in manifest order (`rowFor(encoder, id)` reads the tables). */
    fun initialTheta(initWord: String, tokenizers: Map<String, HfTokenizer>, rowFor: (TextEncoderSpec, Int) -> FloatArray): FloatArray {
        val parts = manifest.textEncoders.map { spec ->
            val ids = tokenizers.getValue(spec.tokenizer).encode(initWord, addSpecialTokens = false)
            if (ids.size != 1) throw UserError("the init word '$initWord' is ${ids.size} tokens for ${spec.name}; pick a single common word such as 'circle'")
            rowFor(spec, ids[0])
        }
        return parts.fold(FloatArray(0)) { a, b -> a + b }
    }

    /** Splits theta back into one row per encoder (manifest order), keyed as in learned_embeds.safetensors. */
    fun rows(theta: FloatArray): Map<String, FloatArray> {
        var offset = 0
        return manifest.textEncoders.associate { spec ->
            val row = theta.copyOfRange(offset, offset + spec.hiddenSize)
            offset += spec.hiddenSize
            LearnedToken.keyFor(spec) to row
        }
    }

    /** Rows per encoder name (what [PromptEncoder.conditioning] overrides) from theta. */
    private fun rowsByEncoder(theta: FloatArray): Map<String, FloatArray> {
        val byKey = rows(theta)
        return manifest.textEncoders.associate { it.name to byKey.getValue(LearnedToken.keyFor(it)) }
    }

    /**
     * Runs steps until `totalSteps` or until `shouldPause()`; writes a checkpoint every `checkpointEvery` steps and
     * when pausing. `moments[i]` are the cached VAE posteriors of image i as [no flip, flip], each [2C * h * w].
     */
    fun run(
        start: ZoState, token: String, caption: String, moments: List<Array<FloatArray>>, totalSteps: Int,
        checkpoint: (ZoState) -> Unit, checkpointEvery: Int = 50, shouldPause: () -> Boolean = { false },
        onStep: ((PersonalizeProgress) -> Unit)? = null
    ): ZoState {
        if (!caption.contains(token)) throw UserError("the training caption must contain the token '$token', e.g. 'a photo of $token'")
        val res = manifest.resolutions[0]
        val vae = manifest.vae
        val channels = vae.latentChannels
        val inputs = prompts.inputs(caption, listOf(LearnedToken(token, rows(start.theta))))
        val positions = TokenOps.gridPositions(res.gridHeight, res.gridWidth)
        var state = start
        var running = Double.NaN
        while (state.step < totalSteps) {
            val step = state.step + 1
            val draw = Timesteps.drawStep(step, moments.size, channels * res.latentHeight * res.latentWidth, puts,
                res.height * res.width) { purpose, s -> SeededRandom(state.seed, purpose, s) }
            val batch = Timesteps.personalizationBatch(moments[draw.imageIndex][if (draw.flip) 1 else 0], channels,
                res.latentHeight, res.latentWidth, draw, vae.shiftFactor, vae.scalingFactor)
            val d = SeededRandom(state.seed, Zo.PURPOSE_DIRECTIONS, step.toLong()).standardNormal(config.n * state.dim)
            val directions = FloatArray(d.size) { d[it].toFloat() }
            val result = Zo.step(state, directions, { queries ->
                DoubleArray(queries.size) { q ->
                    val cond = prompts.conditioning(inputs, rowsByEncoder(queries[q]))
                    Timesteps.mseLoss(denoiser.velocity(batch.xSigma, positions, batch.sigma.toFloat(), cond), batch.target.data)
                }
            }, config)
            state = result.first
            running = if (running.isNaN()) result.second.loss else 0.98 * running + 0.02 * result.second.loss
            onStep?.invoke(PersonalizeProgress(step, totalSteps, result.second.loss, running, result.second))
            if (step % checkpointEvery == 0 || step == totalSteps) checkpoint(state)
            if (shouldPause()) { checkpoint(state); break }
        }
        return state
    }
}
