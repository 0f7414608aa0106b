package com.raluedge.demo

import android.app.ActivityManager
import android.content.ComponentCallbacks2
import android.content.Context
import com.raluedge.core.Generator
import com.raluedge.core.JsonObject
import com.raluedge.core.Lora
import com.raluedge.core.Personalizer
import com.raluedge.core.PromptEncoder
import com.raluedge.core.PutsConfig
import com.raluedge.core.ZoConfig
import java.util.concurrent.ExecutorService
import java.util.concurrent.Executors

/**
 * Process-wide state: the loaded bundle, its ORT sessions and the one worker thread every model call runs on (never
 * the main thread). Survives activity re-creation; a killed process reloads the bundle and resumes personalization
 * from its checkpoint.
 */
object Engine {
    val worker: ExecutorService = Executors.newSingleThreadExecutor { r -> Thread(r, "ralu-worker") }

    @Volatile
    var bundle: LoadedBundle? = null
        private set
    private var pool: SessionPool? = null

    /** Loads and verifies the bundle once (call on the worker). */
    fun load(context: Context, onProgress: (String) -> Unit): LoadedBundle {
        bundle?.let { return it }
        val loaded = BundleStore.load(context.applicationContext, onProgress)
        val threads = Runtime.getRuntime().availableProcessors().coerceIn(1, 4)
        pool = SessionPool(loaded.dir, loaded.manifest, threads).also {
            val am = context.getSystemService(Context.ACTIVITY_SERVICE) as ActivityManager
            it.lowMemory = am.isLowRamDevice
        }
        bundle = loaded
        return loaded
    }

    private fun pool(): SessionPool = pool ?: throw IllegalStateException("bundle not loaded")

    fun prompts(): PromptEncoder {
        val b = bundle ?: throw IllegalStateException("bundle not loaded")
        return PromptEncoder(b.manifest, b.tokenizers, b.manifest.textEncoders.associate { it.name to OrtTextEncoder(pool(), b.manifest, it) })
    }

    fun generator(): Generator {
        val b = bundle ?: throw IllegalStateException("bundle not loaded")
        return Generator(b.manifest, prompts(), OrtDenoiser(pool(), b.manifest), OrtVaeDecoder(pool(), b.manifest))
    }

    fun personalizer(config: ZoConfig, puts: PutsConfig = PutsConfig()): Personalizer {
        val b = bundle ?: throw IllegalStateException("bundle not loaded")
        return Personalizer(b.manifest, prompts(), OrtDenoiser(pool(), b.manifest), config, puts)
    }

    /**
     * Apply LoRA files (each with its scale; empty list: none) to the loaded bundle: the core merges them on this
     * thread (Lora.read / Lora.overrides, checked against the manifest) and only the sessions of touched graphs
     * reopen. Call on the worker; a bad file is one UserError and leaves the current LoRAs in place.
     */
    fun setLoras(loras: List<Pair<java.io.File, Double>>) {
        val b = bundle ?: throw IllegalStateException("bundle not loaded")
        val manifest = JsonObject.parse(java.io.File(b.dir, "ralu_config.json").readText(), "ralu_config.json")
        val factors = loras.map { (file, scale) -> Lora.read(file, manifest, scale) }
        pool().setLora(if (factors.isEmpty()) emptyMap() else Lora.overrides(b.dir, manifest, factors))
    }

    fun vaeEncoder(): OrtVaeEncoder = OrtVaeEncoder(pool(), bundle!!.manifest)

    /**
     * onTrimMemory: when the system runs low, switch to low-memory mode (sessions closed between stages and after
     * each encoder or decoder run) and close every idle session now; when the UI is hidden, close idle sessions.
     */
    fun onTrimMemory(level: Int) {
        val p = pool ?: return
        val pressure = level == ComponentCallbacks2.TRIM_MEMORY_RUNNING_LOW ||
            level == ComponentCallbacks2.TRIM_MEMORY_RUNNING_CRITICAL || level >= ComponentCallbacks2.TRIM_MEMORY_BACKGROUND
        if (pressure) p.lowMemory = true
        if (pressure || level >= ComponentCallbacks2.TRIM_MEMORY_UI_HIDDEN) p.trim()
    }
}
