package com.raluedge.core

import java.text.Normalizer as JavaNormalizer
import java.util.Locale
import java.util.regex.Pattern

/**
 * A reader of Hugging Face `tokenizer.json` files implementing the parts the bundle's tokenizers use, so that ids
 * match the `tokenizers` library (checked by the conformance vectors): CLIP's byte-level BPE with the `</w>`
 * end-of-word suffix, and T5's Unigram (Viterbi over piece scores, consecutive unknowns fused).
 *
 * Components: normalizers Sequence, NFC, NFD, NFKC, NFKD, Lowercase, Replace, Strip, StripAccents, Prepend and
 * Precompiled (SentencePiece's compiled charsmap, approximated by NFKC: the documented equivalent for T5-XXL
 * prompts; control characters the charsmap drops pass through here); pre-tokenizers Sequence, Split,
 * ByteLevel, Metaspace, Whitespace and WhitespaceSplit; models BPE and Unigram; post-processors
 * RobertaProcessing, BertProcessing, TemplateProcessing, ByteLevel and Sequence. Added tokens are matched
 * leftmost-longest, non-normalized ones on the raw text and normalized ones on the normalized text; lstrip is
 * honoured (learned tokens set it), rstrip / single_word are not implemented (no bundle tokenizer sets them).
 */
