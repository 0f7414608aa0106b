"""Rotary position tables from position ids, computed on the host (spec/RALU.md §9.1 "Project default:
precomputed RoPE"). Mirrors diffusers' `FluxPosEmbed` (repeat_interleave_real=True, use_real=True), which
builds the frequencies in float64; exported graphs then take the float32 tables as inputs instead of
Double ops. Fractional ids (RALU stage 2) are just fractional angles. Depends on numpy only."""

from __future__ import annotations

from typing import Sequence

import numpy as np

FLUX_AXES_DIM = (16, 56, 56)
FLUX_THETA = 10000.0


def rope_tables(
    positions: np.ndarray, axes_dim: Sequence[int] = FLUX_AXES_DIM, theta: float = FLUX_THETA
) -> tuple[np.ndarray, np.ndarray]:
    """(cos, sin), each [L, sum(axes_dim)] float32, for position ids [L, n_axes] (FLUX: (0, row, col)).

    For axis a of even dimension d_a the angles are pos_a·θ^(−2j/d_a), j < d_a/2, each repeated twice in
    place (j, j, j+1, j+1, …); the axes are concatenated in order. axes_dim is (16, 56, 56) for FLUX.1 and
    (8, 12, 12) for the built-in `shapes` model. Like diffusers, the ids are first rounded to float32 (exact
    for the integer and half-integer ids RALU uses); the angles and cos/sin are computed in float64."""
    positions = np.asarray(positions, dtype=np.float32).astype(np.float64)
    if positions.ndim != 2 or positions.shape[1] != len(axes_dim):
        raise ValueError(f"positions {positions.shape} do not have one column per axis of {tuple(axes_dim)}")
    cos_parts, sin_parts = [], []
    for axis, dim in enumerate(axes_dim):
        if dim % 2:
            raise ValueError(f"RoPE axis dimensions must be even, got {tuple(axes_dim)}")
        frequencies = 1.0 / (float(theta) ** (np.arange(0, dim, 2, dtype=np.float64) / dim))  # [d_a/2]
        angles = np.outer(positions[:, axis], frequencies)  # [L, d_a/2]
        cos_parts.append(np.repeat(np.cos(angles), 2, axis=1))
        sin_parts.append(np.repeat(np.sin(angles), 2, axis=1))
    cos = np.concatenate(cos_parts, axis=1).astype(np.float32)
    sin = np.concatenate(sin_parts, axis=1).astype(np.float32)
    return cos, sin
