"""Renoising at RALU stage transitions (spec/RALU.md §7.1–7.2): block-correlated noise in O(N) closed form,
the transition x ← a·x + b·z, and the Tweedie estimate x̂₀ = x − σ·v. Pure NumPy; every random draw comes
from a passed-in `np.random.Generator`. Depends on numpy only."""

from __future__ import annotations

import math

import numpy as np


def correlation_alpha(c: float) -> float:
    """α = 1 − √(1 − 4c), the weight that gives groups of 4 the covariance I − cJ (spec/RALU.md §7.2).

    c must lie in [0, 1/4] (Z ≥ 2), where I − cJ is positive semi-definite."""
    if not 0.0 <= c <= 0.25:
        raise ValueError(f"c = {c} is outside [0, 1/4]; I − cJ would not be a covariance")
    return 1.0 - math.sqrt(1.0 - 4.0 * c)


def correlated_noise(
    shape: tuple[int, int, int], groups: np.ndarray, c: float, rng: np.random.Generator
) -> np.ndarray:
    """Noise z [B, L, C] float32: i.i.d. N(0, 1) except that within each group of 4 tokens, independently per
    batch item and channel, Cov(z) = I − cJ (spec/RALU.md §7.2).

    groups: [G, 4] int64 disjoint sequence indices. Draws ε ~ N(0, I) (float64) and, per group, subtracts
    α·mean(ε) from the 4 members: O(B·L·C) instead of the reference's dense N×N Cholesky."""
    noise = rng.standard_normal(shape)  # [B, L, C] float64
    groups = np.asarray(groups, dtype=np.int64).reshape(-1, 4)
    if groups.size:
        members = noise[:, groups]  # [B, G, 4, C]
        noise[:, groups] = members - correlation_alpha(c) * members.mean(axis=2, keepdims=True)
    return noise.astype(np.float32)


def renoise(tokens: np.ndarray, noise: np.ndarray, a: float, b: float) -> np.ndarray:
    """a·tokens + b·noise: [B, L, C] float32 (spec/RALU.md §7.1; a multiplies the latent, b the noise)."""
    return (np.float32(a) * tokens + np.float32(b) * noise).astype(np.float32)


def tweedie_x0(tokens: np.ndarray, velocity: np.ndarray, sigma: float) -> np.ndarray:
    """Clean estimate x̂₀ = x − σ·v: [B, L, C] float32 (spec/RALU.md §4, Algorithm R2 line 1).

    With rectified flow x_σ = (1−σ)·x₀ + σ·ε and v = ε − x₀, exact for the true velocity."""
    return (tokens - np.float32(sigma) * velocity).astype(np.float32)