class HfTokenizer private constructor(
    private val normalizer: TextNormalizer?,
    private var preTokenizer: PreTokenizer?,
    private val model: TokenModel,
    private val post: PostProcessor?,
    addedTokens: List<AddedToken>
) {
    class AddedToken(val content: String, val id: Int, val special: Boolean, val normalized: Boolean, val lstrip: Boolean = false)

    private val added = ArrayList(addedTokens)

    /** Number of special tokens the post-processor adds to one sequence (2 for CLIP, 1 for T5). */
    val numSpecialTokens: Int get() = post?.numAdded() ?: 0

    /** The id of a vocabulary entry or added token, or null. */
    fun tokenToId(token: String): Int? = added.firstOrNull { it.content == token }?.id ?: model.tokenToId(token)

    /**
     * Adds learned placeholder tokens as ralu_runtime.tokenization.add_learned_tokens does, so that a learned token
     * tokenizes like one word ("a red <t> in" as many ids as "a red square in"): AddedToken(special=False,
     * normalized=False, lstrip=True), matched case-sensitively on the raw prompt and absorbing the whitespace
     * before it, and a Metaspace pre-tokenizer switched from prepend scheme "always" to "first" (no '▁' before
     * the text that follows an added token). Returns their ids: an existing entry keeps its id; a new one takes
     * max(added id) + 1 when that is beyond the model vocabulary, else the vocabulary size (tokenizers'
     * AddedVocabulary.add_tokens).
     */
    fun addTokens(contents: List<String>): IntArray {
        preTokenizer = preTokenizer?.withFirstPrependScheme()
        return contents.map { content ->
            tokenToId(content) ?: run {
                val maxAdded = added.map { it.id }.fold(-1) { a, b -> if (b > a) b else a }
                val id = if (maxAdded >= model.vocabSize || model.vocabSize == 0) maxAdded + 1 else model.vocabSize
                added.add(AddedToken(content, id, special = false, normalized = false, lstrip = true))
                id
            }
        }.toIntArray()
    }

    /** Token ids of `text` with the post-processor's special tokens, no truncation or padding. */
    fun encode(text: String, addSpecialTokens: Boolean = true): IntArray {
        val ids = modelIds(text)
        return if (addSpecialTokens && post != null) post.apply(ids) else ids.toIntArray()
    }

    /**
     * Ids as the pipelines feed the text encoders: truncated to maxLength - numSpecialTokens (from the right), the
     * special tokens added, then padded with padId to exactly maxLength. Returns (ids, number of non-pad tokens).
     */
    fun encodePadded(text: String, maxLength: Int, padId: Int): Pair<IntArray, Int> {
        val ids = modelIds(text)
        val keep = maxOf(0, minOf(ids.size, maxLength - numSpecialTokens))
        val withSpecials = post?.apply(ids.subList(0, keep)) ?: ids.subList(0, keep).toIntArray()
        return Pair(IntArray(maxLength) { if (it < withSpecials.size) withSpecials[it] else padId }, withSpecials.size)
    }

    private fun modelIds(text: String): List<Int> {
        val out = ArrayList<Int>()
        var first = true
        for (piece in splitAdded(text, added.filter { !it.normalized }) { it }) {
            if (piece.token != null) { out.add(piece.token.id); first = false; continue }
            if (piece.text.isEmpty()) continue
            val normalized = normalizer?.normalize(piece.text) ?: piece.text
            for (sub in splitAdded(normalized, added.filter { it.normalized }) { normalizer?.normalize(it) ?: it }) {
                if (sub.token != null) { out.add(sub.token.id); first = false; continue }
                if (sub.text.isEmpty()) continue
                val words = preTokenizer?.split(listOf(sub.text), first) ?: listOf(sub.text)
                for (word in words) if (word.isNotEmpty()) out.addAll(model.tokenize(word))
                first = false
            }
        }
        return out
    }

    private class Piece(val text: String, val token: AddedToken?)

    /**
     * The text split around leftmost-longest occurrences of the tokens' (transformed) contents; an lstrip token
     * also takes the whitespace before it, back to the end of the previous match (tokenizers' AddedVocabulary).
     */
    private fun splitAdded(text: String, tokens: List<AddedToken>, transform: (String) -> String): List<Piece> {
        if (tokens.isEmpty() || text.isEmpty()) return listOf(Piece(text, null))
        val patterns = tokens.map { Pair(transform(it.content), it) }.filter { it.first.isNotEmpty() }
        val out = ArrayList<Piece>()
        var start = 0
        var i = 0
        while (i < text.length) {
            var best: Pair<String, AddedToken>? = null
            for (p in patterns) if (text.startsWith(p.first, i) && (best == null || p.first.length > best.first.length)) best = p
            if (best == null) { i++; continue }
            var from = i
            if (best.second.lstrip) while (from > start && isWhitespaceBefore(text, from)) from -= Character.charCount(text.codePointBefore(from))
            if (from > start) out.add(Piece(text.substring(start, from), null))
            out.add(Piece(best.first, best.second))
            i += best.first.length
            start = i
        }
        if (start < text.length) out.add(Piece(text.substring(start), null))
        return out
    }

    companion object {
        private val WHITESPACE: Pattern = Pattern.compile("\\s", Pattern.UNICODE_CHARACTER_CLASS)

        /** Whether the code point before `index` is Unicode White_Space (Rust's char::is_whitespace). */
        private fun isWhitespaceBefore(text: String, index: Int): Boolean =
            WHITESPACE.matcher(String(Character.toChars(text.codePointBefore(index)))).matches()

        /** The tokenizer described by a tokenizer.json text; UserError naming an unsupported component. */
        fun fromJson(text: String): HfTokenizer {
            val root = JsonObject.parse(text, "tokenizer.json")
            val added = if (root.has("added_tokens")) root.objects("added_tokens").map {
                AddedToken(it.string("content"), it.int("id"), it.boolOr("special", false), it.boolOr("normalized", !it.boolOr("special", false)),
                    it.boolOr("lstrip", false))
            } else emptyList()
            return HfTokenizer(
                root.objOrNull("normalizer")?.let(TextNormalizer.Companion::fromJson),
                root.objOrNull("pre_tokenizer")?.let(PreTokenizer.Companion::fromJson),
                TokenModel.fromJson(root.obj("model")),
                root.objOrNull("post_processor")?.let(PostProcessor.Companion::fromJson),
                added
            )
        }

        internal fun unsupported(what: String, type: String) =
            UserError("tokenizer.json: $what type '$type' is not supported by the app's tokenizer; use a CLIP BPE or T5 Unigram tokenizer")

        /** Java regex of a tokenizers pattern ({"Regex": ...} or {"String": ...}), Unicode classes like Oniguruma's. */
        internal fun pattern(obj: JsonObject): Pattern =
            if (obj.has("Regex")) Pattern.compile(obj.string("Regex"), Pattern.UNICODE_CHARACTER_CLASS)
            else Pattern.compile(Pattern.quote(obj.string("String")))

        /** Full lower-case mapping of each code point on its own, as Rust's char::to_lowercase (no final-sigma rule). */
        internal fun lowercase(text: String): String {
            val out = StringBuilder(text.length)
            var i = 0
            while (i < text.length) {
                val cp = text.codePointAt(i)
                if (cp < 128) out.appendCodePoint(if (cp in 65..90) cp + 32 else cp)
                else out.append((String(Character.toChars(cp)) as java.lang.String).toLowerCase(Locale.ROOT))
                i += Character.charCount(cp)
            }
            return out.toString()
        }
    }
}

