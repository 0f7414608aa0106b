package com.raluedge.core

import java.io.ByteArrayOutputStream
import java.nio.ByteBuffer
import java.util.zip.CRC32

/**
 * PNG text chunks: the generation parameters go into a `tEXt` chunk named "parameters" (the A1111 convention that
 * ralu-run and other tools read), inserted right after IHDR of an encoded PNG. Latin-1 text, as tEXt requires;
 * other characters become '?'.
 */
object PngText {
    private val SIGNATURE = byteArrayOf(137.toByte(), 80, 78, 71, 13, 10, 26, 10)

    fun withText(png: ByteArray, keyword: String, text: String): ByteArray {
        require(png.size > 33 && png.copyOfRange(0, 8).contentEquals(SIGNATURE)) { "not a PNG" }
        val ihdrEnd = 8 + 12 + ByteBuffer.wrap(png, 8, 4).int // signature + IHDR (length, type, data, crc)
        val data = (keyword + "\u0000" + text).toByteArray(Charsets.ISO_8859_1)
        val type = "tEXt".toByteArray(Charsets.ISO_8859_1)
        val crc = CRC32()
        crc.update(type)
        crc.update(data)
        val out = ByteArrayOutputStream(png.size + data.size + 12)
        out.write(png, 0, ihdrEnd)
        out.write(ByteBuffer.allocate(4).putInt(data.size).array())
        out.write(type)
        out.write(data)
        out.write(ByteBuffer.allocate(4).putInt(crc.value.toInt()).array())
        out.write(png, ihdrEnd, png.size - ihdrEnd)
        return out.toByteArray()
    }

    /** The tEXt chunks of a PNG as keyword -> text. */
    fun read(png: ByteArray): Map<String, String> {
        val out = LinkedHashMap<String, String>()
        var at = 8
        while (at + 8 <= png.size) {
            val length = ByteBuffer.wrap(png, at, 4).int
            val type = String(png, at + 4, 4, Charsets.ISO_8859_1)
            if (type == "tEXt") {
                val body = String(png, at + 8, length, Charsets.ISO_8859_1)
                val zero = body.indexOf('\u0000')
                if (zero > 0) out[body.substring(0, zero)] = body.substring(zero + 1)
            }
            at += 12 + length
        }
        return out
    }
}
