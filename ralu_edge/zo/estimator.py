"""One-sided random-gradient estimation (RGE) for zeroth-order Textual Inversion (spec/ZO_PERSONALIZATION.md §4;
Algorithm Z1 lines 6–7): the n+1 query points θ, θ+μe₁, …, θ+μeₙ built fresh from the float32 master, and the
estimate ĝ = Σ cᵢeᵢ / normaliser with cᵢ = (Lᵢ − L₀)/μ. Every query of a step shares the same image, σ and
noise (common random numbers); that is the loss callable's business, not this module's.

Pure NumPy: arrays in, arrays out; directions come from a passed-in `np.random.Generator`. Depends on numpy only.

Reference quirks (spec §4, §13), and what this module does instead:
- The reference perturbs θ in place (θ += μe, evaluate, θ −= μe) in fp16, so θ drifts by a few ulps per query.
  Here every query is θ + μeᵢ computed from the untouched master (spec §8); `fp16_query_points` reproduces the
  drift for parity studies (`emulate_fp16_state`).
- The reference regenerates eᵢ from per-query torch seeds (MeZO's seed trick). Here e₁…eₙ are one [n, d] draw,
  kept for the estimate (spec §10.3 (7)): d is at most a few thousand floats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np

GradNormalization = Literal["reference", "paper"]
GRAD_NORMALIZATIONS: tuple[str, ...] = ("reference", "paper")

LossFn = Callable[[np.ndarray], np.ndarray]
"""loss_fn(queries [Q, D] float32, read-only) -> losses [Q]: the training loss at each row (Q = n + 1; row 0 is θ
itself). All rows must see the same data, σ and noise. Any float dtype; it is used in float64."""


def gradient_normalizer(n: int, d_eff: int, normalization: GradNormalization = "reference") -> float:
    """Divisor of Σ cᵢeᵢ (spec §4 step 3): n·√((d_eff + n − 1)/n) for the reference code (the project default),
    n for the paper's Eq. 3 (1/n-averaged RGE).

    d_eff = d − rows(P), the dimensions left after the Subspace Gradient projection (§6). For n = 2 and
    d_eff = 768 the reference divisor is 39.2. Under Adam the scale only matters through ε_Adam (§5, §13)."""
    if n < 1 or d_eff < 1:
        raise ValueError(f"need n ≥ 1 and d_eff ≥ 1, got n = {n}, d_eff = {d_eff}")
    if normalization == "reference":
        return n * math.sqrt((d_eff + n - 1) / n)
    if normalization == "paper":
        return float(n)
    raise ValueError(f"unknown gradient normalization {normalization!r}; choose one of {GRAD_NORMALIZATIONS}")


def perturbation_directions(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    """Directions e₁…eₙ ~ N(0, I_d): [n, dim] float32, drawn as one array (spec §10.3 (7)).

    Full-dimensional and isotropic even when a Subspace Gradient projection is active (§6: SG only projects the
    estimate)."""
    return rng.standard_normal((n, dim), dtype=np.float32)


def query_points(theta: np.ndarray, directions: np.ndarray, mu: float) -> np.ndarray:
    """The loss arguments of one step: [n + 1, d] float32, row 0 = θ, row i = θ + μ·eᵢ (spec §4 steps 1–2).

    theta: [d] float32 master; directions: [n, d]. Each row is built from the master, never add-then-subtract
    (spec §8), so θ itself is returned bit-exactly in row 0."""
    theta = np.asarray(theta, dtype=np.float32)
    perturbed = theta[None, :] + np.float32(mu) * np.asarray(directions, dtype=np.float32)
    return np.concatenate([theta[None, :], perturbed]).astype(np.float32)


def fp16_query_points(theta: np.ndarray, directions: np.ndarray, mu: float) -> tuple[np.ndarray, np.ndarray]:
    """The reference's fp16 in-place queries: ([n + 1, d] float32 holding fp16 values, drifted θ [d]).

    Emulates `zo_perturb_parameters` in `train_zoodip.py`: p = fp16(μ·eᵢ), query = fp16(θ + p), then
    θ ← fp16(query − p), which need not give θ back (spec §4 step 2, §13). Query i + 1 starts from the drifted θ
    of query i; the update then applies to the last drifted θ."""
    half = np.float16
    current = np.asarray(theta, dtype=np.float32).astype(half)
    rows = [current.astype(np.float32)]
    for direction in np.asarray(directions, dtype=np.float32).astype(half):
        step = (direction * half(mu)).astype(half)
        query = (current + step).astype(half)
        rows.append(query.astype(np.float32))
        current = (query - step).astype(half)
    return np.stack(rows), current.astype(np.float32)


def rge_gradient(losses: np.ndarray, directions: np.ndarray, mu: float, d_eff: int,
                 normalization: GradNormalization = "reference") -> np.ndarray:
    """The one-sided RGE estimate ĝ = Σ cᵢeᵢ / gradient_normalizer(n, d_eff): [d] float64 (spec §4 step 3).

    losses: [n + 1] (L₀ at θ, then Lᵢ at θ + μeᵢ); directions: [n, d]; cᵢ = (Lᵢ − L₀)/μ in float64.
    With the paper's normalisation the estimate is unbiased for a quadratic loss (the μ/2·eᵀAe term is even in e);
    with the reference's it is that unbiased estimate divided by √((d_eff + n − 1)/n)."""
    losses = np.asarray(losses, dtype=np.float64)
    directions = np.asarray(directions, dtype=np.float64)
    n = directions.shape[0]
    if losses.shape != (n + 1,):
        raise ValueError(f"need n + 1 = {n + 1} losses for {n} directions, got shape {losses.shape}")
    slopes = (losses[1:] - losses[0]) / mu  # [n] cᵢ
    return slopes @ directions / gradient_normalizer(n, d_eff, normalization)


@dataclass(frozen=True)
class RgeEstimate:
    """One estimate: gradient [d] float64, losses [n + 1] float64 (L₀ first), queries [n + 1, d] float32."""

    gradient: np.ndarray
    losses: np.ndarray
    queries: np.ndarray


def evaluate_losses(loss_fn: LossFn, queries: np.ndarray) -> np.ndarray:
    """loss_fn over all query rows at once: [Q] float64, checked for shape and finiteness.

    The rows are passed read-only so that a loss callable cannot change the optimizer's state by accident."""
    queries = np.array(queries, dtype=np.float32, copy=True)
    queries.flags.writeable = False
    losses = np.asarray(loss_fn(queries), dtype=np.float64).reshape(-1)
    if losses.shape != (queries.shape[0],):
        raise ValueError(f"loss_fn returned {losses.size} losses for {queries.shape[0]} query rows; it must "
                         "return one loss per row of its [Q, D] input")
    if not np.all(np.isfinite(losses)):
        raise FloatingPointError(f"loss_fn returned non-finite losses {losses.tolist()}; the model or the "
                                 "embedding diverged (check ‖θ‖ and the learning rate)")
    return losses


def estimate_gradient(loss_fn: LossFn, theta: np.ndarray, directions: np.ndarray, mu: float, d_eff: int,
                      normalization: GradNormalization = "reference") -> RgeEstimate:
    """One RGE estimate at θ (spec §4): build the n + 1 queries, evaluate them in one loss_fn call (so a runtime
    can batch them, B = n + 1, §10.2), and combine them with `rge_gradient`.

    theta: [d] float32; directions: [n, d] float32 from `perturbation_directions`."""
    queries = query_points(theta, directions, mu)
    losses = evaluate_losses(loss_fn, queries)
    return RgeEstimate(rge_gradient(losses, directions, mu, d_eff, normalization), losses, queries)
