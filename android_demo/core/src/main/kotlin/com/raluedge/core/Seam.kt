package com.raluedge.core

/**
 * The interfaces the app implements with ONNX Runtime (DESIGN.md "The one seam"): everything else in the core is
 * host-side logic over them, testable on the JVM with recorded outputs.
 */

/** Text conditioning of one prompt: the sequence encoder's states [textLength, textDim] and the pooled vector. */
class Conditioning(
    val textStates: FloatArray,
    val textLength: Int,
    val textDim: Int,
    val pooled: FloatArray,
    val guidance: Float? = null
)

/** velocity [length * channels] = denoiser(tokens [length, channels], positions [length, 3], sigma, cond); v = noise - x0. */
interface Denoiser {
    fun velocity(tokens: Tokens, positions: Positions, sigma: Float, cond: Conditioning): FloatArray
}

/** One text encoder's outputs: the sequence [length, hiddenSize] and, for CLIP-like encoders, the pooled vector. */
class TextEncoding(val sequence: FloatArray, val length: Int, val hiddenSize: Int, val pooled: FloatArray?)

/**
 * A text encoder graph with injectable embeddings (spec/ZO_PERSONALIZATION.md §11.3 (B)): input ids [maxLength];
 * positions whose id equals placeholderIds[j] take row j of placeholderEmbeds [P * hiddenSize] (P may be 0).
 */
interface TextEncoder {
    fun encode(inputIds: LongArray, placeholderIds: LongArray, placeholderEmbeds: FloatArray): TextEncoding
}

/** RGB image [3, height, width], values about [-1, 1] (the VAE decoder's output convention). */
class RgbImage(val height: Int, val width: Int, val pixels: FloatArray) {
    init {
        require(pixels.size == 3 * height * width) { "RGB image has ${pixels.size} values, expected 3 x ${height}x$width" }
    }

    /** ARGB pixels (0xAARRGGBB) of (x/2 + 0.5) clamped to [0, 1], rounded to 8 bits (FluxPipeline's output). */
    fun toArgb(): IntArray {
        val plane = height * width
        return IntArray(plane) { i ->
            var argb = 0xFF shl 24
            for (c in 0..2) {
                val v = (pixels[c * plane + i] / 2.0f + 0.5f).coerceIn(0.0f, 1.0f)
                argb = argb or (Math.round(v * 255.0f) shl (16 - 8 * c))
            }
            argb
        }
    }
}

/** The VAE decoder graph: raw latent z [channels, height, width] (not the sampler's normalised x) -> RGB. */
interface VaeDecoder {
    fun decode(rawLatent: FloatArray, channels: Int, height: Int, width: Int): RgbImage
}

/** The VAE encoder graph: RGB [3, H, W] in [-1, 1] -> raw posterior parameters [2 * channels, h, w] (mean || logvar). */
interface VaeEncoder {
    fun encode(image: RgbImage): FloatArray
}

/** Decodes a sampler-normalised latent [channels, height, width] to RGB (used by the Canny edge proxy). */
typealias LatentDecode = (FloatArray, Int, Int, Int) -> RgbImage
