"""The vector entries that need no model: the RALU presets and schedules as ralu_edge computes them, a
synthetic image with its grey images and Canny edges, and Subspace Gradient refreshes on synthetic histories.
numpy and ralu_edge only."""

from __future__ import annotations

from typing import Any

import numpy as np

from ralu_edge import presets as ralu_presets
from ralu_edge import schedules
from ralu_edge.edges import block_sums, canny_edges, gray_uint8
from ralu_edge.renoise import correlation_alpha
from ralu_edge.rng import rng_for
from ralu_export.conformance.vectors import ArrayStore


def preset_entries(grid: tuple[int, int]) -> list[dict[str, Any]]:
    """Every RALU preset's parameters, sigma lists, stage lengths, k and α at the packed grid `grid`."""
    out = []
    for preset in ralu_presets.PRESETS.values():
        entry = preset.to_dict()
        entry.update(grid=list(grid), k=preset.num_selected(*grid), stage_lengths=list(preset.stage_lengths(*grid)),
                     alpha=correlation_alpha(preset.c), nfe=preset.nfe)
        out.append(entry)
    return out


def schedule_entries() -> dict[str, list[dict[str, Any]]]:
    """FLUX's baseline schedule and the static-shift schedule at a few step counts and sizes."""
    return {
        "flux_baseline": [{"num_steps": n, "image_seq_len": length,
                           "sigmas": schedules.flux_baseline_sigmas(n, length).tolist()}
                          for n, length in ((4, 256), (28, 256), (50, 4096), (20, 1024))],
        "static_shift": [{"num_steps": n, "shift": h, "sigmas": schedules.static_shift_sigmas(n, h).tolist()}
                         for n, h in ((10, 3.0), (28, 1.0))],
    }


def subspace_entries(store: ArrayStore) -> list[dict[str, Any]]:
    """SG refreshes (spec/ZO_PERSONALIZATION.md Algorithm Z3) on synthetic histories with correlated columns
    (rank 2 plus noise), so that P holds determined directions: τ < D with a constant column, τ > D, τ = D."""
    from ralu_edge.zo.subspace import low_variance_directions, standardize_columns

    out = []
    for i, (tau, dim, nu) in enumerate(((6, 10, 0.02), (12, 5, 0.05), (8, 8, 0.01))):
        rng = rng_for(i, "conformance-subspace")
        history = (rng.standard_normal((tau, 2)) @ rng.standard_normal((2, dim))
                   + 0.3 * rng.standard_normal((tau, dim)) + rng.standard_normal(dim)).astype(np.float32)
        if i == 0:
            history[:, 1] = 0.25  # a constant column: centred only (scale 1)
        out.append({"nu": nu, "history": store.add(f"subspace/history{i}", history),
                    "standardized": store.add(f"subspace/standardized{i}", standardize_columns(history)),
                    "proj": store.add(f"subspace/proj{i}", low_variance_directions(history, nu)),
                    "singular_values": store.add(f"subspace/singular_values{i}", np.linalg.svd(
                        standardize_columns(history), compute_uv=False))})
    return out


def canny_entry(store: ArrayStore) -> dict[str, Any]:
    """A synthetic RGB image [1, 3, 64, 64] in [−1, 1] (shapes, a gradient and noise), its grey images under
    both mappings, Canny 100/200 edges and 16×16 block sums (spec/RALU.md §4, §9.4)."""
    rng = rng_for(0, "conformance-canny")
    rows, cols = np.mgrid[0:64, 0:64]
    image = np.zeros((1, 3, 64, 64), np.float32)
    image[0, 0] = np.where((rows - 20) ** 2 + (cols - 22) ** 2 < 120, 0.9, -0.6)
    image[0, 1] = np.where((rows > 36) & (cols > 30) & (cols < 58), 0.8, cols / 64.0 - 0.5)
    image[0, 2] = 0.3 * np.sin(rows / 5.0)
    image = np.clip(image + 0.05 * rng.standard_normal(image.shape), -1, 1).astype(np.float32)
    entry: dict[str, Any] = {"image": store.add("canny/image", image), "low_threshold": 100, "high_threshold": 200,
                             "block": 16}
    for mapping in ("affine", "reference_clip"):
        gray = gray_uint8(image, mapping)
        edges = canny_edges(gray[0])
        entry[mapping] = {"gray": store.add(f"canny/gray_{mapping}", gray[0]),
                          "edges": store.add(f"canny/edges_{mapping}", edges),
                          "block_sums": store.add(f"canny/blocks_{mapping}",
                                                  block_sums(edges[None].astype(np.float64), 16, 16)[0])}
    return entry