internal abstract class TextNormalizer {
    abstract fun normalize(text: String): String

    companion object {
        fun fromJson(obj: JsonObject): TextNormalizer {
            val type = obj.string("type")
            return when (type) {
                "Sequence" -> Chain(obj.objects("normalizers").map(::fromJson))
                "NFC" -> Unicode(JavaNormalizer.Form.NFC)
                "NFD" -> Unicode(JavaNormalizer.Form.NFD)
                "NFKC", "Precompiled" -> Unicode(JavaNormalizer.Form.NFKC)
                "NFKD" -> Unicode(JavaNormalizer.Form.NFKD)
                "Lowercase" -> Simple { HfTokenizer.lowercase(it) }
                "Replace" -> {
                    val pattern = HfTokenizer.pattern(obj.obj("pattern"))
                    val content = obj.string("content")
                    Simple { pattern.matcher(it).replaceAll(java.util.regex.Matcher.quoteReplacement(content)) }
                }
                "Strip" -> {
                    val left = obj.boolOr("strip_left", true)
                    val right = obj.boolOr("strip_right", true)
                    val ws = Pattern.compile("\\s", Pattern.UNICODE_CHARACTER_CLASS)
                    Simple { s ->
                        var a = 0
                        var b = s.length
                        if (left) while (a < b && ws.matcher(s.substring(a, a + 1)).matches()) a++
                        if (right) while (b > a && ws.matcher(s.substring(b - 1, b)).matches()) b--
                        s.substring(a, b)
                    }
                }
                "StripAccents" -> Simple { JavaNormalizer.normalize(it, JavaNormalizer.Form.NFD).replace(Regex("\\p{Mn}+"), "") }
                "Prepend" -> { val prefix = obj.string("prepend"); Simple { if (it.isEmpty()) it else prefix + it } }
                else -> throw HfTokenizer.unsupported("normalizer", type)
            }
        }
    }

    private class Chain(val parts: List<TextNormalizer>) : TextNormalizer() {
        override fun normalize(text: String): String = parts.fold(text) { t, n -> n.normalize(t) }
    }

    private class Unicode(val form: JavaNormalizer.Form) : TextNormalizer() {
        override fun normalize(text: String): String = JavaNormalizer.normalize(text, form)
    }

    private class Simple(val f: (String) -> String) : TextNormalizer() {
        override fun normalize(text: String): String = f(text)
    }
}

internal abstract class PreTokenizer {
    /** Splits each piece into words; `atStart` is true when the first piece begins the input (Metaspace "first"). */
    abstract fun split(pieces: List<String>, atStart: Boolean): List<String>

    /** This pre-tokenizer with every Metaspace's prepend scheme "always" turned into "first" (learned tokens). */
    open fun withFirstPrependScheme(): PreTokenizer = this

