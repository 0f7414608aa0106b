"""Noise-level schedules: RALU's per-stage shifted sigma grids and stage transitions (spec/RALU.md §7.1,
§7.3), the plain FLUX-style baselines, and the NT-Matching densities and objective (§7.4, §9.5).

Every schedule is a float64 array of noise levels sigma = 1 - t, decreasing within a stage. The paper's time
t (0 = noise, 1 = clean) appears only where the spec states a formula in t (densities, stage ends e, starts s).
Pure NumPy: must not import scipy, torch or anything outside numpy (the solver that needs scipy is
`ralu_edge.ntfit`)."""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np


def shift_sigmas(sigmas: np.ndarray, shift: float) -> np.ndarray:
    """Shifted noise levels h·σ/(1 + (h−1)·σ): same shape as `sigmas`, float64 (spec/RALU.md §7.3 line 4)."""
    sigmas = np.asarray(sigmas, dtype=np.float64)
    return shift * sigmas / (1.0 + (shift - 1.0) * sigmas)


def unshift_sigmas(sigmas: np.ndarray, shift: float) -> np.ndarray:
    """Inverse of `shift_sigmas`, σ/(h − (h−1)·σ): same shape, float64 (spec/RALU.md §7.3 line 2)."""
    sigmas = np.asarray(sigmas, dtype=np.float64)
    return sigmas / (shift - (shift - 1.0) * sigmas)


def stage_sigmas(start_t: float, end_t: float, shift: float, num_steps: int) -> np.ndarray:
    """Noise levels of one RALU stage: [num_steps + 1] float64, decreasing (spec/RALU.md §7.3, Algorithm R6).

    The stage runs from t = start_t to t = end_t; sigma = 1 - t. The points are linear in the unshifted
    variable u and then shifted by `shift` (h_k), so they sit at the quantiles of the truncated shifted
    density of §7.4. Ends at sigma = 1 - end_t, which is 0 only for the last stage (end_t = 1)."""
    sigma_a, sigma_b = 1.0 - start_t, 1.0 - end_t
    u_a = float(unshift_sigmas(np.float64(sigma_a), shift))
    u_b = float(unshift_sigmas(np.float64(sigma_b), shift))
    return shift_sigmas(np.linspace(u_a, u_b, num_steps + 1), shift)


class Transition(NamedTuple):
    """Renoising constants of one stage transition (spec/RALU.md §7.1): x ← a·Up(x) + b·z, restart at t = s."""

    s: float  # start time t of the next stage
    a: float  # weight of the upsampled latent (the reference calls it `betas`)
    b: float  # weight of the correlated noise, 1 − s (the reference calls it `alphas`)


def transition(end_t: float, z: float) -> Transition:
    """The (s, a, b) that follow a stage ending at t = end_t, for Z = 1/√c (spec/RALU.md §7.1, Algorithm R1 l.2).

    s = e/(Z(1−e)+e), a = 1/(Z(1−e)+e), b = 1 − s."""
    denominator = z * (1.0 - end_t) + end_t
    s = end_t / denominator
    return Transition(s=s, a=1.0 / denominator, b=1.0 - s)


def stage_starts(ends_t: Sequence[float], z: float) -> list[float]:
    """Start times [s₁ = 0, s₂, …, s_K] in t of every stage, from the stage ends e and Z (spec/RALU.md §7.1)."""
    return [0.0] + [transition(e, z).s for e in ends_t[:-1]]


def flux_calculate_shift(
    image_seq_len: int,
    base_seq_len: int = 256,
    max_seq_len: int = 4096,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
) -> float:
    """FLUX's resolution-dependent μ, linear in the image token count (diffusers `calculate_shift`)."""
    slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    intercept = base_shift - slope * base_seq_len
    return image_seq_len * slope + intercept


