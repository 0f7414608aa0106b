package com.raluedge.core

/**
 * A small JSON reader and writer (RFC 8259), enough for ralu_config.json, tokenizer.json, the conformance
 * index and checkpoint metadata, so that the core needs no library beyond the Kotlin standard library on
 * both the JVM and Android. Values map to Kotlin types: object -> Map<String, Any?> (insertion order kept),
 * array -> List<Any?>, string -> String, number -> Long when written without fraction or exponent and in
 * range, else Double, true/false -> Boolean, null -> null.
 */
object Json {
    /** The value of one JSON document; UserError naming the offset on malformed input. */
    fun parse(text: String): Any? {
        val reader = Reader(text)
        reader.skipSpace()
        val value = reader.value()
        reader.skipSpace()
        if (reader.pos != text.length) throw reader.fail("unexpected trailing characters")
        return value
    }

    /** Compact JSON text of a value built from maps, lists, strings, numbers, booleans and null. */
    fun write(value: Any?): String {
        val out = StringBuilder()
        writeTo(out, value)
        return out.toString()
    }

    private fun writeTo(out: StringBuilder, value: Any?) {
        when (value) {
            null -> out.append("null")
            is String -> writeString(out, value)
            is Boolean -> out.append(if (value) "true" else "false")
            is Double -> {
                if (value.isNaN() || value.isInfinite()) throw IllegalArgumentException("JSON cannot hold $value")
                out.append(value.toString())
            }
            is Float -> writeTo(out, value.toDouble())
            is Number -> out.append(value.toLong().toString())
            is Map<*, *> -> {
                out.append('{')
                var first = true
                for ((k, v) in value) {
                    if (!first) out.append(',')
                    first = false
                    writeString(out, k.toString())
                    out.append(':')
                    writeTo(out, v)
                }
                out.append('}')
            }
            is Iterable<*> -> {
                out.append('[')
                var first = true
                for (v in value) {
                    if (!first) out.append(',')
                    first = false
                    writeTo(out, v)
                }
                out.append(']')
            }
            is IntArray -> writeTo(out, value.toList())
            is LongArray -> writeTo(out, value.toList())
            is DoubleArray -> writeTo(out, value.toList())
            else -> throw IllegalArgumentException("cannot write ${value.javaClass.name} as JSON")
        }
    }

    private fun writeString(out: StringBuilder, s: String) {
        out.append('"')
        for (ch in s) {
            when (ch) {
                '"' -> out.append("\\\"")
                '\\' -> out.append("\\\\")
                '\n' -> out.append("\\n")
                '\r' -> out.append("\\r")
                '\t' -> out.append("\\t")
                else -> if (ch < ' ') out.append(String.format("\\u%04x", ch - '\u0000')) else out.append(ch)
            }
        }
        out.append('"')
    }

    private class Reader(val text: String) {
        var pos = 0

        fun fail(problem: String): UserError = UserError("malformed JSON at character $pos: $problem")

        fun skipSpace() {
            while (pos < text.length) {
                val c = text[pos]
                if (c == ' ' || c == '\n' || c == '\r' || c == '\t') pos++ else break
            }
        }

        fun value(): Any? {
            if (pos >= text.length) throw fail("unexpected end of input")
            return when (text[pos]) {
                '{' -> obj()
                '[' -> array()
                '"' -> string()
                't' -> literal("true", true)
                'f' -> literal("false", false)
                'n' -> literal("null", null)
                else -> number()
            }
        }

        private fun literal(word: String, result: Any?): Any? {
            if (!text.startsWith(word, pos)) throw fail("expected $word")
            pos += word.length
            return result
        }

        private fun obj(): Map<String, Any?> {
            val out = LinkedHashMap<String, Any?>()
            pos++
            skipSpace()
            if (pos < text.length && text[pos] == '}') { pos++; return out }
            while (true) {
                skipSpace()
                if (pos >= text.length || text[pos] != '"') throw fail("expected a string key")
                val key = string()
                skipSpace()
                if (pos >= text.length || text[pos] != ':') throw fail("expected ':'")
                pos++
                skipSpace()
                out[key] = value()
                skipSpace()
                if (pos >= text.length) throw fail("unterminated object")
                val c = text[pos++]
                if (c == '}') return out
                if (c != ',') throw fail("expected ',' or '}'")
            }
        }

