package com.raluedge.demo

import android.os.Bundle
import android.view.View
import android.view.ViewGroup
import android.widget.FrameLayout
import android.widget.LinearLayout
import android.widget.ScrollView
import android.widget.TextView
import androidx.activity.ComponentActivity
import androidx.activity.result.PickVisualMediaRequest
import androidx.activity.result.contract.ActivityResultContracts
import com.raluedge.core.UserError

/**
 * The demo's one activity: a bar switching between the Generate and Personalize screens, a status line, and the
 * bundle loaded (copied from assets if needed, verified against its manifest) on the worker thread at start.
 * Model work never runs on the main thread; results come back through runOnUiThread.
 */
class MainActivity : ComponentActivity() {
    private lateinit var status: TextView
    private lateinit var generate: GenerateScreen
    private lateinit var personalize: PersonalizeScreen
    private lateinit var container: FrameLayout

    private val pickPhotos = registerForActivityResult(ActivityResultContracts.PickMultipleVisualMedia(10)) { uris ->
        personalize.onPhotosPicked(uris)
    }

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        generate = GenerateScreen(this)
        personalize = PersonalizeScreen(this) {
            pickPhotos.launch(PickVisualMediaRequest(ActivityResultContracts.PickVisualMedia.ImageOnly))
        }
        status = Ui.label(this, "Loading the bundle…")
        container = FrameLayout(this)
        val root = Ui.column(this).apply {
            addView(Ui.row(context, Ui.button(context, "Generate") { show(generate.view) },
                Ui.button(context, "Personalize") { show(personalize.view) }))
            addView(status)
            addView(container, LinearLayout.LayoutParams(LinearLayout.LayoutParams.MATCH_PARENT, 0, 1f))
        }
        setContentView(root)
        show(generate.view)
        loadBundle()
    }

    private fun show(view: View) {
        (view.parent as? ViewGroup)?.removeView(view)
        container.removeAllViews()
        container.addView(ScrollView(this).apply { addView(view) })
    }

    fun showGenerate(token: String?) {
        generate.refreshTokens(select = token)
        show(generate.view)
    }

    private fun loadBundle() {
        runWork({ Engine.load(this) { message -> runOnUiThread { status.text = message } } }) { bundle ->
            status.text = "Bundle ${bundle.manifest.modelName} (${bundle.manifest.precision}, ${bundle.id.take(12)}) " +
                "at ${bundle.manifest.resolutions[0].width}×${bundle.manifest.resolutions[0].height}"
            generate.onBundleLoaded(bundle)
            personalize.onBundleLoaded(bundle)
        }
    }

    /**
     * Runs `work` on the worker thread and `done` with its result on the main thread; a UserError is shown as its
     * sentence, anything else as a bug report line (and `failed` runs on the main thread either way).
     */
    fun <T> runWork(work: () -> T, failed: (() -> Unit)? = null, done: (T) -> Unit) {
        Engine.worker.execute {
            try {
                val result = work()
                runOnUiThread { done(result) }
            } catch (e: UserError) {
                runOnUiThread { status.text = e.message; failed?.invoke() }
            } catch (e: Cancelled) {
                runOnUiThread { status.text = "Stopped."; failed?.invoke() }
            } catch (e: Throwable) {
                android.util.Log.e("RaluEdge", "unexpected failure", e)
                runOnUiThread { status.text = "Internal error: ${e.javaClass.simpleName}: ${e.message}"; failed?.invoke() }
            }
        }
    }

    fun setStatus(text: String) = runOnUiThread { status.text = text }

    override fun onTrimMemory(level: Int) {
        super.onTrimMemory(level)
        Engine.onTrimMemory(level)
    }
}

/** Thrown from a progress callback to stop a generation; the core's loops let it propagate. */
class Cancelled : RuntimeException("cancelled")
