package com.raluedge.core

import kotlin.math.cos
import kotlin.math.pow
import kotlin.math.sin

/** RoPE tables [length, headDim] float32, row-major (the denoiser graph's rope_cos / rope_sin inputs). */
class RopeTables(val length: Int, val headDim: Int, val cos: FloatArray, val sin: FloatArray)

/**
 * Rotary position tables computed on the host (spec/RALU.md §9.1; port of ralu_edge/rope.py, itself diffusers'
 * FluxPosEmbed): for axis a of dimension d_a the angles are pos_a * theta^(-2j/d_a), j < d_a/2, each repeated
 * twice in place; axes concatenated. Ids are rounded to float32 first, angles computed in float64.
 */
object Rope {
    fun tables(positions: Positions, axesDim: IntArray, theta: Double): RopeTables {
        require(axesDim.size == 3) { "positions have 3 columns but axesDim is ${axesDim.toList()}" }
        val headDim = axesDim.sum()
        val cosOut = FloatArray(positions.length * headDim)
        val sinOut = FloatArray(positions.length * headDim)
        var offset = 0
        for ((axis, dim) in axesDim.withIndex()) {
            require(dim % 2 == 0) { "RoPE axis dimensions must be even, got ${axesDim.toList()}" }
            val frequencies = DoubleArray(dim / 2) { j -> 1.0 / theta.pow((2 * j).toDouble() / dim) }
            for (i in 0 until positions.length) {
                val pos = positions.data[i * 3 + axis].toFloat().toDouble()
                for (j in frequencies.indices) {
                    val angle = pos * frequencies[j]
                    val c = cos(angle).toFloat()
                    val s = sin(angle).toFloat()
                    val at = i * headDim + offset + 2 * j
                    cosOut[at] = c; cosOut[at + 1] = c
                    sinOut[at] = s; sinOut[at + 1] = s
                }
            }
            offset += dim
        }
        return RopeTables(positions.length, headDim, cosOut, sinOut)
    }

    /** Tables for the denoiser graph: text rows first (ids all zero for FLUX), then the image tokens. */
    fun withText(textLength: Int, imagePositions: Positions, axesDim: IntArray, theta: Double): RopeTables =
        tables(Positions.concat(Positions.zeros(textLength), imagePositions), axesDim, theta)
}
