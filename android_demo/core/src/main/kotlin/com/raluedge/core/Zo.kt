package com.raluedge.core

import kotlin.math.abs
import kotlin.math.pow
import kotlin.math.sqrt

/**
 * The zeroth-order optimizer of ZOODiP-style Textual Inversion (spec/ZO_PERSONALIZATION.md §4-§6, §8; port of
 * ralu_edge/zo/estimator.py, subspace.py and optimizer.py): one-sided RGE over n + 1 queries, the Subspace
 * Gradient projection, ZOAdam (eps 1e-3, no weight decay) and the SG refresh every tau steps. theta is one float32
 * vector, the concatenation of every trained row across text encoders (§11.4). The perturbation directions are an
 * input, so a step is a function of (state, directions, losses): tests feed the recorded ones, the app draws
 * them from a [SeededRandom] per (seed, "zo/directions", step). The reference's fp16 emulation is not ported.
 */
enum class GradNormalization { REFERENCE, PAPER }

class ZoConfig(
    val lr: Double = 1e-2, val mu: Double = 1e-3, val n: Int = 2, val tau: Int = 128, val nu: Double = 1e-3,
    val beta1: Double = 0.9, val beta2: Double = 0.999, val adamEps: Double = 1e-3,
    val gradNormalization: GradNormalization = GradNormalization.REFERENCE, val subspaceGradient: Boolean = true
) {
    init {
        for ((name, value) in listOf("lr" to lr, "mu" to mu, "adam_eps" to adamEps)) {
            if (!(value > 0.0) || value.isInfinite()) throw UserError("ZO $name = $value must be a positive number")
        }
        if (n < 1) throw UserError("ZO n = $n must be a positive integer (queries per step; default 2)")
        if (tau < 2) throw UserError("ZO tau = $tau must be an integer >= 2 (SG history length; default 128)")
        if (!(nu > 0.0 && nu < 1.0)) throw UserError("ZO nu = $nu must lie in (0, 1) (default 1e-3)")
        if (!(beta1 >= 0.0 && beta1 < 1.0) || !(beta2 >= 0.0 && beta2 < 1.0)) throw UserError("ZO betas must lie in [0, 1)")
    }

    /** The ralu_edge.zo.ZOConfig.to_dict() form (for checkpoints and the conformance index). */
    fun toJson(): Map<String, Any?> = linkedMapOf(
        "lr" to lr, "mu" to mu, "n" to n.toLong(), "tau" to tau.toLong(), "nu" to nu, "beta1" to beta1, "beta2" to beta2,
        "adam_eps" to adamEps, "grad_normalization" to (if (gradNormalization == GradNormalization.REFERENCE) "reference" else "paper"),
        "subspace_gradient" to subspaceGradient, "emulate_fp16_state" to false
    )

    companion object {
        fun fromJson(o: JsonObject): ZoConfig {
            if (o.boolOr("emulate_fp16_state", false)) throw UserError("ZO emulate_fp16_state is a desktop parity option; the app runs float32 state")
            val normalization = when (val v = o.string("grad_normalization")) {
                "reference" -> GradNormalization.REFERENCE
                "paper" -> GradNormalization.PAPER
                else -> throw UserError("unknown gradient normalization '$v'; choose reference or paper")
            }
            return ZoConfig(o.double("lr"), o.double("mu"), o.int("n"), o.int("tau"), o.double("nu"), o.double("beta1"),
                o.double("beta2"), o.double("adam_eps"), normalization, o.bool("subspace_gradient"))
        }
    }
}

/**
 * Everything a run needs to continue (spec §11.5): theta, Adam moments m, v [dim]; the SG ring buffer [tau * dim];
 * the projection P [rank * dim]; the counters and the base seed. Immutable: [Zo.step] returns a new state.
 */
