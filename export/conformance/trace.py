"""Every host-side intermediate of one recorded RALU run, rebuilt step by step from ralu_edge's building
blocks (spec/RALU.md Algorithm R1): what the vectors hold beyond the denoiser calls, and what the checker
compares a replay against. numpy and ralu_edge only."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ralu_edge import presets as ralu_presets
from ralu_edge.edges import edge_scores, select_regions
from ralu_edge.renoise import correlated_noise, renoise, tweedie_x0
from ralu_edge.rope import rope_tables
from ralu_edge.sampler import ralu_stage_plan
from ralu_edge.tokens import (
    assemble_stage2, assemble_stage3, downsample_tokens, grid_positions, raster_order, unpack_latents,
)
from ralu_export.conformance.recording import DenoiserCall, Draw, ReplayRng

SHAPES_AXES = (8, 12, 12)  # the built-in model's RoPE axes; tables depend only on positions and axes


def ralu_trace(calls: Sequence[DenoiserCall], draws: Sequence[Draw], noise: np.ndarray, grid: tuple[int, int],
               preset: ralu_presets.RaluPreset) -> dict[str, np.ndarray]:
    """Every host-side intermediate of one RALU run (spec/RALU.md Algorithm R1), rebuilt step by step from
    ralu_edge's building blocks with the recorded denoiser outputs and draws. Keys are the array roles
    written to the vectors; the denoiser inputs it implies must equal the recorded ones (checked by
    `check_vectors`)."""
    sigmas, transitions = ralu_stage_plan(preset)
    low_h, low_w = grid[0] // 2, grid[1] // 2
    k = preset.num_selected(*grid)
    n1, n2, _ = preset.N
    rng = ReplayRng(draws)
    t: dict[str, np.ndarray] = {"noise": noise}
    t["stage1_start"] = downsample_tokens(noise, *grid)
    t["stage1_positions"] = grid_positions(low_h, low_w)
    t["stage1_final"] = _last_step(calls[n1 - 1], sigmas[0])
    t["x0"] = tweedie_x0(t["stage1_final"], calls[n1 - 1].velocity, sigmas[0][-1])
    t["edge_scores"] = edge_scores(t["x0"], low_h, low_w, "latent_grad")[0]
    t["jitter"] = draws[0].values
    t["selected"] = select_regions(t["edge_scores"], k, rng)
    t["stage2_assembled"], t["stage2_positions"], t["stage2_groups"] = assemble_stage2(
        t["stage1_final"], t["stage1_positions"], t["selected"])
    t["renoise1_eps"] = draws[1].values
    t["renoise1_noise"] = correlated_noise(t["stage2_assembled"].shape, t["stage2_groups"], preset.c, rng)
    t["stage2_start"] = renoise(t["stage2_assembled"], t["renoise1_noise"], transitions[0].a, transitions[0].b)
    t["stage2_final"] = _last_step(calls[n1 + n2 - 1], sigmas[1])
    t["stage3_assembled"], t["stage3_positions_unsorted"], t["stage3_groups"] = assemble_stage3(
        t["stage2_final"], t["stage2_positions"], low_h * low_w - k)
    t["renoise2_eps"] = draws[2].values
    t["renoise2_noise"] = correlated_noise(t["stage3_assembled"].shape, t["stage3_groups"], preset.c, rng)
    t["stage3_renoised"] = renoise(t["stage3_assembled"], t["renoise2_noise"], transitions[1].a, transitions[1].b)
    t["raster_order"] = raster_order(t["stage3_positions_unsorted"])
    t["stage3_start"] = t["stage3_renoised"][:, t["raster_order"]]
    t["stage3_positions"] = t["stage3_positions_unsorted"][t["raster_order"]]
    t["final"] = _last_step(calls[-1], sigmas[2])
    t["final_latent"] = unpack_latents(t["final"], *grid)
    for stage, positions in enumerate((t["stage1_positions"], t["stage2_positions"], t["stage3_positions"]), 1):
        t[f"rope{stage}_cos"], t[f"rope{stage}_sin"] = rope_tables(positions, SHAPES_AXES)
    return t


def _last_step(call: DenoiserCall, stage_sigmas: np.ndarray) -> np.ndarray:
    """The Euler update of a stage's last call: x + float32(σ_N − σ_{N−1})·v (ralu_edge.sampler.euler)."""
    return call.tokens + np.float32(stage_sigmas[-1] - stage_sigmas[-2]) * call.velocity