def flux_baseline_sigmas(
    num_steps: int,
    image_seq_len: int,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
    base_seq_len: int = 256,
    max_seq_len: int = 4096,
) -> np.ndarray:
    """FLUX's plain schedule: [num_steps + 1] float64, decreasing, ending in 0.

    Reproduces diffusers' FluxPipeline + FlowMatchEulerDiscreteScheduler (use_dynamic_shifting=True,
    time_shift_type="exponential") value for value: σ = linspace(1, 1/N, N) in float32, then
    σ' = e^μ/(e^μ + (1/σ − 1)) with μ = `flux_calculate_shift(image_seq_len, …)`, evaluated in float32 as the
    scheduler does, and the terminal 0 appended. The float32 values are returned widened to float64."""
    mu = flux_calculate_shift(image_seq_len, base_seq_len, max_seq_len, base_shift, max_shift)
    sigmas = np.linspace(1.0, 1.0 / num_steps, num_steps).astype(np.float32)
    # Same operation order and dtypes as the scheduler's `_time_shift_exponential` (Python float ∘ float32).
    exp_mu = np.float32(math.exp(mu))
    shifted = exp_mu / (exp_mu + (np.float32(1.0) / sigmas - np.float32(1.0)))
    return np.append(shifted.astype(np.float32), np.float32(0.0)).astype(np.float64)


def static_shift_sigmas(num_steps: int, shift: float) -> np.ndarray:
    """A statically shifted schedule: [num_steps + 1] float64, h·σ/(1+(h−1)σ) of linspace(1, 1/N, N), then 0.

    FLUX-style spacing with a fixed shift (h_ori = 3 is the base model's own, §7.3); equals one RALU stage
    from t = 0 to t = 1, `stage_sigmas(0, 1, shift, num_steps)`. For diffusers' SD3 default, whose last
    nonzero sigma is far smaller (0.0089 vs 0.1 at N = 28, h = 3), use `sd3_baseline_sigmas`."""
    sigmas = np.linspace(1.0, 1.0 / num_steps, num_steps)
    return np.append(shift_sigmas(sigmas, shift), 0.0)


def sd3_baseline_sigmas(num_steps: int, shift: float = 3.0, num_train_timesteps: int = 1000) -> np.ndarray:
    """SD3's plain schedule: [num_steps + 1] float64, decreasing, ending in 0.

    Reproduces diffusers' StableDiffusion3Pipeline + FlowMatchEulerDiscreteScheduler(shift) defaults
    (no dynamic shifting, no custom sigmas): the scheduler's float32 training sigmas give σ_min = shifted
    1/num_train_timesteps; N points linear from 1 to σ_min are shifted *again* (a diffusers quirk), rounded
    to float32, and 0 appended."""
    train_sigma = np.float32(1.0) / np.float32(num_train_timesteps)
    sigma_min = float(np.float32(shift) * train_sigma / (np.float32(1.0) + np.float32(shift - 1.0) * train_sigma))
    sigma_max = float(np.float32(shift) / (np.float32(1.0) + np.float32(shift - 1.0)))
    timesteps = np.linspace(sigma_max * num_train_timesteps, sigma_min * num_train_timesteps, num_steps)
    sigmas = shift_sigmas(timesteps / num_train_timesteps, shift).astype(np.float32)
    return np.append(sigmas, np.float32(0.0)).astype(np.float64)


def shifted_time_pdf(times: np.ndarray, shift: float) -> np.ndarray:
    """Density of the shifted timestep on t ∈ [0, 1], f_h(t) = h/(1+(h−1)t)²: same shape, float64 (§7.4)."""
    times = np.asarray(times, dtype=np.float64)
    return shift / (1.0 + (shift - 1.0) * times) ** 2


def shifted_time_cdf(times: np.ndarray, shift: float) -> np.ndarray:
    """Distribution function F_h(t) = h·t/(1+(h−1)t): same shape, float64 (spec/RALU.md §7.4)."""
    times = np.asarray(times, dtype=np.float64)
    return shift * times / (1.0 + (shift - 1.0) * times)