        private fun array(): List<Any?> {
            val out = ArrayList<Any?>()
            pos++
            skipSpace()
            if (pos < text.length && text[pos] == ']') { pos++; return out }
            while (true) {
                skipSpace()
                out.add(value())
                skipSpace()
                if (pos >= text.length) throw fail("unterminated array")
                val c = text[pos++]
                if (c == ']') return out
                if (c != ',') throw fail("expected ',' or ']'")
            }
        }

        private fun string(): String {
            pos++
            val out = StringBuilder()
            while (true) {
                if (pos >= text.length) throw fail("unterminated string")
                val c = text[pos++]
                when {
                    c == '"' -> return out.toString()
                    c == '\\' -> {
                        if (pos >= text.length) throw fail("unterminated escape")
                        when (val e = text[pos++]) {
                            '"' -> out.append('"')
                            '\\' -> out.append('\\')
                            '/' -> out.append('/')
                            'b' -> out.append('\b')
                            'f' -> out.append('\u000C')
                            'n' -> out.append('\n')
                            'r' -> out.append('\r')
                            't' -> out.append('\t')
                            'u' -> {
                                if (pos + 4 > text.length) throw fail("short \\u escape")
                                out.append(text.substring(pos, pos + 4).toInt(16).toChar())
                                pos += 4
                            }
                            else -> throw fail("unknown escape \\$e")
                        }
                    }
                    else -> out.append(c)
                }
            }
        }

        private fun number(): Any {
            val start = pos
            if (pos < text.length && text[pos] == '-') pos++
            var integral = true
            while (pos < text.length) {
                val c = text[pos]
                if (c in '0'..'9') pos++
                else if (c == '.' || c == 'e' || c == 'E' || c == '+' || c == '-') { integral = false; pos++ }
                else break
            }
            val literal = text.substring(start, pos)
            if (literal.isEmpty() || literal == "-") throw fail("unexpected character")
            if (literal == "NaN" || literal.contains("Infinity")) throw fail("not a JSON number")
            if (integral) {
                val asLong = literal.toLongOrNull()
                if (asLong != null) return asLong
            }
            return literal.toDoubleOrNull() ?: throw fail("bad number $literal")
        }
    }
}

/**
 * Typed access to a parsed JSON object for schema readers: every accessor names the field path in its
 * UserError, so a malformed manifest says exactly which entry is wrong.
 */
class JsonObject(val map: Map<String, Any?>, val where: String) {
    fun has(key: String): Boolean = map.containsKey(key) && map[key] != null

    private fun raw(key: String): Any? {
        if (!map.containsKey(key)) throw UserError("$where lacks the field '$key'")
        return map[key]
    }

    fun string(key: String): String = raw(key) as? String ?: throw wrong(key, "a string")
    fun stringOrNull(key: String): String? = if (has(key)) string(key) else null
    fun bool(key: String): Boolean = raw(key) as? Boolean ?: throw wrong(key, "true or false")
    fun boolOr(key: String, default: Boolean): Boolean = if (has(key)) bool(key) else default
    fun double(key: String): Double = (raw(key) as? Number)?.toDouble() ?: throw wrong(key, "a number")
    fun long(key: String): Long {
        val v = raw(key)
        if (v is Long) return v
        throw wrong(key, "an integer")
    }
    fun int(key: String): Int = long(key).toInt()
    fun intOrNull(key: String): Int? = if (has(key)) int(key) else null
    fun obj(key: String): JsonObject = asObject(raw(key), "$where.$key")
    fun objOrNull(key: String): JsonObject? = if (has(key)) obj(key) else null
    fun list(key: String): List<Any?> = raw(key) as? List<Any?> ?: throw wrong(key, "a list")
    fun objects(key: String): List<JsonObject> = list(key).mapIndexed { i, v -> asObject(v, "$where.$key[$i]") }
    fun strings(key: String): List<String> = list(key).map { it as? String ?: throw wrong(key, "a list of strings") }
    fun doubles(key: String): DoubleArray =
        list(key).map { (it as? Number)?.toDouble() ?: throw wrong(key, "a list of numbers") }.toDoubleArray()
    fun ints(key: String): IntArray =
        list(key).map { (it as? Long)?.toInt() ?: throw wrong(key, "a list of integers") }.toIntArray()

    private fun wrong(key: String, what: String) = UserError("$where.$key should be $what, got ${map[key]}")

    companion object {
        fun asObject(value: Any?, where: String): JsonObject {
            @Suppress("UNCHECKED_CAST")
            val map = value as? Map<String, Any?> ?: throw UserError("$where should be an object")
            return JsonObject(map, where)
        }

        fun parse(text: String, where: String): JsonObject = asObject(Json.parse(text), where)
    }
}