class ZoState(
    val theta: FloatArray, val adamM: FloatArray, val adamV: FloatArray, val tau: Int, val sgBuffer: FloatArray,
    val sgProj: FloatArray, val sgRank: Int, val step: Int, val adamStep: Int, val sgWriteIndex: Int, val sgFillCount: Int,
    val seed: Long
) {
    val dim: Int get() = theta.size

    /** dim - rows(P): the dimensions the gradient normaliser counts (spec §4). */
    val dEff: Int get() = dim - sgRank

    init {
        require(adamM.size == dim && adamV.size == dim && sgBuffer.size == tau * dim && sgProj.size == sgRank * dim && sgRank < dim) {
            "inconsistent ZO state shapes: dim $dim, tau $tau, rank $sgRank"
        }
        require(sgWriteIndex in 0 until tau && sgFillCount in 0..tau && step >= 0 && adamStep >= 0) { "inconsistent ZO state counters" }
    }

    /** The same state with another projection (used by tests to continue from a recorded P). */
    fun withProjection(proj: FloatArray, rank: Int): ZoState =
        ZoState(theta, adamM, adamV, tau, sgBuffer, proj, rank, step, adamStep, sgWriteIndex, sgFillCount, seed)
}

/** What one step did (spec §13: log the loss and norm of theta). loss is L0, the loss at theta before the update. */
class ZoStepInfo(
    val step: Int, val loss: Double, val losses: DoubleArray, val gradient: DoubleArray, val gradNorm: Double,
    val thetaNorm: Double, val dEff: Int, val sgRefreshed: Boolean, val sgRank: Int
)

object Zo {
    const val PURPOSE_DIRECTIONS = "zo/directions"

    /** Step-0 state (Algorithm Z1 line 1): theta = theta0 [dim], m = v = 0, an empty history, no projection. */
    fun initState(theta0: FloatArray, config: ZoConfig, seed: Long): ZoState {
        require(theta0.all { !it.isNaN() && !it.isInfinite() }) { "the initial embedding contains NaN or infinity" }
        val dim = theta0.size
        return ZoState(theta0.copyOf(), FloatArray(dim), FloatArray(dim), config.tau, FloatArray(config.tau * dim),
            FloatArray(0), 0, 0, 0, 0, 0, seed)
    }

    /** Divisor of sum c_i e_i (spec §4 step 3): n * sqrt((dEff + n - 1)/n) (reference code) or n (paper). */
    fun gradientNormalizer(n: Int, dEff: Int, normalization: GradNormalization): Double {
        require(n >= 1 && dEff >= 1) { "need n >= 1 and dEff >= 1, got n = $n, dEff = $dEff" }
        return if (normalization == GradNormalization.REFERENCE) n * sqrt((dEff + n - 1).toDouble() / n) else n.toDouble()
    }

    /** Loss arguments of one step: row 0 = theta, row i = theta + float32(mu) * e_i, each from the master (spec §8). */
    fun queryPoints(theta: FloatArray, directions: FloatArray, mu: Double): Array<FloatArray> {
        val dim = theta.size
        val n = directions.size / dim
        val muF = mu.toFloat()
        return Array(n + 1) { row -> if (row == 0) theta.copyOf() else FloatArray(dim) { theta[it] + muF * directions[(row - 1) * dim + it] } }
    }

    /** g = sum_i ((L_i - L_0)/mu) e_i / normalizer [dim] float64 (spec §4). losses: [n + 1]; directions: [n * dim]. */
    fun rgeGradient(losses: DoubleArray, directions: FloatArray, mu: Double, dEff: Int, normalization: GradNormalization): DoubleArray {
        val n = losses.size - 1
        val dim = directions.size / n
        val slopes = DoubleArray(n) { (losses[it + 1] - losses[0]) / mu }
        val divisor = gradientNormalizer(n, dEff, normalization)
        return DoubleArray(dim) { d ->
            var sum = 0.0
            for (i in 0 until n) sum += slopes[i] * directions[i * dim + d]
            sum / divisor
        }
    }

