"""LoRA merge arithmetic on the host (issue 17, docs/lora.md): W' = W + Σ_i s_i · (α_i / r_i) · B_i A_i, and the
per-channel int8 re-quantization of W' in the exporter's weight-only form (export/quantize.py weight_qdq:
symmetric, scale = absmax / 127 per output channel, round half to even, clip to ±127). Pure NumPy functions;
the Kotlin core (android_demo/core Lora.kt) computes the same numbers and is checked against vectors
written from these. Imports numpy only."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LoraFactors:
    """One LoRA's factors for one Linear: down A [r, in], up B [out, r] (float32), and its weight
    `scale` = user scale · α / r."""

    down: np.ndarray
    up: np.ndarray
    scale: float


def lora_delta(factors: list[LoraFactors], shape: tuple[int, int]) -> np.ndarray:
    """Σ scale · (B @ A): [out, in] float64 (summed in float64 so that another language's loop order cannot
    move the float32 result)."""
    delta = np.zeros(shape, dtype=np.float64)
    for f in factors:
        delta += f.scale * (f.up.astype(np.float64) @ f.down.astype(np.float64))
    return delta


def merged_weight(weight: np.ndarray, factors: list[LoraFactors]) -> np.ndarray:
    """W' = W + Σ scale · B A: [out, in] float32 from W [out, in] float32."""
    return (weight.astype(np.float64) + lora_delta(factors, weight.shape)).astype(np.float32)


def channel_scales(weight: np.ndarray) -> np.ndarray:
    """Per-output-channel int8 scales of W [out, in] float32: absmax / 127 as float32, 1 for an all-zero row."""
    absmax = np.max(np.abs(weight), axis=1)
    return np.where(absmax > 0, absmax / np.float32(127.0), np.float32(1.0)).astype(np.float32)


def quantize_rows(weight: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """int8 q [out, in] with W ≈ q · scale per row: round(W / scale) half to even, clipped to ±127."""
    return np.clip(np.round(weight / scales[:, None]), -127, 127).astype(np.int8)


def dequantize_rows(q: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """W [out, in] float32 = q · scale per row."""
    return (q.astype(np.float32) * scales[:, None]).astype(np.float32)


def requantized(q: np.ndarray, scales: np.ndarray, factors: list[LoraFactors]) -> tuple[np.ndarray, np.ndarray]:
    """(q' [out, in] int8, scales' [out] float32) of the merged weight dequantize(q, scales) + Σ scale · B A."""
    merged = merged_weight(dequantize_rows(q, scales), factors)
    new_scales = channel_scales(merged)
    return quantize_rows(merged, new_scales), new_scales
