package com.raluedge.demo

import android.content.Context
import com.raluedge.core.HfTokenizer
import com.raluedge.core.Manifest
import com.raluedge.core.UserError
import com.raluedge.core.sha256Hex
import java.io.File

/** A verified bundle: its folder, manifest, loaded tokenizers and the manifest's sha256 (the bundle id). */
class LoadedBundle(val dir: File, val manifest: Manifest, val tokenizers: Map<String, HfTokenizer>, val id: String)

/**
 * Finds, installs and verifies the bundle in app storage. The app reads `<external files dir>/bundle` (where
 * `adb push BUNDLE /sdcard/Android/data/com.raluedge.demo/files/bundle` puts it); when that folder is missing and
 * the APK carries `assets/bundle` (the built-in shapes bundle), that is copied there first. Every file the
 * manifest lists is checked for size and sha256 before use; a `.verified` note (manifest hash + each file's size
 * and modification time) lets later starts skip re-hashing unchanged files.
 */
object BundleStore {
    private const val VERIFIED = ".verified"

    fun bundleDir(context: Context): File = File(context.getExternalFilesDir(null) ?: context.filesDir, "bundle")

    fun load(context: Context, onProgress: (String) -> Unit): LoadedBundle {
        val dir = bundleDir(context)
        if (!File(dir, Manifest.NAME).isFile && hasAssetBundle(context)) {
            onProgress("Copying the built-in bundle…")
            copyAssets(context, "bundle", dir)
        }
        val manifest = Manifest.read(dir)
        val id = sha256Hex(File(dir, Manifest.NAME))
        val note = File(dir, VERIFIED)
        val fingerprint = id + "\n" + manifest.files.joinToString("\n") { f ->
            val file = File(dir, f.path)
            "${f.path} ${file.length()} ${file.lastModified()}"
        }
        if (!note.isFile || note.readText() != fingerprint) {
            manifest.verifyFiles(dir) { done, total -> onProgress("Verifying bundle files $done/$total…") }
            note.writeText(fingerprint)
        }
        val tokenizers = manifest.tokenizers.associate { spec ->
            spec.name to HfTokenizer.fromJson(File(dir, spec.file).readText(Charsets.UTF_8))
        }
        if (manifest.target != "android") {
            throw UserError("this bundle was exported for '${manifest.target}', not android; export it with `ralu-export --target android`")
        }
        return LoadedBundle(dir, manifest, tokenizers, id)
    }

    private fun hasAssetBundle(context: Context): Boolean =
        context.assets.list("bundle")?.contains(Manifest.NAME) == true

    private fun copyAssets(context: Context, path: String, target: File) {
        val tmp = File(target.parentFile, target.name + ".partial")
        tmp.deleteRecursively()
        copyTree(context, path, tmp)
        target.deleteRecursively()
        if (!tmp.renameTo(target)) throw UserError("could not install the built-in bundle into $target; free some storage and restart the app")
    }

    private fun copyTree(context: Context, path: String, target: File) {
        val children = context.assets.list(path) ?: emptyArray()
        if (children.isEmpty()) {
            target.parentFile?.mkdirs()
            context.assets.open(path).use { input -> target.outputStream().use { input.copyTo(it) } }
            return
        }
        target.mkdirs()
        for (child in children) copyTree(context, "$path/$child", File(target, child))
    }
}
