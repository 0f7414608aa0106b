package com.raluedge.core

import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Test
import java.io.File

/** The bundle's CLIP BPE and T5 Unigram tokenizers against the `tokenizers` library's ids for the vectors' prompts. */
class TokenizerTest {
    @Test
    fun idsMatchTheTokenizersLibraryForEveryPromptAndTokenizer() {
        val entries = Vectors.index.objects("tokenizers")
        assertEquals(setOf("clip", "t5"), entries.map { it.string("kind") }.toSet())
        for (entry in entries) {
            val tokenizer = HfTokenizer.fromJson(File(Vectors.folder, entry.string("file")).readText(Charsets.UTF_8))
            val added = entry.objects("added_tokens")
            val ids = tokenizer.addTokens(added.map { it.string("content") })
            assertArrayEquals("${entry.string("name")} added ids", added.map { it.int("id") }.toIntArray(), ids)
            assertEquals(entry.int("first_free_id"), added[0].int("id"))
            for (case in entry.objects("cases")) {
                val prompt = case.string("prompt")
                val where = "${entry.string("name")} '$prompt'"
                assertArrayEquals("$where ids", case.ints("ids"), tokenizer.encode(prompt))
                val (padded, _) = tokenizer.encodePadded(prompt, entry.int("max_length"), entry.int("pad_id"))
                assertArrayEquals("$where padded", case.ints("padded"), padded)
            }
        }
    }

    @Test
    fun addingTheSameTokenTwiceKeepsItsId() {
        val entry = Vectors.index.objects("tokenizers")[0]
        val tokenizer = HfTokenizer.fromJson(File(Vectors.folder, entry.string("file")).readText(Charsets.UTF_8))
        val first = tokenizer.addTokens(listOf("<sks>"))
        assertArrayEquals(first, tokenizer.addTokens(listOf("<sks>")))
        assertEquals(first[0] + 1, tokenizer.addTokens(listOf("<other>"))[0])
    }
}
