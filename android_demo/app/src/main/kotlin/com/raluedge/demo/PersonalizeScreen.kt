package com.raluedge.demo

import android.net.Uri
import com.raluedge.core.Json
import com.raluedge.core.JsonObject
import com.raluedge.core.LearnedToken
import com.raluedge.core.SafeTensors
import com.raluedge.core.TextEncoderSpec
import com.raluedge.core.UserError
import com.raluedge.core.Zo
import com.raluedge.core.ZoCheckpoint
import com.raluedge.core.ZoConfig
import com.raluedge.core.ZoState
import java.io.File

/**
 * Personalize: pick 3-10 photos, name a token and an init word, then run zeroth-order personalization
 * (spec/ZO_PERSONALIZATION.md) with progress and the running loss. Pause writes a checkpoint; the run folder
 * (files/personalize: run.json, the resized photos, zo_state.safetensors) lets a run resume after the app was killed.
 * When done, the token is saved to files/tokens and can be used on the Generate screen.
 */
class PersonalizeScreen(private val activity: MainActivity, private val pickPhotos: () -> Unit) {
    private val context = activity
    private val token = Ui.field(context, "Token", "<my-thing>")
    private val initWord = Ui.field(context, "Init word (one token, e.g. circle)", "circle")
    private val caption = Ui.field(context, "Caption ({} is the token)", "a photo of a {}")
    private val steps = Ui.field(context, "Steps", "1000", number = true)
    private val seed = Ui.field(context, "Seed", "42", number = true)
    private val photos = Ui.label(context, "No photos picked")
    private val progress = Ui.progress(context)
    private val info = Ui.label(context, "")
    private var picked: List<Uri> = emptyList()
    @Volatile
    private var pauseRequested = false
    private var running = false

    private val pickButton = Ui.button(context, "Pick 3–10 photos") { pickPhotos() }
    private val startButton = Ui.button(context, "Start") { start() }
    private val pauseButton = Ui.button(context, "Pause") { pauseRequested = true }
    private val resumeButton = Ui.button(context, "Resume") { train() }
    private val useButton = Ui.button(context, "Generate with token") { activity.showGenerate(token.text.toString()) }

    val view = Ui.column(context).apply {
        addView(pickButton)
        addView(photos)
        addView(Ui.row(context, token, initWord))
        addView(caption)
        addView(Ui.row(context, steps, seed))
        addView(Ui.row(context, startButton, pauseButton, resumeButton))
        addView(progress)
        addView(info)
        addView(useButton)
    }

    private val runDir get() = File(activity.filesDir, "personalize")
    private val stateFile get() = File(runDir, "zo_state.safetensors")
    private val settingsFile get() = File(runDir, "run.json")

    init {
        setButtons(enabled = false)
    }

    private fun setButtons(enabled: Boolean) {
        startButton.isEnabled = enabled && !running
        pickButton.isEnabled = enabled && !running
        pauseButton.isEnabled = running
        resumeButton.isEnabled = enabled && !running && settingsFile.isFile
        useButton.isEnabled = !running && token.text.isNotEmpty() &&
            File(GenerateScreen.tokensDir(activity), "${safeName(token.text.toString())}.safetensors").isFile
    }

    fun onBundleLoaded(bundle: LoadedBundle) {
        if (settingsFile.isFile) {
            val s = JsonObject.parse(settingsFile.readText(), "run.json")
            token.setText(s.string("token"))
            initWord.setText(s.string("init_word"))
            caption.setText(s.string("caption_template"))
            steps.setText(s.int("steps").toString())
            seed.setText(s.long("seed").toString())
            val step = if (stateFile.isFile) ZoCheckpoint.read(stateFile).first.step else 0
            info.text = if (step < s.int("steps")) "An unfinished run can resume at step ${step + 1} of ${s.int("steps")}." else "The last run finished."
        }
        setButtons(enabled = true)
    }

    fun onPhotosPicked(uris: List<Uri>) {
        picked = uris
        photos.text = "${uris.size} photos picked" + if (uris.size in 3..10) "" else " (pick 3 to 10)"
    }

    private fun safeName(tokenText: String): String = try { GenerateScreen.fileNameFor(tokenText) } catch (e: UserError) { "" }

