package com.raluedge.demo

import android.content.ContentValues
import android.content.Context
import android.graphics.Bitmap
import android.graphics.BitmapFactory
import android.graphics.ImageDecoder
import android.net.Uri
import android.os.Build
import android.os.Environment
import android.provider.MediaStore
import com.raluedge.core.PngText
import com.raluedge.core.RgbImage
import com.raluedge.core.UserError
import java.io.ByteArrayOutputStream
import java.io.File

/** Conversions between Android bitmaps and the core's planar RGB images, and saving PNGs with their parameters. */
object Images {
    /** The picked photo resized straight to width x height (as the reference's dataset does: no crop), in [-1, 1]. */
    fun load(context: Context, uri: Uri, width: Int, height: Int): RgbImage {
        val bitmap = try {
            if (Build.VERSION.SDK_INT >= 28) {
                ImageDecoder.decodeBitmap(ImageDecoder.createSource(context.contentResolver, uri)) { decoder, _, _ ->
                    decoder.allocator = ImageDecoder.ALLOCATOR_SOFTWARE
                }
            } else {
                context.contentResolver.openInputStream(uri).use { BitmapFactory.decodeStream(it) }
            }
        } catch (e: Exception) {
            null
        } ?: throw UserError("$uri could not be read as an image; pick a JPEG or PNG photo")
        return fromBitmap(Bitmap.createScaledBitmap(bitmap, width, height, true))
    }

    fun fromBitmap(bitmap: Bitmap): RgbImage {
        val w = bitmap.width
        val h = bitmap.height
        val argb = IntArray(w * h)
        bitmap.getPixels(argb, 0, w, 0, 0, w, h)
        val plane = w * h
        val pixels = FloatArray(3 * plane)
        for (i in 0 until plane) {
            pixels[i] = ((argb[i] shr 16) and 0xFF) / 127.5f - 1f
            pixels[plane + i] = ((argb[i] shr 8) and 0xFF) / 127.5f - 1f
            pixels[2 * plane + i] = (argb[i] and 0xFF) / 127.5f - 1f
        }
        return RgbImage(h, w, pixels)
    }

    fun toBitmap(image: RgbImage): Bitmap =
        Bitmap.createBitmap(image.toArgb(), image.width, image.height, Bitmap.Config.ARGB_8888)

    /** The image mirrored left-right (the training data's horizontal flip, spec/ZO_PERSONALIZATION.md §2). */
    fun flipped(image: RgbImage): RgbImage {
        val out = FloatArray(image.pixels.size)
        for (c in 0 until 3) for (y in 0 until image.height) for (x in 0 until image.width) {
            out[(c * image.height + y) * image.width + x] = image.pixels[(c * image.height + y) * image.width + image.width - 1 - x]
        }
        return RgbImage(image.height, image.width, out)
    }

    fun pngBytes(bitmap: Bitmap, parameters: String?): ByteArray {
        val bytes = ByteArrayOutputStream().also { bitmap.compress(Bitmap.CompressFormat.PNG, 100, it) }.toByteArray()
        return if (parameters == null) bytes else PngText.withText(bytes, "parameters", parameters)
    }

    /** Writes a PNG file atomically (temporary name, then rename). */
    fun savePng(file: File, bitmap: Bitmap) {
        val tmp = File(file.parentFile, ".${file.name}.tmp")
        tmp.writeBytes(pngBytes(bitmap, null))
        if (!tmp.renameTo(file)) throw UserError("could not write $file; free some storage")
    }

    fun loadPng(file: File): RgbImage =
        fromBitmap(BitmapFactory.decodeFile(file.absolutePath) ?: throw UserError("${file.name} is unreadable; start the personalization again"))

    /** Saves to the gallery (Pictures/RaluEdge) with the generation parameters in the PNG's "parameters" text chunk. */
    fun saveToGallery(context: Context, bitmap: Bitmap, name: String, parameters: String): Uri {
        val values = ContentValues().apply {
            put(MediaStore.Images.Media.DISPLAY_NAME, "$name.png")
            put(MediaStore.Images.Media.MIME_TYPE, "image/png")
            put(MediaStore.Images.Media.DESCRIPTION, parameters)
            if (Build.VERSION.SDK_INT >= 29) {
                put(MediaStore.Images.Media.RELATIVE_PATH, Environment.DIRECTORY_PICTURES + "/RaluEdge")
                put(MediaStore.Images.Media.IS_PENDING, 1)
            }
        }
        val resolver = context.contentResolver
        val uri = resolver.insert(MediaStore.Images.Media.EXTERNAL_CONTENT_URI, values)
            ?: throw UserError("the gallery refused the image; check that shared storage is available")
        resolver.openOutputStream(uri)?.use { it.write(pngBytes(bitmap, parameters)) }
            ?: throw UserError("the gallery refused the image; check that shared storage is available")
        if (Build.VERSION.SDK_INT >= 29) {
            values.clear()
            values.put(MediaStore.Images.Media.IS_PENDING, 0)
            resolver.update(uri, values, null, null)
        }
        return uri
    }
}
