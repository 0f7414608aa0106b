"""Samplers over the denoiser seam (DESIGN.md "The one seam", spec/RALU.md §2): the Euler loop, the plain
full-resolution baseline, and RALU's three-stage sampler (Algorithm R1), plus the analytic cost counts
(image token-steps, NFE; §9.6, §11.1). Every stage calls the same `euler`; only the transitions differ.
Randomness only from the passed-in generator. Depends on numpy only."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ralu_edge import schedules
from ralu_edge.edges import Decode, EdgeProxy, GrayMapping, edge_scores, select_regions
from ralu_edge.errors import UserError
from ralu_edge.presets import RaluPreset, check_grid
from ralu_edge.renoise import correlated_noise, renoise as renoise_tokens, tweedie_x0
from ralu_edge.seam import Conditioning, Denoiser
from ralu_edge.tokens import (
    assemble_stage2,
    assemble_stage3,
    downsample_tokens,
    grid_positions,
    restore_raster_order,
)


@dataclass(frozen=True)
class StepInfo:
    """What `on_step` receives after each Euler step. stage: 1..3 for RALU, 0 for a single-stage sampler."""

    stage: int
    step: int
    sigma: float
    sigma_next: float
    num_tokens: int


@dataclass(frozen=True)
class StageInfo:
    """What `on_stage` receives after each RALU stage: its token count and steps, the seconds spent in its
    Euler loop, and the seconds of host work just before it (downsample; selection + assembly + renoise;
    assembly + renoise + raster sort)."""

    stage: int
    num_tokens: int
    num_steps: int
    seconds: float
    transition_seconds: float


@dataclass(frozen=True)
class RaluResult:
    """RALU output: tokens [B, M, C] float32, full resolution in raster order (ready for `unpack_latents`),
    and selected [k] int64, the raster indices on the low-res grid upsampled early (§4)."""

    tokens: np.ndarray
    selected: np.ndarray


OnStep = Callable[[StepInfo], None]
OnStage = Callable[[StageInfo], None]


def euler(
    denoiser: Denoiser,
    tokens: np.ndarray,
    positions: np.ndarray,
    sigmas: np.ndarray,
    cond: Conditioning,
    *,
    on_step: OnStep | None = None,
    stage: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """(final tokens, last velocity), each [B, L, C] float32, after len(sigmas) − 1 Euler steps
    x ← x + (σ_{i+1} − σ_i)·v(x, σ_i) (spec/RALU.md §1 "Time and noise level", §7.3 line 5).

    tokens: [B, L, C] float32; positions: [L, 3] float64 ids; sigmas: [N + 1] float64, the stage's noise
    levels (need not reach 0). The denoiser sees σ_i as a [B] float32 array. State stays float32 (§9.8)."""
    if len(sigmas) < 2:
        raise ValueError(f"an Euler run needs at least 2 sigmas, got {len(sigmas)}")
    x = np.asarray(tokens, dtype=np.float32)
    velocity = np.zeros_like(x)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        velocity = np.asarray(
            denoiser(x, positions, np.full(x.shape[0], sigma, dtype=np.float32), cond), dtype=np.float32
        )
        if velocity.shape != x.shape:
            raise ValueError(f"denoiser returned {velocity.shape}, expected {x.shape}")
        x = x + np.float32(sigma_next - sigma) * velocity
        if on_step is not None:
            on_step(StepInfo(stage=stage, step=i, sigma=sigma, sigma_next=sigma_next, num_tokens=x.shape[1]))
    return x, velocity


def sample_baseline(
    denoiser: Denoiser,
    noise_tokens: np.ndarray,
    grid_h: int,
    grid_w: int,
    sigmas: np.ndarray,
    cond: Conditioning,
    *,
    on_step: OnStep | None = None,
) -> np.ndarray:
    """Plain full-resolution sampling: tokens [B, grid_h·grid_w, C] float32 in raster order.

    noise_tokens: [B, grid_h·grid_w, C] packed initial noise; sigmas: e.g. `flux_baseline_sigmas` or
    `static_shift_sigmas`, [N + 1] ending at 0."""
    tokens, _ = euler(denoiser, noise_tokens, grid_positions(grid_h, grid_w), sigmas, cond, on_step=on_step)
    return tokens


def ralu_stage_plan(
    preset: RaluPreset, renoise: bool = True
) -> tuple[list[np.ndarray], list[schedules.Transition]]:
    """The three stages' sigma arrays ([N_k + 1] float64 each) and the two transitions (s, a, b) (§7.1, §7.3).

    renoise=False is the no-rescheduling ablation: the latent is only duplicated (a = 1, b = 0) and each
    stage restarts where the previous one ended (s_{k+1} = e_k)."""
    if renoise:
        starts = preset.s
        transitions = [schedules.transition(end, preset.Z) for end in preset.e[:2]]
    else:
        starts = (0.0, preset.e[0], preset.e[1])
        transitions = [schedules.Transition(s=end, a=1.0, b=0.0) for end in preset.e[:2]]
    sigmas = [
        schedules.stage_sigmas(start, end, shift, n)
        for start, end, shift, n in zip(starts, preset.e, preset.h, preset.N)
    ]
    return sigmas, transitions


def ralu_sample(
    denoiser: Denoiser,
    noise_tokens: np.ndarray,
    grid_h: int,
    grid_w: int,
    preset: RaluPreset,
    cond: Conditioning,
    *,
    rng: np.random.Generator,
    latent_channels: int,
    edge_proxy: EdgeProxy = "latent_grad",
    decode: Decode | None = None,
    edge_gray_mapping: GrayMapping = "affine",
    renoise: bool = True,
    c_override: float | None = None,
    r_override: float | None = None,
    on_step: OnStep | None = None,
    on_stage: OnStage | None = None,
) -> RaluResult:
    """RALU sampling of one image (spec/RALU.md §2, Algorithm R1): low-res stage, edge-region selection,
    mixed-resolution stage, full-res stage, renoising at each transition.

    noise_tokens: [1, grid_h·grid_w, 4·latent_channels] packed full-res initial noise (FLUX: 16 latent
    channels; the built-in model: 4). grid_h, grid_w: the packed full-res grid, both even. rng: the source
    of the tie-break jitter and of the renoising noise. edge_proxy: 'latent_grad', 'canny' (needs `decode`,
    see `ralu_edge.edges.canny_scores`) or a callable. renoise=False skips rescheduling (ablation, see
    `ralu_stage_plan`); c_override replaces the noise correlation c only (0 = i.i.d. noise; s, a, b stay);
    r_override replaces the up-ratio r. Exactly ΣN denoiser calls."""
    _check_ralu_inputs(noise_tokens, grid_h, grid_w, latent_channels, c_override, r_override)
    c = preset.c if c_override is None else c_override
    r = preset.r if r_override is None else r_override
    sigmas, transitions = ralu_stage_plan(preset, renoise)
    low_h, low_w = grid_h // 2, grid_w // 2
    k = int(low_h * low_w * r)  # spec/RALU.md §9.2: int() in double precision, as the reference

    started = time.perf_counter()
    x, positions = downsample_tokens(noise_tokens, grid_h, grid_w), grid_positions(low_h, low_w)
    x, velocity = _timed_stage(1, denoiser, x, positions, sigmas[0], cond, started, on_step, on_stage)

    started = time.perf_counter()
    x0 = tweedie_x0(x, velocity, sigmas[0][-1])
    scores = edge_scores(x0, low_h, low_w, edge_proxy, decode, edge_gray_mapping)[0]
    selected = select_regions(scores, k, rng)
    x, positions, groups = assemble_stage2(x, positions, selected)
    x = _renoised(x, groups, transitions[0], c, rng, renoise)
    x, _ = _timed_stage(2, denoiser, x, positions, sigmas[1], cond, started, on_step, on_stage)

    started = time.perf_counter()
    x, positions, groups = assemble_stage3(x, positions, low_h * low_w - k)
    x = _renoised(x, groups, transitions[1], c, rng, renoise)
    x, positions = restore_raster_order(x, positions)
    x, _ = _timed_stage(3, denoiser, x, positions, sigmas[2], cond, started, on_step, on_stage)
    return RaluResult(tokens=x, selected=selected)


def _check_ralu_inputs(
    noise_tokens: np.ndarray,
    grid_h: int,
    grid_w: int,
    latent_channels: int,
    c_override: float | None,
    r_override: float | None,
) -> None:
    check_grid(grid_h, grid_w)
    expected = (1, grid_h * grid_w, 4 * latent_channels)
    if noise_tokens.shape != expected:
        raise ValueError(f"RALU samples one image at a time: noise_tokens must be {expected}, "
                         f"got {noise_tokens.shape}")
    if c_override is not None and not 0.0 <= c_override <= 0.25:
        raise UserError(f"c = {c_override} is outside [0, 1/4]; pick a noise correlation in that range")
    if r_override is not None and not 0.0 <= r_override <= 1.0:
        raise UserError(f"up-ratio r = {r_override} is outside [0, 1]; use e.g. r = 0.3")


def _renoised(
    x: np.ndarray, groups: np.ndarray, step: schedules.Transition, c: float, rng: np.random.Generator,
    enabled: bool,
) -> np.ndarray:
    """a·x + b·z with z ~ N(0, I − cJ) per group (§7.1–7.2); x unchanged when renoising is disabled."""
    if not enabled:
        return x
    return renoise_tokens(x, correlated_noise(x.shape, groups, c, rng), step.a, step.b)


def _timed_stage(
    stage: int,
    denoiser: Denoiser,
    x: np.ndarray,
    positions: np.ndarray,
    sigmas: np.ndarray,
    cond: Conditioning,
    transition_started: float,
    on_step: OnStep | None,
    on_stage: OnStage | None,
) -> tuple[np.ndarray, np.ndarray]:
    """`euler` over one stage, reporting StageInfo (with the seconds since `transition_started`) to on_stage."""
    loop_started = time.perf_counter()
    x, velocity = euler(denoiser, x, positions, sigmas, cond, on_step=on_step, stage=stage)
    if on_stage is not None:
        on_stage(StageInfo(stage=stage, num_tokens=x.shape[1], num_steps=len(sigmas) - 1,
                           seconds=time.perf_counter() - loop_started,
                           transition_seconds=loop_started - transition_started))
    return x, velocity


def num_function_evals(preset: RaluPreset) -> int:
    """Denoiser calls per RALU image: ΣN (spec/RALU.md §2); e.g. 18 for flux-4x."""
    return preset.nfe


def image_token_steps(preset: RaluPreset, grid_h: int, grid_w: int, r_override: float | None = None) -> int:
    """Σ_k N_k·L_k image token-steps of RALU on a packed grid_h × grid_w grid (spec/RALU.md §9.6, §11.1);
    2838 for flux-4x at 16×16. Text tokens are not counted."""
    if r_override is not None:
        preset = RaluPreset(preset.name, preset.N, preset.e, preset.h, preset.Z, r_override)
    return sum(n * length for n, length in zip(preset.N, preset.stage_lengths(grid_h, grid_w)))


def baseline_image_token_steps(num_steps: int, grid_h: int, grid_w: int) -> int:
    """num_steps·M image token-steps of plain full-res sampling (spec/RALU.md §9.6); 12800 for 50 at 16×16."""
    return num_steps * grid_h * grid_w