    private fun start() {
        val bundle = Engine.bundle ?: return
        val tokenText = token.text.toString().trim()
        val settings = linkedMapOf<String, Any?>(
            "token" to tokenText, "init_word" to initWord.text.toString().trim(),
            "caption_template" to caption.text.toString(), "steps" to (steps.text.toString().toLongOrNull() ?: 0L),
            "seed" to (seed.text.toString().toLongOrNull() ?: 42L), "bundle" to bundle.id
        )
        val uris = picked
        running = true
        setButtons(enabled = false)
        activity.runWork({
            if (uris.size !in 3..10) throw UserError("pick 3 to 10 photos of the subject, not ${uris.size}")
            LearnedToken.checkNew(tokenText, bundle.tokenizers.values)
            GenerateScreen.fileNameFor(tokenText)
            if (!(settings["caption_template"] as String).contains("{}")) throw UserError("the caption needs {} where the token goes, e.g. 'a photo of a {}'")
            if ((settings["steps"] as Long) < 1) throw UserError("steps must be at least 1")
            val res = bundle.manifest.resolutions[0]
            val tmp = File(activity.filesDir, "personalize.partial").also { it.deleteRecursively(); it.mkdirs() }
            uris.forEachIndexed { i, uri -> Images.savePng(File(tmp, "image$i.png"), Images.toBitmap(Images.load(activity, uri, res.width, res.height))) }
            File(tmp, "run.json").writeText(Json.write(settings))
            runDir.deleteRecursively()
            if (!tmp.renameTo(runDir)) throw UserError("could not create the run folder; free some storage")
        }, failed = { running = false; setButtons(enabled = true) }) {
            running = false
            train()
        }
    }

    /** Runs (or resumes) the run in files/personalize until done or paused; checkpoints every 25 steps and on pause. */
    private fun train() {
        val bundle = Engine.bundle ?: return
        pauseRequested = false
        running = true
        setButtons(enabled = false)
        val started = System.nanoTime()
        activity.runWork({
            val s = JsonObject.parse(settingsFile.readText(), "run.json")
            if (s.string("bundle") != bundle.id) throw UserError("this run was started with another bundle; start a new run")
            val tokenText = s.string("token")
            val total = s.int("steps")
            val config = ZoConfig()
            val personalizer = Engine.personalizer(config)
            val vae = Engine.vaeEncoder()
            val images = runDir.listFiles { f -> f.name.startsWith("image") }!!.sortedBy { it.name }.map { Images.loadPng(it) }
            activity.setStatus("Encoding ${images.size} photos…")
            val moments = images.map { arrayOf(vae.encode(it), vae.encode(Images.flipped(it))) }
            var state: ZoState = if (stateFile.isFile) ZoCheckpoint.read(stateFile).first else
                Zo.initState(personalizer.initialTheta(s.string("init_word"), bundle.tokenizers) { spec, id -> tokenRow(bundle, spec, id) }, config, s.long("seed"))
            val meta = mapOf("token" to tokenText, "init_word" to s.string("init_word"), "bundle" to bundle.id,
                "config" to Json.write(config.toJson()))
            val firstStep = state.step
            state = personalizer.run(state, tokenText, s.string("caption_template").replace("{}", tokenText), moments, total,
                checkpoint = { ZoCheckpoint.write(stateFile, it, meta) }, checkpointEvery = 25,
                shouldPause = { pauseRequested }, onStep = { p ->
                    val elapsed = (System.nanoTime() - started) / 1e9
                    val perStep = elapsed / (p.step - firstStep)
                    activity.runOnUiThread {
                        progress.progress = 1000 * p.step / p.totalSteps
                        info.text = "Step ${p.step}/${p.totalSteps}: loss ${String.format("%.4f", p.loss)}, running " +
                            "${String.format("%.4f", p.runningLoss)}, ${Ui.seconds(elapsed)} (${Ui.seconds(perStep)}/step, " +
                            "~${Ui.seconds(perStep * (p.totalSteps - p.step))} left)"
                    }
                })
            if (state.step >= total) {
                LearnedToken(tokenText, personalizer.rows(state.theta))
                    .save(File(GenerateScreen.tokensDir(activity), "${GenerateScreen.fileNameFor(tokenText)}.safetensors"), s.string("init_word"))
            }
            Pair(state.step, total)
        }, failed = { running = false; setButtons(enabled = true) }) { (step, total) ->
            running = false
            activity.setStatus(if (step >= total) "Personalization done: use the token on the Generate screen." else "Paused at step $step of $total.")
            setButtons(enabled = true)
        }
    }

    /**
     * The init word's embedding row for one encoder, read from the token-embedding table the manifest names
     * (text_encoders[].token_embeddings: a safetensors file with a float32 "weight" [vocab_rows, hidden]).
     */
    private fun tokenRow(bundle: LoadedBundle, spec: TextEncoderSpec, id: Int): FloatArray {
        val file = spec.tokenEmbeddings
            ?: throw UserError("this bundle has no token-embedding table for ${spec.name} (text_encoders[].token_embeddings), which personalization starts from; re-export it with a ralu-export that writes the tables")
        return SafeTensors.readRow(File(bundle.dir, file), "weight", id)
    }
}
