package com.raluedge.core

import kotlin.math.exp
import kotlin.math.sqrt

/**
 * What one personalization step feeds the denoiser (spec/ZO_PERSONALIZATION.md §7, §10.3, §11.1-11.2; port of
 * ralu_edge/zo/timesteps.py): the PUTS sigma range, the step's draws, the VAE posterior sample, the
 * rectified-flow noising with its velocity target, and the loss.
 */
class PutsConfig(
    val tRange: DoubleArray = doubleArrayOf(500.0, 900.0), val sigmaShift: Double? = null,
    val sigmaMin: Double? = null, val sigmaMax: Double? = null, val ddpmEquivalent: Boolean = false
) {
    init {
        if (tRange.size != 2 || !(0.0 <= tRange[0] && tRange[0] < tRange[1] && tRange[1] <= 1000.0)) {
            throw UserError("PUTS t_range ${tRange.toList()} must be [T_L, T_U) with 0 <= T_L < T_U <= 1000; the default is [500, 900)")
        }
        if ((sigmaMin == null) != (sigmaMax == null)) throw UserError("give both sigma_min and sigma_max, or neither")
        if (sigmaMin != null && !(0.0 <= sigmaMin && sigmaMin < sigmaMax!! && sigmaMax <= 1.0)) {
            throw UserError("sigma range [$sigmaMin, $sigmaMax) must satisfy 0 <= sigma_min < sigma_max <= 1")
        }
    }

    /** h used for training images of `imagePixels` pixels: sigmaShift, else sqrt(pixels / 512^2) (spec §11.2). */
    fun shiftFor(imagePixels: Int): Double = sigmaShift ?: sqrt(imagePixels / (512.0 * 512.0))

    /** [sigma_low, sigma_high) for training images of `imagePixels` pixels (spec §11.2). */
    fun sigmaRange(imagePixels: Int): DoubleArray {
        if (sigmaMin != null && sigmaMax != null) return doubleArrayOf(sigmaMin, sigmaMax)
        val h = shiftFor(imagePixels)
        return Timesteps.sigmasForDdpmTimesteps(tRange).map { Schedules.shiftSigma(it, h) }.toDoubleArray()
    }

    companion object {
        /** The ralu_edge.zo.PutsConfig.to_dict() form. */
        fun fromJson(o: JsonObject): PutsConfig {
            val sampling = o.string("sampling")
            if (sampling != "uniform" && sampling != "ddpm_equivalent") throw UserError("unknown sigma sampling '$sampling'; choose uniform or ddpm_equivalent")
            return PutsConfig(o.doubles("t_range"), if (o.has("sigma_shift")) o.double("sigma_shift") else null,
                if (o.has("sigma_min")) o.double("sigma_min") else null, if (o.has("sigma_max")) o.double("sigma_max") else null,
                sampling == "ddpm_equivalent")
        }
    }
}

/**
 * The random quantities of one step except the ZO directions (spec §10.3): the image and flip, sigma, the flow
 * noise and the VAE posterior noise, each [channels * height * width] float32 (one latent, unpacked).
 */
class StepDraw(val imageIndex: Int, val flip: Boolean, val sigma: Double, val noise: FloatArray, val posteriorNoise: FloatArray)

/** The packed tensors of one step: clean latent x0, noisy input x_sigma and velocity target noise - x0. */
class PersonalizationBatch(val x0: Tokens, val xSigma: Tokens, val target: Tokens, val sigma: Double)

object Timesteps {
    const val PURPOSE_EPOCH = "zo/epoch-permutation"
    const val PURPOSE_FLIP = "zo/flip"
    const val PURPOSE_SIGMA = "zo/sigma"
    const val PURPOSE_NOISE = "zo/noise"
    const val PURPOSE_POSTERIOR = "zo/vae-posterior"

    /** alpha-bar of SD1.5's scaled_linear DDPM schedule [1000] float32: betas = linspace(sqrt(b0), sqrt(b1))^2, cumprod(1 - beta). */
    fun ddpmAlphasCumprod(numTrainTimesteps: Int = 1000, betaStart: Double = 0.00085, betaEnd: Double = 0.012): FloatArray {
        val roots = Schedules.linspace(sqrt(betaStart), sqrt(betaEnd), numTrainTimesteps)
        val out = FloatArray(numTrainTimesteps)
        var product = 1.0f
        for (i in 0 until numTrainTimesteps) {
            val root = roots[i].toFloat()
            product *= (1.0f - root * root)
            out[i] = product
        }
        return out
    }