def truncated_time_pdf(times: np.ndarray, shift: float, start_t: float, end_t: float) -> np.ndarray:
    """f_h restricted to [start_t, end_t] (inclusive) and renormalised, 0 elsewhere: same shape, float64 (§7.4)."""
    times = np.asarray(times, dtype=np.float64)
    mass = float(shifted_time_cdf(np.float64(end_t), shift) - shifted_time_cdf(np.float64(start_t), shift))
    inside = (times >= start_t) & (times <= end_t)
    return np.where(inside, shifted_time_pdf(times, shift) / mass, 0.0)


def target_time_density(
    times: np.ndarray, ends_t: Sequence[float], starts_t: Sequence[float], base_shift: float = 3.0
) -> np.ndarray:
    """P_target: the base schedule's density plus the re-traversed intervals [s_{k+1}, e_k] (§7.4).

    times: [T] float64 in [0, 1]. ends_t: e (K values, last 1.0). starts_t: s (K values, first 0).
    base_shift: h_ori (3.0 for FLUX.1-dev and SD3). Returns [T] float64."""
    density = shifted_time_pdf(times, base_shift)
    total_weight = 1.0
    for k in range(len(ends_t) - 1):
        weight = ends_t[k] - starts_t[k + 1]
        density = density + weight * truncated_time_pdf(times, base_shift, starts_t[k + 1], ends_t[k])
        total_weight += weight
    return density / total_weight


def actual_time_density(
    times: np.ndarray,
    num_steps: Sequence[int],
    starts_t: Sequence[float],
    ends_t: Sequence[float],
    shifts: Sequence[float],
) -> np.ndarray:
    """P: the step-count-weighted mixture of each stage's truncated shifted density (§7.4). [T] float64."""
    density = np.zeros_like(np.asarray(times, dtype=np.float64))
    for n, s, e, h in zip(num_steps, starts_t, ends_t, shifts):
        density = density + n * truncated_time_pdf(times, h, s, e)
    return density / float(sum(num_steps))


def js_distance(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen–Shannon distance (√ of the divergence, natural log) of two non-negative vectors [T], each
    normalised to sum 1 first; equals `scipy.spatial.distance.jensenshannon(p, q)` (spec/RALU.md §9.5)."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    p = p / p.sum()
    q = q / q.sum()
    m = (p + q) / 2.0
    divergence = _relative_entropy_sum(p, m) + _relative_entropy_sum(q, m)
    return float(np.sqrt(divergence / 2.0))


def _relative_entropy_sum(x: np.ndarray, y: np.ndarray) -> float:
    """Σ x·log(x/y) with 0·log 0 = 0, like scipy.special.rel_entr summed (y > 0 wherever x > 0 here)."""
    positive = x > 0
    return float(np.sum(x[positive] * np.log(x[positive] / y[positive])))


NT_TIME_GRID = np.linspace(0.0, 1.0, 1000)
"""The 1000-point grid on which NT-Matching compares densities (spec/RALU.md §9.5, Algorithm R7 line 1)."""


def nt_objective(
    params: Sequence[float],
    num_steps: Sequence[int],
    ends_t: Sequence[float],
    base_shift: float = 3.0,
    times: np.ndarray | None = None,
) -> float:
    """JS distance between the target and actual timestep densities (spec/RALU.md §9.5, Algorithm R7 l.2–6).

    params: (h₁, …, h_K, Z). num_steps: per-stage N. ends_t: e with e_K = 1. times: the comparison grid,
    `NT_TIME_GRID` when None. Returns a float ≥ 0."""
    times = NT_TIME_GRID if times is None else times
    shifts, z = list(params[:-1]), float(params[-1])
    starts_t = stage_starts(ends_t, z)
    target = target_time_density(times, ends_t, starts_t, base_shift)
    actual = actual_time_density(times, num_steps, starts_t, ends_t, shifts)
    return js_distance(target, actual)