    /** g - (g P^T) P [dim] float64: the estimate without its components along the rows of P (Algorithm Z2 line 1). */
    fun projectOut(gradient: DoubleArray, proj: FloatArray, rank: Int): DoubleArray {
        val dim = gradient.size
        val out = gradient.copyOf()
        for (r in 0 until rank) {
            var coefficient = 0.0
            for (d in 0 until dim) coefficient += proj[r * dim + d] * gradient[d]
            for (d in 0 until dim) out[d] -= coefficient * proj[r * dim + d]
        }
        return out
    }

    /** ZOAdam at Adam step k >= 1 (Algorithm Z2 lines 2-4): (theta', m', v') float32, float64 inside. */
    fun adamUpdate(theta: FloatArray, gradient: DoubleArray, m: FloatArray, v: FloatArray, k: Int, config: ZoConfig): Triple<FloatArray, FloatArray, FloatArray> {
        val dim = theta.size
        val thetaOut = FloatArray(dim)
        val mOut = FloatArray(dim)
        val vOut = FloatArray(dim)
        val c1 = 1.0 - config.beta1.pow(k)
        val c2 = 1.0 - config.beta2.pow(k)
        for (d in 0 until dim) {
            val g = gradient[d]
            val mNew = config.beta1 * m[d] + (1.0 - config.beta1) * g
            val vNew = config.beta2 * v[d] + (1.0 - config.beta2) * g * g
            thetaOut[d] = (theta[d] - config.lr * (mNew / c1) / (sqrt(vNew / c2) + config.adamEps)).toFloat()
            mOut[d] = mNew.toFloat()
            vOut[d] = vNew.toFloat()
        }
        return Triple(thetaOut, mOut, vOut)
    }

    /**
     * One ZO step, number state.step + 1 (Algorithm Z1 lines 6-9): queries -> lossFn -> RGE -> SG projection ->
     * ZOAdam -> history push -> SG refresh every tau steps. `directions` [n * dim] are e_1..e_n ~ N(0, I);
     * lossFn(queries) returns the n + 1 losses (row 0 is theta), all on the same data, sigma and noise.
     */
    fun step(state: ZoState, directions: FloatArray, lossFn: (Array<FloatArray>) -> DoubleArray, config: ZoConfig): Pair<ZoState, ZoStepInfo> {
        if (state.tau != config.tau) throw UserError("the ZO state holds a ${state.tau}-step history but tau = ${config.tau}; resume with the tau the run started with")
        require(directions.size == config.n * state.dim) { "need ${config.n} x ${state.dim} directions, got ${directions.size}" }
        val step = state.step + 1
        val losses = lossFn(queryPoints(state.theta, directions, config.mu))
        require(losses.size == config.n + 1) { "lossFn returned ${losses.size} losses for ${config.n + 1} queries" }
        if (losses.any { it.isNaN() || it.isInfinite() }) {
            throw UserError("the personalization loss became ${losses.toList()}; the embedding diverged, lower the learning rate or restart")
        }
        var gradient = rgeGradient(losses, directions, config.mu, state.dEff, config.gradNormalization)
        if (config.subspaceGradient) gradient = projectOut(gradient, state.sgProj, state.sgRank)
        val (theta, m, v) = adamUpdate(state.theta, gradient, state.adamM, state.adamV, state.adamStep + 1, config)
        val buffer = state.sgBuffer.copyOf()
        System.arraycopy(theta, 0, buffer, state.sgWriteIndex * state.dim, state.dim)
        val fill = minOf(state.sgFillCount + 1, state.tau)
        var proj = state.sgProj
        var rank = state.sgRank
        val refreshed = config.subspaceGradient && step % config.tau == 0
        if (refreshed) {
            val result = Subspace.lowVarianceDirections(buffer, fill, state.dim, config.nu)
            proj = result.first
            rank = result.second
        }
        val next = ZoState(theta, m, v, state.tau, buffer, proj, rank, step, state.adamStep + 1,
            (state.sgWriteIndex + 1) % state.tau, fill, state.seed)
        var gradSquares = 0.0
        for (g in gradient) gradSquares += g * g
        var thetaSquares = 0.0
        for (t in theta) thetaSquares += t.toDouble() * t
        return Pair(next, ZoStepInfo(step, losses[0], losses, gradient, sqrt(gradSquares), sqrt(thetaSquares), next.dEff, refreshed, rank))
    }
}