    companion object {
        private const val GPT2_PATTERN = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"

        fun fromJson(obj: JsonObject): PreTokenizer {
            val type = obj.string("type")
            return when (type) {
                "Sequence" -> Chain(obj.objects("pretokenizers").map(::fromJson))
                "Split" -> RegexSplit(HfTokenizer.pattern(obj.obj("pattern")), obj.string("behavior"), obj.boolOr("invert", false))
                "ByteLevel" -> ByteLevel(obj.boolOr("add_prefix_space", false), obj.boolOr("use_regex", true))
                "Metaspace" -> {
                    val scheme = obj.stringOrNull("prepend_scheme") ?: if (obj.boolOr("add_prefix_space", true)) "always" else "never"
                    Metaspace(obj.string("replacement"), scheme, obj.boolOr("split", true))
                }
                "WhitespaceSplit" -> RegexSplit(Pattern.compile("\\s+", Pattern.UNICODE_CHARACTER_CLASS), "Removed", false)
                "Whitespace" -> RegexSplit(Pattern.compile("\\w+|[^\\w\\s]+", Pattern.UNICODE_CHARACTER_CLASS), "Removed", true)
                else -> throw HfTokenizer.unsupported("pre_tokenizer", type)
            }
        }

        /** tokenizers' NormalizedString::split: the pieces around and of the pattern's matches, per behavior. */
        fun splitBy(text: String, pattern: Pattern, behavior: String, invert: Boolean): List<String> {
            val spans = ArrayList<Triple<Int, Int, Boolean>>()
            val m = pattern.matcher(text)
            var last = 0
            while (m.find()) {
                if (m.end() == m.start()) continue
                if (m.start() > last) spans.add(Triple(last, m.start(), false))
                spans.add(Triple(m.start(), m.end(), true))
                last = m.end()
            }
            if (last < text.length) spans.add(Triple(last, text.length, false))
            val marked = spans.map { Triple(it.first, it.second, it.third != invert) }
            val out = ArrayList<String>()
            when (behavior) {
                "Removed" -> marked.filter { !it.third }.forEach { out.add(text.substring(it.first, it.second)) }
                "Isolated" -> marked.forEach { out.add(text.substring(it.first, it.second)) }
                "MergedWithPrevious" -> {
                    for (s in marked) {
                        if (s.third && out.isNotEmpty()) out[out.size - 1] = out.last() + text.substring(s.first, s.second)
                        else out.add(text.substring(s.first, s.second))
                    }
                }
                "MergedWithNext" -> {
                    var pending = ""
                    for (s in marked) {
                        if (s.third) { if (pending.isNotEmpty()) out.add(pending); pending = text.substring(s.first, s.second) }
                        else { out.add(pending + text.substring(s.first, s.second)); pending = "" }
                    }
                    if (pending.isNotEmpty()) out.add(pending)
                }
                "Contiguous" -> {
                    var previousMatch = false
                    for (s in marked) {
                        if (s.third && previousMatch && out.isNotEmpty()) out[out.size - 1] = out.last() + text.substring(s.first, s.second)
                        else out.add(text.substring(s.first, s.second))
                        previousMatch = s.third
                    }
                }
                else -> throw HfTokenizer.unsupported("split behavior", behavior)
            }
            return out.filter { it.isNotEmpty() }
        }
    }

    private class Chain(val parts: List<PreTokenizer>) : PreTokenizer() {
        override fun split(pieces: List<String>, atStart: Boolean): List<String> = parts.fold(pieces) { p, t -> t.split(p, atStart) }
        override fun withFirstPrependScheme(): PreTokenizer = Chain(parts.map { it.withFirstPrependScheme() })
    }

    private class RegexSplit(val pattern: Pattern, val behavior: String, val invert: Boolean) : PreTokenizer() {
        override fun split(pieces: List<String>, atStart: Boolean): List<String> = pieces.flatMap { splitBy(it, pattern, behavior, invert) }
    }

