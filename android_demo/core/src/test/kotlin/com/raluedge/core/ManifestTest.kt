package com.raluedge.core

import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Rule
import org.junit.Test
import org.junit.rules.TemporaryFolder
import java.io.File

/** ralu_config.json parsing and checksum verification on the vectors' bundle fixture (written by ralu_edge.manifest). */
class ManifestTest {
    @get:Rule
    val temp = TemporaryFolder()

    private val fixture: File get() = File(Vectors.folder, Vectors.index.obj("extra").string("bundle"))

    private fun copy(): File {
        val dir = temp.newFolder("bundle")
        fixture.copyRecursively(dir, overwrite = true)
        return dir
    }

    private fun expectUserError(containing: String, block: () -> Unit) {
        try {
            block()
            fail("expected a UserError mentioning '$containing'")
        } catch (e: UserError) {
            assertTrue("'${e.message}' should mention '$containing'", e.message!!.contains(containing))
        }
    }

    @Test
    fun fixtureParsesWithItsGraphsPresetsAndTokenizersAndVerifies() {
        val manifest = Manifest.read(fixture)
        assertEquals("android", manifest.target)
        assertEquals(16, manifest.resolutions[0].gridHeight)
        assertEquals(setOf("flux-4x", "flux-5x", "flux-7x"), manifest.presets.map { it.name }.toSet())
        assertEquals(listOf(64, 121, 256), manifest.preset("flux-4x").stageLengths.getValue(Pair(128, 128)).toList())
        assertEquals("denoiser", manifest.denoiser.graphFor(121))
        assertEquals(listOf("clip", "t5"), manifest.textEncoders.map { it.kind })
        assertTrue(manifest.graph("denoiser").inputs.any { it.name == "rope_cos" })
        var done = 0
        manifest.verifyFiles(fixture) { d, _ -> done = d }
        assertEquals(manifest.files.size, done)
        val tokenizer = manifest.tokenizer("tokenizer")
        HfTokenizer.fromJson(File(fixture, tokenizer.file).readText())
    }

    @Test
    fun tamperedTruncatedOrMissingFilesAreRefusedByName() {
        val dir = copy()
        val manifest = Manifest.read(dir)
        val target = File(dir, manifest.graph("denoiser").file)
        val bytes = target.readBytes()
        bytes[0] = (bytes[0] + 1).toByte()
        target.writeBytes(bytes)
        expectUserError("transformer/denoiser.ort: sha256") { manifest.verifyFiles(dir) }
        target.writeBytes(bytes.copyOf(bytes.size - 1))
        expectUserError("truncated") { manifest.verifyFiles(dir) }
        target.delete()
        expectUserError("missing") { manifest.verifyFiles(dir) }
    }

    @Test
    fun malformedManifestsAreUserErrorsNamingTheField() {
        val text = File(fixture, Manifest.NAME).readText()
        expectUserError("malformed JSON") { Manifest.parse(text.dropLast(5)) }
        expectUserError("format_version") { Manifest.parse(text.replace("\"format_version\": 1", "\"format_version\": 7")) }
        expectUserError("not a relative path") { Manifest.parse(text.replace("\"transformer/denoiser.ort\"", "\"../denoiser.ort\"")) }
        val root = Json.parse(text) as Map<*, *>
        @Suppress("UNCHECKED_CAST")
        val presets = (root["presets"] as List<Map<String, Any?>>)
        val preset = LinkedHashMap(presets[0]["preset"] as Map<String, Any?>)
        preset["h"] = listOf(5.0, 2.589, 2.226)
        val edited = LinkedHashMap(root as Map<String, Any?>)
        edited["presets"] = listOf(LinkedHashMap(presets[0]).also { it["preset"] = preset }) + presets.drop(1)
        expectUserError("disagrees") { Manifest.parse(Json.write(edited)) }
        expectUserError("not a complete ralu-export bundle") { Manifest.read(temp.newFolder("empty")) }
    }

    @Test
    fun guidanceScaleIsReadWhenRecordedAndABadOneIsRefused() {
        val text = File(fixture, Manifest.NAME).readText()
        assertEquals(null, Manifest.parse(text).denoiser.guidanceScale)
        assertEquals(3.5, Manifest.parse(withGuidanceScale(text, 3.5)).denoiser.guidanceScale!!, 0.0)
        expectUserError("denoiser.guidance_scale") { Manifest.parse(withGuidanceScale(text, 0.5)) }
    }

    @Test
    fun jsonRoundTripsNumbersStringsAndNesting() {
        val value = Json.parse("""{"a": [1, -2.5e-3, "x\"\u00e9\n"], "b": {"c": null, "d": true}}""")
        assertEquals(value, Json.parse(Json.write(value)))
        assertEquals(1L, ((value as Map<*, *>)["a"] as List<*>)[0])
    }
}