/** Subspace Gradient refresh (spec §6, Algorithm Z3): PCA of the standardised history, the low-variance rows of V^T. */
object Subspace {
    private const val CONSTANT_RTOL = 1e-10

    /** Columns of history [rows, dim] centred and divided by their population std (constant columns only centred). */
    fun standardizeColumns(history: FloatArray, rows: Int, dim: Int): DoubleArray {
        val out = DoubleArray(rows * dim)
        for (d in 0 until dim) {
            var mean = 0.0
            for (r in 0 until rows) mean += history[r * dim + d]
            mean /= rows
            var variance = 0.0
            for (r in 0 until rows) { val x = history[r * dim + d] - mean; variance += x * x }
            val std = sqrt(variance / rows)
            val scale = if (std <= CONSTANT_RTOL * maxOf(abs(mean), java.lang.Double.MIN_NORMAL)) 1.0 else std
            for (r in 0 until rows) out[r * dim + d] = (history[r * dim + d] - mean) / scale
        }
        return out
    }

    /**
     * P [rank * dim] float32 with orthonormal rows and its rank: the rows of V^T (thin SVD of the standardised history)
     * beyond the first i* + 1, where i* is the first index whose cumulative explained variance exceeds 1 - nu (none:
     * the last index). Singular vectors come from a Jacobi eigendecomposition of the smaller Gram matrix; rows for
     * zero singular values (the centred history's null space) are completed by Gram-Schmidt and, as in the
     * reference, are arbitrary (spec §6: P cannot match across SVD implementations).
     */
    fun lowVarianceDirections(history: FloatArray, rows: Int, dim: Int, nu: Double): Pair<FloatArray, Int> {
        val b = standardizeColumns(history, rows, dim)
        val (variances, vt) = thinSvd(b, rows, dim)
        val total = variances.sum()
        if (!(total > 0.0)) return Pair(FloatArray(0), 0)
        var cumulative = 0.0
        var cut = variances.size - 1
        for (i in variances.indices) {
            cumulative += variances[i] / total
            if (cumulative > 1.0 - nu) { cut = i; break }
        }
        val rank = variances.size - 1 - cut
        val proj = FloatArray(rank * dim) { vt[(cut + 1) * dim + it].toFloat() }
        return Pair(proj, rank)
    }

    /** (sigma_i^2 descending, V^T rows [min(rows, dim) * dim]) of b [rows, dim]. */
    fun thinSvd(b: DoubleArray, rows: Int, dim: Int): Pair<DoubleArray, DoubleArray> {
        val k = minOf(rows, dim)
        val vt = DoubleArray(k * dim)
        val lambdas: DoubleArray
        if (rows <= dim) {
            val gram = DoubleArray(rows * rows) { val i = it / rows; val j = it % rows; var s = 0.0; for (d in 0 until dim) s += b[i * dim + d] * b[j * dim + d]; s }
            val (values, vectors) = Jacobi.eigen(gram, rows)
            lambdas = values
            val scale = maxOf(values.firstOrNull() ?: 0.0, 0.0)
            for (i in 0 until k) {
                if (values[i] <= 1e-12 * scale || values[i] <= 0.0) continue
                val sigma = sqrt(values[i])
                for (d in 0 until dim) {
                    var s = 0.0
                    for (r in 0 until rows) s += vectors[r * rows + i] * b[r * dim + d]
                    vt[i * dim + d] = s / sigma
                }
            }
        } else {
            val cov = DoubleArray(dim * dim) { val i = it / dim; val j = it % dim; var s = 0.0; for (r in 0 until rows) s += b[r * dim + i] * b[r * dim + j]; s }
            val (values, vectors) = Jacobi.eigen(cov, dim)
            lambdas = values
            for (i in 0 until k) for (d in 0 until dim) vt[i * dim + d] = vectors[d * dim + i]
        }
        orthonormalize(vt, k, dim)
        return Pair(DoubleArray(k) { maxOf(lambdas[it], 0.0) }, vt)
    }