    /** GPT-2 byte-level: optional GPT-2 regex split, then each UTF-8 byte mapped to its printable stand-in. */
    private class ByteLevel(val addPrefixSpace: Boolean, val useRegex: Boolean) : PreTokenizer() {
        override fun split(pieces: List<String>, atStart: Boolean): List<String> = pieces.flatMap { piece ->
            val text = if (addPrefixSpace && !piece.startsWith(" ")) " $piece" else piece
            (if (useRegex) splitBy(text, GPT2, "Isolated", false) else listOf(text)).map(::mapBytes)
        }

        companion object {
            val GPT2: Pattern = Pattern.compile(GPT2_PATTERN, Pattern.UNICODE_CHARACTER_CLASS)
            private val BYTE_TO_CHAR: IntArray = IntArray(256).also { table ->
                var next = 256
                for (b in 0 until 256) {
                    val printable = b in 33..126 || b in 161..172 || b in 174..255
                    table[b] = if (printable) b else next++
                }
            }

            fun mapBytes(text: String): String {
                val out = StringBuilder()
                for (b in text.toByteArray(Charsets.UTF_8)) out.appendCodePoint(BYTE_TO_CHAR[b.toInt() and 0xFF])
                return out.toString()
            }
        }
    }

    /** SentencePiece-style: spaces become the replacement, prepended per the scheme, split before each replacement. */
    private class Metaspace(val replacement: String, val scheme: String, val splitWords: Boolean) : PreTokenizer() {
        private val pattern = Pattern.compile(Pattern.quote(replacement))

        override fun withFirstPrependScheme(): PreTokenizer =
            if (scheme == "always") Metaspace(replacement, "first", splitWords) else this

        override fun split(pieces: List<String>, atStart: Boolean): List<String> = pieces.withIndex().flatMap { (i, piece) ->
            var text = piece.replace(" ", replacement)
            val prepend = when (scheme) {
                "always" -> true
                "first" -> atStart && i == 0
                else -> false
            }
            if (prepend && !text.startsWith(replacement)) text = replacement + text
            if (splitWords) splitBy(text, pattern, "MergedWithNext", false) else listOf(text)
        }
    }
}

internal abstract class TokenModel {
    abstract val vocabSize: Int
    abstract fun tokenToId(token: String): Int?
    abstract fun tokenize(word: String): List<Int>

    companion object {
        fun fromJson(obj: JsonObject): TokenModel {
            val type = obj.stringOrNull("type") ?: if (obj.has("merges")) "BPE" else "Unigram"
            return when (type) {
                "BPE" -> Bpe.fromJson(obj)
                "Unigram" -> Unigram.fromJson(obj)
                else -> throw HfTokenizer.unsupported("model", type)
            }
        }

        fun codePoints(text: String): List<String> {
            val out = ArrayList<String>()
            var i = 0
            while (i < text.length) {
                val n = Character.charCount(text.codePointAt(i))
                out.add(text.substring(i, i + n))
                i += n
            }
            return out
        }
    }
}

