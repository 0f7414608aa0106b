package com.raluedge.core

import org.junit.Assert.assertEquals
import org.junit.Test
import java.awt.image.BufferedImage
import java.io.ByteArrayInputStream
import java.io.ByteArrayOutputStream
import javax.imageio.ImageIO

/** Generation parameters in a PNG tEXt chunk: readable back, and the image still decodes. */
class PngTextTest {
    @Test
    fun parametersChunkRoundTripsAndThePngStillDecodes() {
        val image = BufferedImage(4, 3, BufferedImage.TYPE_INT_RGB)
        image.setRGB(1, 1, 0xFF0000)
        val bytes = ByteArrayOutputStream().also { ImageIO.write(image, "png", it) }.toByteArray()
        val text = "a red circle\nMode: flux-4x, Seed: 7, Steps: 18, Bundle: shapes"
        val tagged = PngText.withText(bytes, "parameters", text)
        assertEquals(text, PngText.read(tagged)["parameters"])
        val decoded = ImageIO.read(ByteArrayInputStream(tagged))
        assertEquals(0xFF0000, decoded.getRGB(1, 1) and 0xFFFFFF)
    }
}