    /** Modified Gram-Schmidt over the rows; a zero (or dependent) row is replaced by the first basis vector left. */
    private fun orthonormalize(v: DoubleArray, rows: Int, dim: Int) {
        var basis = 0
        for (i in 0 until rows) {
            var attempt = 0
            while (true) {
                for (j in 0 until i) {
                    var dot = 0.0
                    for (d in 0 until dim) dot += v[i * dim + d] * v[j * dim + d]
                    for (d in 0 until dim) v[i * dim + d] -= dot * v[j * dim + d]
                }
                var norm = 0.0
                for (d in 0 until dim) norm += v[i * dim + d] * v[i * dim + d]
                norm = sqrt(norm)
                if (norm > 1e-6 || attempt > dim) {
                    for (d in 0 until dim) v[i * dim + d] /= norm
                    break
                }
                for (d in 0 until dim) v[i * dim + d] = if (d == basis % dim) 1.0 else 0.0
                basis++
                attempt++
            }
        }
    }
}

/** Cyclic Jacobi eigendecomposition of a symmetric matrix. */
object Jacobi {
    /** (eigenvalues descending, eigenvectors as columns of an n x n row-major matrix) of the symmetric a [n * n]. */
    fun eigen(input: DoubleArray, n: Int): Pair<DoubleArray, DoubleArray> {
        val a = input.copyOf()
        val v = DoubleArray(n * n) { if (it / n == it % n) 1.0 else 0.0 }
        for (sweep in 0 until 100) {
            var off = 0.0
            var diag = 0.0
            for (i in 0 until n) for (j in 0 until n) if (i != j) off += a[i * n + j] * a[i * n + j] else diag += a[i * n + i] * a[i * n + i]
            if (off <= 1e-30 * maxOf(diag, 1e-300)) break
            for (p in 0 until n - 1) for (q in p + 1 until n) {
                val apq = a[p * n + q]
                if (apq == 0.0) continue
                val theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq)
                val t = (if (theta >= 0) 1.0 else -1.0) / (abs(theta) + sqrt(theta * theta + 1.0))
                val c = 1.0 / sqrt(t * t + 1.0)
                val s = t * c
                for (k in 0 until n) {
                    val akp = a[k * n + p]
                    val akq = a[k * n + q]
                    a[k * n + p] = c * akp - s * akq
                    a[k * n + q] = s * akp + c * akq
                }
                for (k in 0 until n) {
                    val apk = a[p * n + k]
                    val aqk = a[q * n + k]
                    a[p * n + k] = c * apk - s * aqk
                    a[q * n + k] = s * apk + c * aqk
                }
                for (k in 0 until n) {
                    val vkp = v[k * n + p]
                    val vkq = v[k * n + q]
                    v[k * n + p] = c * vkp - s * vkq
                    v[k * n + q] = s * vkp + c * vkq
                }
            }
        }
        val order = (0 until n).sortedByDescending { a[it * n + it] }
        val values = DoubleArray(n) { a[order[it] * n + order[it]] }
        val vectors = DoubleArray(n * n) { val r = it / n; val col = it % n; v[r * n + order[col]] }
        return Pair(values, vectors)
    }
}
