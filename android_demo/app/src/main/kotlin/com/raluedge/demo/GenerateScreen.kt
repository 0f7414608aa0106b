package com.raluedge.demo

import android.graphics.Bitmap
import android.widget.ArrayAdapter
import android.widget.ImageView
import android.widget.Spinner
import com.raluedge.core.LearnedToken
import com.raluedge.core.UserError
import java.io.File

/**
 * Generate: prompt, mode (baseline or a RALU preset the bundle carries), steps (baseline only), seed and an
 * optional learned token; per-step progress with the stage and elapsed time, the image, and saving it to the
 * gallery with its parameters in the PNG.
 */
class GenerateScreen(private val activity: MainActivity) {
    private val context = activity
    private val prompt = Ui.field(context, "Prompt", "a small red circle in the top left")
    private val mode = Spinner(context)
    private val steps = Ui.field(context, "Baseline steps", "28", number = true)
    private val seed = Ui.field(context, "Seed", "0", number = true)
    private val token = Spinner(context)
    private val progress = Ui.progress(context)
    private val info = Ui.label(context, "")
    private val image = ImageView(context).apply { adjustViewBounds = true }
    private var result: Bitmap? = null
    private var parameters = ""
    @Volatile
    private var cancel = false
    private val generateButton = Ui.button(context, "Generate") { generate() }
    private val stopButton = Ui.button(context, "Stop") { cancel = true }
    private val saveButton = Ui.button(context, "Save to gallery") { save() }.apply { isEnabled = false }

    val view = Ui.column(context).apply {
        addView(Ui.label(context, "Prompt"))
        addView(prompt)
        addView(Ui.row(context, Ui.label(context, "Mode"), mode))
        addView(Ui.row(context, steps, seed))
        addView(Ui.row(context, Ui.label(context, "Learned token"), token))
        addView(Ui.row(context, generateButton, stopButton))
        addView(progress)
        addView(info)
        addView(image)
        addView(saveButton)
    }

    init {
        generateButton.isEnabled = false
    }

    fun onBundleLoaded(bundle: LoadedBundle) {
        val modes = listOf("baseline") + bundle.manifest.presets.map { it.name }
        mode.adapter = ArrayAdapter(context, android.R.layout.simple_spinner_dropdown_item, modes)
        mode.setSelection(modes.indexOf("flux-4x").coerceAtLeast(0))
        refreshTokens(select = null)
        generateButton.isEnabled = true
    }

    /** Learned tokens saved by the Personalize screen (files/tokens/*.safetensors). */
    fun refreshTokens(select: String?) {
        val names = listOf("(none)") + tokenFiles(activity).map { it.nameWithoutExtension }
        token.adapter = ArrayAdapter(context, android.R.layout.simple_spinner_dropdown_item, names)
        if (select != null) {
            token.setSelection(names.indexOf(fileNameFor(select)).coerceAtLeast(0))
            if (!prompt.text.contains(select)) prompt.setText("a photo of $select")
        }
    }

    private fun generate() {
        val promptText = prompt.text.toString()
        val modeName = mode.selectedItem as String
        val stepCount = steps.text.toString().toIntOrNull() ?: 28
        val seedValue = seed.text.toString().toLongOrNull() ?: 0L
        val tokenName = token.selectedItem as String?
        cancel = false
        generateButton.isEnabled = false
        saveButton.isEnabled = false
        val started = System.nanoTime()
        activity.runWork({
            val learned = if (tokenName == null || tokenName == "(none)") emptyList()
            else listOf(LearnedToken.load(File(tokensDir(activity), "$tokenName.safetensors")))
            val generator = Engine.generator()
            var done = 0
            val total = if (modeName == "baseline") stepCount else Engine.bundle!!.manifest.preset(modeName).preset.nfe
            val out = generator.generate(promptText, modeName, stepCount, seedValue, learned, onStep = { step ->
                if (cancel) throw Cancelled()
                done++
                val elapsed = (System.nanoTime() - started) / 1e9
                val stage = if (step.stage > 0) "stage ${step.stage}, ${step.numTokens} tokens, " else ""
                activity.runOnUiThread {
                    progress.progress = 1000 * done / total
                    info.text = "Step $done/$total (${stage}σ ${String.format("%.3f", step.sigma)}), ${Ui.seconds(elapsed)}"
                }
            })
            Pair(out, learned)
        }, failed = { generateButton.isEnabled = true }) { (out, learned) ->
            val bitmap = Images.toBitmap(out.image)
            result = bitmap
            image.setImageBitmap(bitmap)
            val bundle = Engine.bundle!!
            parameters = "$promptText\nMode: $modeName, Steps: ${out.nfe}, Seed: $seedValue, " +
                "Size: ${out.image.width}x${out.image.height}, Bundle: ${bundle.manifest.modelName} ${bundle.id.take(12)}" +
                (if (out.guidanceScale == null) "" else ", CFG scale: ${out.guidanceScale}") +
                (if (learned.isEmpty()) "" else ", Token: ${learned[0].token}")
            info.text = "Done: ${out.nfe} steps, ${out.tokenSteps} token-steps, denoising ${Ui.seconds(out.secondsDenoise)}, " +
                "total ${Ui.seconds(out.secondsTotal)}"
            progress.progress = 1000
            generateButton.isEnabled = true
            saveButton.isEnabled = true
        }
    }

    private fun save() {
        val bitmap = result ?: return
        val text = parameters
        activity.runWork({ Images.saveToGallery(activity, bitmap, "ralu-${System.currentTimeMillis()}", text) }) {
            activity.setStatus("Saved to Pictures/RaluEdge")
        }
    }

    companion object {
        fun tokensDir(activity: MainActivity): File = File(activity.filesDir, "tokens").also { it.mkdirs() }

        fun tokenFiles(activity: MainActivity): List<File> =
            tokensDir(activity).listFiles { f -> f.name.endsWith(".safetensors") }?.sortedBy { it.name } ?: emptyList()

        /** A file name for a token string ("<my-cat>" -> "my-cat"); UserError when nothing is left. */
        fun fileNameFor(token: String): String {
            val name = token.filter { it.isLetterOrDigit() || it == '-' || it == '_' }
            if (name.isEmpty()) throw UserError("token '$token' needs at least one letter or digit, e.g. '<my-cat>'")
            return name
        }
    }
}