/** Byte-pair encoding: characters (the last with end_of_word_suffix) merged by rank, lowest first, leftmost on ties. */
internal class Bpe(
    private val vocab: Map<String, Int>, private val merges: Map<Long, IntArray>, private val unk: String?,
    private val prefix: String, private val suffix: String, private val fuseUnk: Boolean, private val byteFallback: Boolean,
    private val ignoreMerges: Boolean
) : TokenModel() {
    override val vocabSize: Int get() = vocab.size
    override fun tokenToId(token: String): Int? = vocab[token]

    override fun tokenize(word: String): List<Int> {
        if (ignoreMerges) vocab[word]?.let { return listOf(it) }
        val symbols = ArrayList<Int>()
        val chars = codePoints(word)
        var pendingUnk = false
        for ((i, ch) in chars.withIndex()) {
            var s = ch
            if (i > 0) s = prefix + s
            if (i == chars.size - 1) s += suffix
            val id = vocab[s]
            if (id != null) { symbols.add(id); pendingUnk = false; continue }
            if (byteFallback) {
                val bytes = ch.toByteArray(Charsets.UTF_8).map { vocab[String.format("<0x%02X>", it.toInt() and 0xFF)] }
                if (bytes.all { it != null }) { bytes.forEach { symbols.add(it!!) }; pendingUnk = false; continue }
            }
            val unkId = unk?.let { vocab[it] } ?: continue
            if (!(fuseUnk && pendingUnk)) symbols.add(unkId)
            pendingUnk = true
        }
        while (symbols.size > 1) {
            var bestRank = Int.MAX_VALUE
            var bestAt = -1
            var bestId = -1
            for (j in 0 until symbols.size - 1) {
                val merge = merges[key(symbols[j], symbols[j + 1])] ?: continue
                if (merge[0] < bestRank) { bestRank = merge[0]; bestAt = j; bestId = merge[1] }
            }
            if (bestAt < 0) break
            symbols[bestAt] = bestId
            symbols.removeAt(bestAt + 1)
        }
        return symbols
    }

    companion object {
        private fun key(a: Int, b: Int): Long = (a.toLong() shl 32) or (b.toLong() and 0xFFFFFFFFL)

        fun fromJson(obj: JsonObject): Bpe {
            val vocab = obj.obj("vocab").map.mapValues { (it.value as Long).toInt() }
            val merges = HashMap<Long, IntArray>()
            for ((rank, entry) in obj.list("merges").withIndex()) {
                val pair = when (entry) {
                    is String -> entry.split(" ", limit = 2)
                    is List<*> -> entry.map { it as String }
                    else -> throw UserError("tokenizer.json: BPE merge $rank is neither 'a b' nor [a, b]")
                }
                val a = vocab[pair[0]]
                val b = vocab[pair[1]]
                val merged = vocab[pair[0] + pair[1]]
                if (a == null || b == null || merged == null) throw UserError("tokenizer.json: BPE merge '${pair[0]} ${pair[1]}' names a token missing from the vocabulary")
                val k = key(a, b)
                if (!merges.containsKey(k)) merges[k] = intArrayOf(rank, merged)
            }
            return Bpe(vocab, merges, obj.stringOrNull("unk_token"), obj.stringOrNull("continuing_subword_prefix") ?: "",
                obj.stringOrNull("end_of_word_suffix") ?: "", obj.boolOr("fuse_unk", false), obj.boolOr("byte_fallback", false),
                obj.boolOr("ignore_merges", false))
        }
    }
}

/**
 * Unigram language model: the segmentation with the highest total piece score (Viterbi, as tokenizers'
 * `encode_optimized`: candidates in increasing length, a later candidate wins only with a strictly higher
 * score); characters no piece covers become the unknown piece, scored min_score - 10, consecutive ones fused.
 */