    /** sigma with the SNR of DDPM timestep t: 1/(1 + sqrt(a/(1 - a))), alpha-bar interpolated linearly (spec §11.2 step 1). */
    fun sigmasForDdpmTimesteps(timesteps: DoubleArray): DoubleArray {
        val alphas = ddpmAlphasCumprod()
        return DoubleArray(timesteps.size) { i ->
            val t = timesteps[i].coerceIn(0.0, (alphas.size - 1).toDouble())
            val lo = t.toInt().coerceAtMost(alphas.size - 2)
            val a = alphas[lo] + (t - lo) * (alphas[lo + 1].toDouble() - alphas[lo])
            1.0 / (1.0 + sqrt(a / (1.0 - a)))
        }
    }

    /**
     * The image a 1-based step trains on (spec §10.3 (1)): position step - 1 of the concatenated per-epoch
     * permutations, `permutationFor(epoch)` giving epoch's permutation of 0 until numImages.
     */
    fun sampleIndex(step: Int, numImages: Int, permutationFor: (Int) -> IntArray): Int {
        require(step >= 1 && numImages >= 1) { "need step >= 1 and numImages >= 1" }
        val position = step - 1
        return permutationFor(position / numImages)[position % numImages]
    }

    /**
     * The draws of 1-based step `step` for the app: one RandomSource per (purpose, step) from `randomFor`, so a
     * resumed run repeats them (values differ from numpy's, see [SeededRandom]).
     */
    fun drawStep(step: Int, numImages: Int, latentSize: Int, puts: PutsConfig, imagePixels: Int, randomFor: (String, Long) -> RandomSource): StepDraw {
        val index = sampleIndex(step, numImages) { epoch -> randomFor(PURPOSE_EPOCH, epoch.toLong()).permutation(numImages) }
        val flip = randomFor(PURPOSE_FLIP, step.toLong()).uniform(0.0, 1.0, 1)[0] < 0.5
        val sigmaRandom = randomFor(PURPOSE_SIGMA, step.toLong())
        val sigma = if (puts.ddpmEquivalent && puts.sigmaMin == null) {
            val t = sigmaRandom.uniform(puts.tRange[0], puts.tRange[1], 1)
            Schedules.shiftSigma(sigmasForDdpmTimesteps(t)[0], puts.shiftFor(imagePixels))
        } else {
            val range = puts.sigmaRange(imagePixels)
            sigmaRandom.uniform(range[0], range[1], 1)[0]
        }
        fun normals(purpose: String) = randomFor(purpose, step.toLong()).standardNormal(latentSize).let { d -> FloatArray(d.size) { d[it].toFloat() } }
        return StepDraw(index, flip, sigma, normals(PURPOSE_NOISE), normals(PURPOSE_POSTERIOR))
    }

    /** Normalised latent (mean + exp(logvar/2) * n - shift) * scale, logvar clamped to [-30, 20], float32 (spec §10.1, §11.1). */
    fun posteriorLatent(moments: FloatArray, noise: FloatArray, shiftFactor: Double, scalingFactor: Double): FloatArray {
        val size = moments.size / 2
        require(noise.size == size) { "posterior noise has ${noise.size} values, expected $size" }
        val shift = shiftFactor.toFloat()
        val scale = scalingFactor.toFloat()
        return FloatArray(size) { i ->
            val std = exp((0.5f * moments[size + i].coerceIn(-30.0f, 20.0f)).toDouble()).toFloat()
            (moments[i] + std * noise[i] - shift) * scale
        }
    }

    /**
     * The packed batch of one step (spec §11.1): x0 from the (image, flip) moments [2C, h, w], then x_sigma =
     * (1 - sigma) x0 + sigma * noise and target = noise - x0, in float32, packed 2x2 like the sampler's tokens.
     */
    fun personalizationBatch(moments: FloatArray, channels: Int, height: Int, width: Int, draw: StepDraw, shiftFactor: Double, scalingFactor: Double): PersonalizationBatch {
        val x0 = TokenOps.pack(posteriorLatent(moments, draw.posteriorNoise, shiftFactor, scalingFactor), channels, height, width)
        val noise = TokenOps.pack(draw.noise, channels, height, width)
        val s = draw.sigma.toFloat()
        val xSigma = FloatArray(x0.data.size) { (1.0f - s) * x0.data[it] + s * noise.data[it] }
        val target = FloatArray(x0.data.size) { noise.data[it] - x0.data[it] }
        return PersonalizationBatch(x0, Tokens(x0.length, x0.channels, xSigma), Tokens(x0.length, x0.channels, target), draw.sigma)
    }

    /** mean((velocity - target)^2) accumulated in float64 (spec Algorithm Z1 LOSS). */
    fun mseLoss(velocity: FloatArray, target: FloatArray): Double {
        require(velocity.size == target.size) { "velocity has ${velocity.size} values, target ${target.size}" }
        var sum = 0.0
        for (i in velocity.indices) { val d = velocity[i].toDouble() - target[i]; sum += d * d }
        return sum / velocity.size
    }
}
