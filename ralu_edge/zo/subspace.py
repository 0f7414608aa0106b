"""Subspace Gradient (SG) for zeroth-order Textual Inversion (spec/ZO_PERSONALIZATION.md §6, Algorithms Z2
line 1 and Z3): a ring buffer of the last τ iterates of θ, the PCA of that buffer after per-coordinate
standardisation, the low-variance directions P (keeping 1 − ν of the variance), and the projection
g′ = g − (g·Pᵀ)·P that removes them from the estimate before Adam. Pure NumPy; depends on numpy only.

Reference quirks (spec §6, §13), and what this module does:
- The buffer holds θ after every update, not gradients (the reference calls it `grad_buffer`). Kept.
- sklearn `StandardScaler` + `PCA(n_components=τ)` on the fp16 history. Here: float64 standardisation (ddof 0,
  zero-variance columns scaled by 1) and a thin SVD; same P up to signs and rounding.
- When τ ≤ d the centred buffer has rank ≤ τ − 1, so the last row of Vᵀ is an arbitrary null-space direction.
  The reference includes it in P whenever i* < τ − 1, and so do we (Z3 line 4 as specified); it is why P cannot
  be matched bit-for-bit across SVD implementations. Determinism on one machine is what resuming needs.
- The PCA mean (`grad_mean`) is computed and never used by the reference; it is not computed here.
"""

from __future__ import annotations

import numpy as np

_CONSTANT_RTOL = 1e-10  # θ is float32: any real movement is ≥ 6e-8 relative, far above float64 round-off


def standardize_columns(history: np.ndarray) -> np.ndarray:
    """Each column of history [τ, d] minus its mean, divided by its population std (ddof 0): [τ, d] float64.

    A column that does not vary is only centred (scale 1), as sklearn's StandardScaler does (spec §6, Z3 line 1)."""
    history = np.asarray(history, dtype=np.float64)
    means = history.mean(axis=0)
    stds = history.std(axis=0)
    constant = stds <= _CONSTANT_RTOL * np.maximum(np.abs(means), np.finfo(np.float64).tiny)
    return (history - means) / np.where(constant, 1.0, stds)


def low_variance_directions(history: np.ndarray, nu: float) -> np.ndarray:
    """SG_REFRESH (spec §6, Algorithm Z3): P [r, d] float32, orthonormal rows, the principal directions of the
    standardised history [τ, d] that lie beyond the first i* + 1 components, where i* is the smallest 0-based index
    whose cumulative explained-variance ratio exceeds 1 − ν.

    r = min(τ, d) − 1 − i*; r = 0 (shape [0, d]) when no prefix exceeds 1 − ν before the last component or the
    history does not vary at all."""
    if not 0.0 < nu < 1.0:
        raise ValueError(f"nu = {nu} must lie in (0, 1); the spec's default keeps 99.9% (nu = 1e-3)")
    standardized = standardize_columns(history)
    dim = standardized.shape[1]
    _, singular_values, vt = np.linalg.svd(standardized, full_matrices=False)  # vt: [min(τ, d), d]
    variances = singular_values**2
    total = variances.sum()
    if not total > 0.0:
        return np.zeros((0, dim), dtype=np.float32)
    above = np.nonzero(np.cumsum(variances / total) > 1.0 - nu)[0]
    cut = int(above[0]) if above.size else len(variances) - 1  # the reference's loop ends on the last index
    return np.ascontiguousarray(vt[cut + 1:], dtype=np.float32)


def project_out(gradient: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """g − (g·Pᵀ)·P: [d] float64, the estimate with its components along the rows of P removed (spec §5 Z2 line 1).

    gradient: [d]; directions: P [r, d] with orthonormal rows (r may be 0). Applied to the estimate only: Adam's
    per-coordinate scaling afterwards means the update is not strictly orthogonal to P (spec §6)."""
    gradient = np.asarray(gradient, dtype=np.float64)
    directions = np.asarray(directions, dtype=np.float64)
    if directions.shape[0] == 0:
        return gradient.copy()
    return gradient - (directions @ gradient) @ directions


def push_history(buffer: np.ndarray, write_index: int, fill_count: int,
                 theta: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Ring-buffer insert (spec §6 "Buffer", Z2 line 5): (new buffer [τ, d] float32, next write index, fill count).

    Writes θ at row `write_index` of a copy of `buffer`; the input is not modified. With refreshes every τ steps
    the buffer is full and in chronological order at each refresh, as in the reference."""
    tau = buffer.shape[0]
    updated = np.array(buffer, dtype=np.float32, copy=True)
    updated[write_index] = theta
    return updated, (write_index + 1) % tau, min(fill_count + 1, tau)