internal class Unigram(
    private val pieces: List<String>, private val scores: DoubleArray, private val unkId: Int, private val fuseUnk: Boolean
) : TokenModel() {
    private val ids: Map<String, Int> = HashMap<String, Int>().also { m -> pieces.withIndex().forEach { (i, p) -> if (!m.containsKey(p)) m[p] = i } }
    private val maxPieceLength: Int = pieces.map { codePoints(it).size }.fold(1) { a, b -> if (b > a) b else a }
    private val unkScore: Double = scores.fold(Double.POSITIVE_INFINITY) { a, b -> if (b < a) b else a } - 10.0

    override val vocabSize: Int get() = pieces.size
    override fun tokenToId(token: String): Int? = ids[token]

    override fun tokenize(word: String): List<Int> {
        val chars = codePoints(word)
        val n = chars.size
        val bestScore = DoubleArray(n + 1)
        val startsAt = IntArray(n + 1) { -1 }
        val bestId = IntArray(n + 1) { -1 }
        for (start in 0 until n) {
            if (start > 0 && startsAt[start] < 0) continue
            val base = bestScore[start]
            var hasSingle = false
            val piece = StringBuilder()
            for (length in 1..minOf(maxPieceLength, n - start)) {
                piece.append(chars[start + length - 1])
                val id = ids[piece.toString()] ?: continue
                val candidate = base + scores[id]
                val end = start + length
                if (startsAt[end] < 0 || candidate > bestScore[end]) { bestScore[end] = candidate; startsAt[end] = start; bestId[end] = id }
                if (length == 1) hasSingle = true
            }
            if (!hasSingle) {
                val end = start + 1
                val candidate = base + unkScore
                if (startsAt[end] < 0 || candidate > bestScore[end]) { bestScore[end] = candidate; startsAt[end] = start; bestId[end] = unkId }
            }
        }
        val out = ArrayList<Int>()
        var end = n
        while (end > 0) {
            val id = bestId[end]
            if (!(fuseUnk && id == unkId && out.isNotEmpty() && out.last() == unkId)) out.add(id)
            end = startsAt[end]
        }
        out.reverse()
        return out
    }

    companion object {
        fun fromJson(obj: JsonObject): Unigram {
            val vocab = obj.list("vocab")
            val pieces = ArrayList<String>()
            val scores = DoubleArray(vocab.size)
            for ((i, entry) in vocab.withIndex()) {
                val pair = entry as? List<*> ?: throw UserError("tokenizer.json: Unigram vocab entry $i is not [piece, score]")
                pieces.add(pair[0] as String)
                scores[i] = (pair[1] as Number).toDouble()
            }
            if (obj.boolOr("byte_fallback", false)) throw HfTokenizer.unsupported("Unigram option", "byte_fallback")
            return Unigram(pieces, scores, obj.intOrNull("unk_id") ?: 0, obj.boolOr("fuse_unk", true))
        }
    }
}

internal abstract class PostProcessor {
    abstract fun apply(ids: List<Int>): IntArray
    abstract fun numAdded(): Int

    companion object {
        fun fromJson(obj: JsonObject): PostProcessor {
            val type = obj.string("type")
            return when (type) {
                "RobertaProcessing", "BertProcessing" -> {
                    val cls = (obj.list("cls")[1] as Long).toInt()
                    val sep = (obj.list("sep")[1] as Long).toInt()
                    Template(listOf(intArrayOf(cls), null, intArrayOf(sep)))
                }
                "TemplateProcessing" -> {
                    val specials = obj.obj("special_tokens")
                    Template(obj.objects("single").map { part ->
                        when {
                            part.has("Sequence") -> null
                            part.has("SpecialToken") -> specials.obj(part.obj("SpecialToken").string("id")).ints("ids")
                            else -> throw HfTokenizer.unsupported("template piece", part.map.keys.toString())
                        }
                    })
                }
                "ByteLevel" -> Template(listOf(null))
                "Sequence" -> {
                    val parts = obj.objects("processors").map(::fromJson).filter { it.numAdded() > 0 }
                    if (parts.size > 1) throw HfTokenizer.unsupported("post_processor", "Sequence of several special-token processors")
                    parts.firstOrNull() ?: Template(listOf(null))
                }
                else -> throw HfTokenizer.unsupported("post_processor", type)
            }
        }
    }

    /** A single-sequence template: null is the sequence, an IntArray a run of special-token ids. */
    private class Template(val parts: List<IntArray?>) : PostProcessor() {
        override fun numAdded(): Int = parts.filterNotNull().fold(0) { total, p -> total + p.size }
        override fun apply(ids: List<Int>): IntArray {
            val out = ArrayList<Int>()
            for (part in parts) if (part == null) out.addAll(ids) else part.forEach { out.add(it) }
            return out.toIntArray()
        }
    }
}
