"""Conformance vectors: golden files that let a port of the host-side algorithms (the pure-Kotlin core in
`android_demo/core`, or any other) prove it computes what `ralu_edge` computes. `write_vectors` runs RALU
and a plain baseline through any seam denoiser (DESIGN.md "The one seam") while recording every denoiser
input and output and every random draw, then writes the intermediate host-side values (sigma lists, token
layouts and positions, RoPE tables, edge scores, selected regions, renoise draws and results, final
latent), tokenizer ids, a Canny case, SG refreshes, a small manifest fixture and every ZO update of a
few personalization steps. `check_vectors` replays a vector folder through `ralu_edge` — feeding the recorded
denoiser outputs and draws — and lists every value that no longer matches: the same check the Kotlin tests
make.

Format (version 1): a folder with `index.json` and one raw little-endian `.bin` per array (C order); the
index names each array's file, dtype (float32, float64, int64 or uint8) and shape, and describes every
run. Random draws are stored, not regenerated: ports cannot reproduce numpy's PCG64 normals cheaply, so
they take the draws from an injectable source. A run with classifier-free guidance (`guidance_scale` in its entry)
records, per call, the guided velocity the sampler saw and the two rows of the inner batch-2 call
(`velocity_uncond` for the negative prompt "", `velocity_cond` for the prompt): a port replays the rows
through its own guidance, v = v_u + s·(v_c − v_u) in float32, and must reproduce the guided velocity.

numpy, the standard library and ralu_edge only (`tokenizers` for the tokenizer vectors, imported there);
never torch. Usage: `python -m ralu_runtime.conformance DIR` checks a folder (exit 0 when it matches)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ralu_edge import presets as ralu_presets
from ralu_edge import schedules
from ralu_edge.edges import canny_edges, edge_scores, gray_uint8, block_sums, select_regions
from ralu_edge.errors import UserError
from ralu_edge.guidance import ClassifierFreeGuidance, stack_conditionings
from ralu_edge.renoise import correlated_noise, correlation_alpha, renoise, tweedie_x0
from ralu_edge.rng import rng_for
from ralu_edge.rope import rope_tables
from ralu_edge.sampler import StepInfo, ralu_sample, ralu_stage_plan, sample_baseline
from ralu_edge.seam import Conditioning, Denoiser
from ralu_edge.tokens import (
    assemble_stage2, assemble_stage3, downsample_tokens, grid_positions, raster_order, unpack_latents,
)

FORMAT = "ralu-conformance-vectors"
VERSION = 1
INDEX_NAME = "index.json"
DTYPES = {"float32": np.float32, "float64": np.float64, "int64": np.int64, "uint8": np.uint8}
RELATIVE_TOLERANCE = 1e-5  # issue 7: host-side values within 1e-5 relative
SIGMA_TOLERANCE = 1e-6

DEFAULT_PROMPTS = (
    "a small red circle in the top left",
    "Two BLUE squares   and a green triangle!",
    "a yellow star at the bottom right, on a checkered background",
    "it's a grey hexagon; 3 dotted stripes (light)",
    "café naïve — unknown 日本 ✓ chars",
    "",
    "   leading and trailing spaces   ",
    "a <shape-token> next to a purple diamond",
    "a large red <shape-token> in the centre",
    "a large red circle in the centre",
    "<shape-token>, <shape-token>s and a-<shape-token>-like circle",
    "a very long prompt " + "with many repeated words " * 8,
    "A <SHAPE-TOKEN>  beside\ta\nsquare",
    "special </s> and <|endoftext|> strings, <pad> too",
    "ΣΑΣ İstanbul Ⅻ ﬁne",
)
DEFAULT_ADDED_TOKENS = ("<shape-token>",)


@dataclass(frozen=True)
class RunSpec:
    """One recorded sampling run: a RALU preset name, or "baseline" with `baseline_steps` FLUX steps;
    guidance_scale: classifier-free guidance with the negative prompt "" (None: none)."""

    name: str
    mode: str
    seed: int
    prompt: str
    baseline_steps: int = 4
    guidance_scale: float | None = None


NEGATIVE_PROMPT = ""  # the negative prompt of guided runs, as the runtime and the Kotlin core encode it

DEFAULT_RUNS = (
    RunSpec("flux-4x-seed0", "flux-4x", 0, "a small red circle in the top left"),
    RunSpec("flux-7x-seed1", "flux-7x", 1, "a blue square at the bottom right"),
    RunSpec("baseline4-seed2", "baseline", 2, "a green triangle in the centre", baseline_steps=4),
    RunSpec("flux-7x-cfg-seed3", "flux-7x", 3, "a large yellow star on the left", guidance_scale=3.0),
)


# ---------------------------------------------------------------------------------------------- recording

@dataclass
class DenoiserCall:
    """One seam call: tokens [1, L, C] float32, positions [L, 3] float64, sigmas [1] float32, velocity [1, L, C]."""

    tokens: np.ndarray
    positions: np.ndarray
    sigmas: np.ndarray
    velocity: np.ndarray


class RecordingDenoiser:
    """Wraps a seam denoiser and keeps a copy of every call's inputs and output."""

    def __init__(self, inner: Denoiser):
        self.inner = inner
        self.calls: list[DenoiserCall] = []

    def __call__(self, tokens, positions, sigmas, cond):
        velocity = np.asarray(self.inner(tokens, positions, sigmas, cond), dtype=np.float32)
        self.calls.append(DenoiserCall(tokens.copy(), np.array(positions, np.float64), sigmas.copy(),
                                       velocity.copy()))
        return velocity


@dataclass
class Draw:
    """One random draw as the generator returned it (float64 values in the requested shape)."""

    method: str  # "normal" (loc, scale) or "standard_normal"
    values: np.ndarray
    loc: float = 0.0
    scale: float = 1.0


class RecordingRng:
    """Stands in for a numpy Generator where the samplers draw (`normal`, `standard_normal`) and records the
    draws; any other method fails loudly, so a new kind of draw cannot slip past the vectors."""

    def __init__(self, inner: np.random.Generator):
        self.inner = inner
        self.draws: list[Draw] = []

    def normal(self, loc=0.0, scale=1.0, size=None):
        values = self.inner.normal(loc, scale, size)
        self.draws.append(Draw("normal", np.array(values, np.float64), float(loc), float(scale)))
        return values

    def standard_normal(self, size=None, dtype=np.float64):
        values = self.inner.standard_normal(size, dtype=dtype)
        self.draws.append(Draw("standard_normal", np.array(values, np.float64)))
        return values

    def __getattr__(self, name):
        raise AttributeError(f"RecordingRng does not record {name!r}; add it to the vector format first")


class ReplayRng:
    """Returns recorded draws in order, checking that each request has the recorded kind and shape."""

    def __init__(self, draws: Sequence[Draw]):
        self.draws = list(draws)
        self.position = 0

    def _next(self, method: str, size) -> np.ndarray:
        if self.position >= len(self.draws):
            raise AssertionError(f"draw {self.position} ({method}, {size}) was not recorded")
        draw = self.draws[self.position]
        self.position += 1
        shape = tuple(np.atleast_1d(size).tolist()) if size is not None else ()
        if draw.method != method or draw.values.shape != shape:
            raise AssertionError(f"draw {self.position - 1}: asked {method}{shape}, recorded "
                                 f"{draw.method}{draw.values.shape}")
        return draw.values.copy()

    def normal(self, loc=0.0, scale=1.0, size=None):
        return self._next("normal", size)

    def standard_normal(self, size=None, dtype=np.float64):
        return self._next("standard_normal", size).astype(dtype)


class ReplayDenoiser:
    """Returns recorded velocities in order; `mismatches` collects calls whose inputs differ from the
    recorded ones (tokens beyond RELATIVE_TOLERANCE, positions or sigma at all)."""

    def __init__(self, calls: Sequence[DenoiserCall]):
        self.calls = list(calls)
        self.position = 0
        self.mismatches: list[str] = []

    def __call__(self, tokens, positions, sigmas, cond):
        if self.position >= len(self.calls):
            raise AssertionError(f"denoiser call {self.position} was not recorded")
        call = self.calls[self.position]
        where = f"denoiser call {self.position}"
        self.position += 1
        if tokens.shape != call.tokens.shape:
            raise AssertionError(f"{where}: tokens {tokens.shape}, recorded {call.tokens.shape}")
        _compare(self.mismatches, f"{where} tokens", tokens, call.tokens)
        _compare(self.mismatches, f"{where} positions", positions, call.positions, 0.0)
        _compare(self.mismatches, f"{where} sigma", sigmas, call.sigmas, SIGMA_TOLERANCE)
        return call.velocity.copy()


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """max |actual − expected| / max |expected| (0 when both are all zero); inf on a shape mismatch."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    if actual.shape != expected.shape:
        return float("inf")
    scale = float(np.abs(expected).max()) if expected.size else 0.0
    error = float(np.abs(actual - expected).max()) if expected.size else 0.0
    return error / scale if scale > 0 else error


def _compare(out: list[str], what: str, actual, expected, tolerance: float = RELATIVE_TOLERANCE) -> None:
    error = relative_error(actual, expected)
    if not error <= tolerance:
        out.append(f"{what}: relative error {error:.3g} > {tolerance:g}")


# -------------------------------------------------------------------------------------------- RALU trace

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
        t[f"rope{stage}_cos"], t[f"rope{stage}_sin"] = rope_tables(positions, _SHAPES_AXES)
    return t


_SHAPES_AXES = (8, 12, 12)  # the built-in model's RoPE axes; tables depend only on positions and axes


def _last_step(call: DenoiserCall, stage_sigmas: np.ndarray) -> np.ndarray:
    """The Euler update of a stage's last call: x + float32(σ_N − σ_{N−1})·v (ralu_edge.sampler.euler)."""
    return call.tokens + np.float32(stage_sigmas[-1] - stage_sigmas[-2]) * call.velocity


# ------------------------------------------------------------------------------------------------ writing

class _ArrayStore:
    """Collects named arrays for the index and writes each as a raw little-endian file."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.entries: dict[str, dict[str, Any]] = {}

    def add(self, name: str, array: np.ndarray) -> str:
        array = np.asarray(array)
        dtype = {np.dtype(v): k for k, v in DTYPES.items()}.get(array.dtype)
        if dtype is None:
            raise TypeError(f"{name}: dtype {array.dtype} is not one of {list(DTYPES)}")
        if name in self.entries:
            raise ValueError(f"array {name!r} written twice")
        path = self.folder / f"{name}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(np.ascontiguousarray(array, dtype=np.dtype(dtype).newbyteorder("<")).tobytes())
        self.entries[name] = {"file": f"{name}.bin", "dtype": dtype, "shape": list(array.shape)}
        return name


def _record_run(spec: RunSpec, denoiser: Denoiser, cond: Conditioning, grid: tuple[int, int],
                latent_channels: int, noise: np.ndarray) -> tuple[RecordingDenoiser, RecordingRng, list, Any]:
    """Runs `spec`, recording the sampler's seam calls; for a guided run (cond of batch 2, negative first) the
    recorder sees the guided velocity and `recorder.inner.calls` the batch-2 calls under the guidance."""
    if spec.guidance_scale is not None:
        denoiser = ClassifierFreeGuidance(RecordingDenoiser(denoiser), spec.guidance_scale)
    recorder, rng = RecordingDenoiser(denoiser), RecordingRng(rng_for(spec.seed, "ralu"))
    steps: list[StepInfo] = []
    if spec.mode == "baseline":
        sigmas = schedules.flux_baseline_sigmas(spec.baseline_steps, grid[0] * grid[1])
        result = sample_baseline(recorder, noise, *grid, sigmas, cond, on_step=steps.append)
    else:
        result = ralu_sample(recorder, noise, *grid, ralu_presets.get(spec.mode), cond, rng=rng,
                             latent_channels=latent_channels, on_step=steps.append)
    return recorder, rng, steps, result


def _write_run(store: _ArrayStore, spec: RunSpec, denoiser: Denoiser, cond: Conditioning,
               grid: tuple[int, int], latent_channels: int, noise: np.ndarray) -> dict[str, Any]:
    recorder, rng, steps, result = _record_run(spec, denoiser, cond, grid, latent_channels, noise)
    prefix = f"{spec.name}/"
    entry: dict[str, Any] = {"name": spec.name, "mode": spec.mode, "seed": spec.seed, "prompt": spec.prompt,
                             "grid": list(grid), "latent_channels": latent_channels, "edge_proxy": "latent_grad",
                             "noise": store.add(prefix + "noise", noise)}
    if spec.guidance_scale is not None:
        entry.update(guidance_scale=spec.guidance_scale, negative_prompt=NEGATIVE_PROMPT)
    positions_by_length: dict[int, str] = {}
    calls = []
    for i, (call, step) in enumerate(zip(recorder.calls, steps)):
        length = call.tokens.shape[1]
        if length not in positions_by_length:
            positions_by_length[length] = store.add(f"{prefix}positions_L{length}", call.positions)
        calls.append({"stage": step.stage, "step": step.step, "sigma": step.sigma, "sigma_next": step.sigma_next,
                      "tokens": store.add(f"{prefix}call{i:02d}_tokens", call.tokens),
                      "positions": positions_by_length[length],
                      "velocity": store.add(f"{prefix}call{i:02d}_velocity", call.velocity)})
        if spec.guidance_scale is not None:
            both = recorder.inner.inner.calls[i].velocity  # [2, L, C]: the negative row, then the prompt's
            calls[-1].update(velocity_uncond=store.add(f"{prefix}call{i:02d}_velocity_uncond", both[:1]),
                             velocity_cond=store.add(f"{prefix}call{i:02d}_velocity_cond", both[1:]))
    entry["calls"] = calls
    entry["draws"] = [{"method": d.method, "loc": d.loc, "scale": d.scale, "shape": list(d.values.shape),
                       "values": store.add(f"{prefix}draw{i}", d.values)} for i, d in enumerate(rng.draws)]
    if spec.mode == "baseline":
        entry["num_steps"] = spec.baseline_steps
        entry["sigmas"] = schedules.flux_baseline_sigmas(spec.baseline_steps, grid[0] * grid[1]).tolist()
        entry["trace"] = {"final": store.add(prefix + "final", result)}
        return entry
    preset = ralu_presets.get(spec.mode)
    trace = ralu_trace(recorder.calls, rng.draws, noise, grid, preset)
    entry["k"] = preset.num_selected(*grid)
    entry["stage_lengths"] = list(preset.stage_lengths(*grid))
    entry["rope_axes_dim"] = list(_SHAPES_AXES)
    entry["trace"] = {role: store.add(prefix + role, array) for role, array in trace.items()
                      if role not in ("noise", "jitter", "renoise1_eps", "renoise2_eps")}
    if not np.array_equal(trace["final"], result.tokens) or not np.array_equal(trace["selected"], result.selected):
        raise AssertionError(f"{spec.name}: ralu_trace disagrees with ralu_sample; fix ralu_trace")
    return entry


def _preset_entries(grid: tuple[int, int]) -> list[dict[str, Any]]:
    out = []
    for preset in ralu_presets.PRESETS.values():
        entry = preset.to_dict()
        entry.update(grid=list(grid), k=preset.num_selected(*grid), stage_lengths=list(preset.stage_lengths(*grid)),
                     alpha=correlation_alpha(preset.c), nfe=preset.nfe)
        out.append(entry)
    return out


def _schedule_entries() -> dict[str, list[dict[str, Any]]]:
    return {
        "flux_baseline": [{"num_steps": n, "image_seq_len": length,
                           "sigmas": schedules.flux_baseline_sigmas(n, length).tolist()}
                          for n, length in ((4, 256), (28, 256), (50, 4096), (20, 1024))],
        "static_shift": [{"num_steps": n, "shift": h, "sigmas": schedules.static_shift_sigmas(n, h).tolist()}
                         for n, h in ((10, 3.0), (28, 1.0))],
    }


def _subspace_entries(store: _ArrayStore) -> list[dict[str, Any]]:
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


def _canny_entry(store: _ArrayStore) -> dict[str, Any]:
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


def tokenizer_entries(folder: Path, tokenizer_files: dict[str, tuple[Path, str, int]], prompts: Sequence[str],
                      added_tokens: Sequence[str]) -> list[dict[str, Any]]:
    """Token ids of `prompts` from the `tokenizers` library: for each name -> (tokenizer.json, kind, max_length),
    the file is copied to `folder/tokenizers/<name>/tokenizer.json` and each prompt encoded twice: plain
    (`ids`, no padding or truncation) and as the pipelines feed the encoders (`padded`: truncated and padded
    to max_length with the pad token). `added_tokens` are added first as ralu_runtime.tokenization adds learned
    tokens (`add_learned_tokens`: non-special, not normalized, lstrip, and a Metaspace that prepends '▁' only at
    the start of the prompt)."""
    from tokenizers import Tokenizer

    from ralu_runtime.tokenization import add_learned_tokens

    out = []
    for name, (path, kind, max_length) in tokenizer_files.items():
        target = folder / "tokenizers" / name / "tokenizer.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        tokenizer = Tokenizer.from_file(str(path))
        plain = Tokenizer.from_file(str(path))
        first_free = tokenizer.get_vocab_size(with_added_tokens=True)
        for tok in (tokenizer, plain):
            add_learned_tokens(tok, added_tokens)
        pad_token = "<|endoftext|>" if kind == "clip" else "<pad>"
        pad_id = tokenizer.token_to_id(pad_token)
        tokenizer.enable_truncation(max_length)
        tokenizer.enable_padding(length=max_length, pad_id=pad_id, pad_token=pad_token)
        cases = [{"prompt": p, "ids": plain.encode(p).ids, "padded": tokenizer.encode(p).ids} for p in prompts]
        out.append({"name": name, "file": f"tokenizers/{name}/tokenizer.json", "kind": kind,
                    "max_length": max_length, "pad_id": pad_id, "first_free_id": first_free,
                    "added_tokens": [{"content": t, "id": plain.token_to_id(t)} for t in added_tokens],
                    "cases": cases})
    return out


# --------------------------------------------------------------------------------------- personalization

QueryVelocity = Callable[[np.ndarray, np.ndarray, float], np.ndarray]
"""query_velocity(theta [D] float32, x_sigma [1, L, C] float32, sigma) -> velocity [1, L, C]: text-encode the
caption with θ injected at the placeholder (split across encoders by the caller), then run the denoiser."""


@dataclass(frozen=True)
class ZoCase:
    """A short personalization run to record (spec/ZO_PERSONALIZATION.md Algorithm Z1 on a flow model, §11).

    moments: [num_images, 2 (flip), 2·C, h, w] float32 cached VAE posterior (mean ‖ logvar) per image and flip;
    theta0: [D] float32 initializer rows (concatenated across encoders); image_pixels: training image size."""

    config: Any  # ralu_edge.zo.ZOConfig
    puts: Any  # ralu_edge.zo.PutsConfig
    seed: int
    steps: int
    moments: np.ndarray
    theta0: np.ndarray
    shift_factor: float
    scaling_factor: float
    image_pixels: int
    notes: dict[str, Any] = field(default_factory=dict)


def personalization_batch(case: ZoCase, step: int) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray]:
    """(draw, x0 tokens, x_sigma tokens, target tokens) of 1-based step `step`, each tokens array [1, L, C]
    float32 packed (spec §10.1, §10.3, §11.1): pick the (image, flip) moments, sample the posterior, pack, noise."""
    from ralu_edge.tokens import pack_latents
    from ralu_edge.zo import draw_step, flow_matching_pair, posterior_latents

    channels = case.moments.shape[2] // 2
    draw = draw_step(case.seed, step, num_images=case.moments.shape[0], latent_shape=(channels, *case.moments.shape[3:]),
                     puts=case.puts, image_pixels=case.image_pixels)
    moments = case.moments[draw.image_indices[0], int(draw.flips[0])][None]
    x0 = posterior_latents(moments[:, :channels], moments[:, channels:], draw.posterior_noise, case.shift_factor,
                           case.scaling_factor)
    x_sigma, target = flow_matching_pair(pack_latents(x0), pack_latents(draw.noise), draw.sigmas)
    return draw, pack_latents(x0), x_sigma, target


def mse_loss(velocity: np.ndarray, target: np.ndarray) -> float:
    """mean((v − target)²) accumulated in float64 (spec Algorithm Z1 LOSS)."""
    difference = np.asarray(velocity, np.float64) - np.asarray(target, np.float64)
    return float(np.mean(difference * difference))


def _write_zo(store: _ArrayStore, case: ZoCase, query_velocity: QueryVelocity) -> dict[str, Any]:
    from ralu_edge.zo import init_state, project_out, rge_gradient, zo_step
    from ralu_edge.zo.estimator import perturbation_directions
    from ralu_edge.zo.optimizer import PURPOSE_DIRECTIONS
    from ralu_edge.zo.subspace import standardize_columns

    state = init_state(case.theta0, case.config, case.seed)
    entry: dict[str, Any] = {"config": case.config.to_dict(), "puts": case.puts.to_dict(), "seed": case.seed,
                             "image_pixels": case.image_pixels, "shift_factor": case.shift_factor,
                             "scaling_factor": case.scaling_factor, "notes": case.notes,
                             "sigma_range": list(case.puts.sigma_range(case.image_pixels)),
                             "moments": store.add("zo/moments", case.moments.astype(np.float32)),
                             "theta0": store.add("zo/theta0", state.theta), "steps": []}
    for step in range(1, case.steps + 1):
        p = f"zo/step{step:02d}_"
        draw, x0, x_sigma, target = personalization_batch(case, step)
        sigma = float(draw.sigmas[0])
        velocities: list[np.ndarray] = []

        def loss_fn(queries):
            out = []
            for row in queries:
                velocities.append(np.asarray(query_velocity(np.array(row), x_sigma, sigma), np.float32))
                out.append(mse_loss(velocities[-1], target))
            return np.array(out)

        before = state
        state, info = zo_step(state, loss_fn, case.config)
        directions = perturbation_directions(rng_for(case.seed, PURPOSE_DIRECTIONS, step), case.config.n, state.dim)
        gradient = project_out(rge_gradient(info.losses, directions, case.config.mu, before.d_eff,
                                            case.config.grad_normalization), before.sg_proj)
        record = {"step": step, "image_index": int(draw.image_indices[0]), "flip": bool(draw.flips[0]),
                  "sigma": sigma, "loss": info.loss, "grad_norm": info.grad_norm, "theta_norm": info.theta_norm,
                  "d_eff": info.d_eff, "sg_refreshed": info.sg_refreshed, "sg_rank": info.sg_rank}
        for role, array in (("noise", draw.noise), ("posterior_noise", draw.posterior_noise), ("x0", x0),
                            ("x_sigma", x_sigma), ("target", target), ("directions", directions),
                            ("velocities", np.stack(velocities)), ("losses", info.losses), ("gradient", gradient),
                            ("theta", state.theta), ("adam_m", state.adam_m), ("adam_v", state.adam_v)):
            record[role] = store.add(p + role, array)
        if info.sg_refreshed:
            history = state.sg_buffer[:state.sg_fill_count]
            record["sg_proj"] = store.add(p + "sg_proj", state.sg_proj)
            record["sg_singular_values"] = store.add(
                p + "sg_singular_values", np.linalg.svd(standardize_columns(history), compute_uv=False))
        entry["steps"].append(record)
    entry["checkpoint"] = _write_checkpoint(store.folder / "zo" / "checkpoint.safetensors", state)
    return entry


def _write_checkpoint(path: Path, state: Any) -> str:
    """The final ZO state as a safetensors checkpoint (ZOState.to_arrays; metadata values as strings), so that
    ports can check they read the Python layout."""
    from safetensors.numpy import save_file

    arrays, meta = state.to_arrays()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(path),
              metadata={k: str(v) for k, v in meta.items()})
    return "zo/checkpoint.safetensors"


# ------------------------------------------------------------------------------------------- entry points

@dataclass(frozen=True)
class VectorSources:
    """What `write_vectors` runs: a seam denoiser, the conditioning for each run's prompt, the packed initial
    noise for a seed ([1, M, C] float32), tokenizer.json files (name -> (path, kind, max_length)), an
    optional personalization case with its query_velocity, and provenance (which denoiser, which model) for
    the index. Anything that implements the seam works: the torch reference, an ORT backend, a stub."""

    denoiser: Denoiser
    cond_for: Callable[[str], Conditioning]
    noise_for: Callable[[int], np.ndarray]
    grid: tuple[int, int]
    latent_channels: int
    tokenizer_files: dict[str, tuple[Path, str, int]]
    provenance: dict[str, Any]
    runs: Sequence[RunSpec] = DEFAULT_RUNS
    prompts: Sequence[str] = DEFAULT_PROMPTS
    added_tokens: Sequence[str] = DEFAULT_ADDED_TOKENS
    zo_case: ZoCase | None = None
    query_velocity: QueryVelocity | None = None
    extra_files: Callable[[Path], dict[str, Any]] | None = None


def _run_conditioning(spec: RunSpec, cond_for: Callable[[str], Conditioning]) -> Conditioning:
    """The prompt's conditioning, or for a guided run the [negative "", prompt] batch of 2."""
    if spec.guidance_scale is None:
        return cond_for(spec.prompt)
    return stack_conditionings(cond_for(NEGATIVE_PROMPT), cond_for(spec.prompt))


def write_vectors(out_dir: Path, sources: VectorSources) -> Path:
    """Write a vector folder (format in the module docstring) to out_dir, replacing an existing one only once
    the new one is complete. Returns out_dir. extra_files(folder) may add files (e.g. a bundle fixture) and
    returns the index entries describing them, merged under "extra"."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        store = _ArrayStore(work)
        index: dict[str, Any] = {"format": FORMAT, "version": VERSION, "provenance": sources.provenance,
                                 "tolerances": {"relative": RELATIVE_TOLERANCE, "sigma": SIGMA_TOLERANCE}}
        index["presets"] = _preset_entries(sources.grid)
        index["schedules"] = _schedule_entries()
        index["runs"] = [_write_run(store, spec, sources.denoiser, _run_conditioning(spec, sources.cond_for),
                                    sources.grid, sources.latent_channels, sources.noise_for(spec.seed))
                         for spec in sources.runs]
        index["canny"] = _canny_entry(store)
        index["tokenizers"] = tokenizer_entries(work, sources.tokenizer_files, sources.prompts, sources.added_tokens)
        if sources.zo_case is not None:
            if sources.query_velocity is None:
                raise ValueError("a zo_case needs a query_velocity callable")
            index["zo"] = _write_zo(store, sources.zo_case, sources.query_velocity)
            index["subspace"] = _subspace_entries(store)
        if sources.extra_files is not None:
            index["extra"] = sources.extra_files(work)
        index["arrays"] = store.entries
        (work / INDEX_NAME).write_text(json.dumps(index, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        _replace_folder(work, out_dir)
    finally:
        if work.exists():
            shutil.rmtree(work)
    return out_dir


def _replace_folder(new: Path, target: Path) -> None:
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}-old-{os.getpid()}")
        os.replace(target, old)
    os.replace(new, target)
    if old is not None:
        shutil.rmtree(old)


@dataclass(frozen=True)
class Vectors:
    """A loaded vector folder: its index and a reader for its arrays."""

    folder: Path
    index: dict[str, Any]

    def array(self, name: str) -> np.ndarray:
        """The array called `name`, with its stored dtype and shape."""
        entry = self.index["arrays"][name]
        data = np.fromfile(self.folder / entry["file"], dtype=np.dtype(DTYPES[entry["dtype"]]).newbyteorder("<"))
        return data.reshape(entry["shape"]).astype(DTYPES[entry["dtype"]])


def load_vectors(folder: Path) -> Vectors:
    """The vector folder at `folder`; UserError when it is not one."""
    path = Path(folder) / INDEX_NAME
    if not path.is_file():
        raise UserError(f"{folder}: no {INDEX_NAME}, so this is not a conformance vector folder; write one with "
                        "android_demo/scripts/make_vectors.py")
    index = json.loads(path.read_text(encoding="utf-8"))
    if index.get("format") != FORMAT or index.get("version") != VERSION:
        raise UserError(f"{path}: format {index.get('format')!r} version {index.get('version')} is not {FORMAT!r} "
                        f"version {VERSION}; regenerate the vectors with android_demo/scripts/make_vectors.py")
    return Vectors(Path(folder), index)


# ------------------------------------------------------------------------------------------------ checking

def check_vectors(folder: Path) -> list[str]:
    """Replay a vector folder through ralu_edge (recorded denoiser outputs and draws fed back) and return one
    line per value that differs beyond the index's tolerances; an empty list means ralu_edge still computes
    what the vectors hold."""
    vectors = load_vectors(folder)
    problems: list[str] = []
    problems += _check_presets(vectors)
    problems += _check_schedules(vectors)
    for run in vectors.index["runs"]:
        problems += _check_run(vectors, run)
    problems += _check_canny(vectors)
    problems += _check_tokenizers(vectors)
    if "zo" in vectors.index:
        problems += _check_zo(vectors, vectors.index["zo"])
        problems += _check_subspace(vectors)
    if "bundle" in vectors.index.get("extra", {}):
        problems += _check_bundle(vectors.folder / vectors.index["extra"]["bundle"])
    return problems


def _check_bundle(bundle: Path) -> list[str]:
    """The bundle fixture still parses under ralu_edge.manifest and its files match their checksums."""
    from ralu_edge.manifest import read_manifest, verify_files

    try:
        verify_files(bundle, read_manifest(bundle))
    except UserError as e:
        return [f"bundle fixture: {e} (regenerate the vectors: android_demo/scripts/make_vectors.py)"]
    return []


def _check_presets(vectors: Vectors) -> list[str]:
    problems: list[str] = []
    for entry in vectors.index["presets"]:
        name = entry["name"]
        if name not in ralu_presets.PRESETS:
            problems.append(f"preset {name}: no longer in ralu_edge.presets.PRESETS")
            continue
        preset = ralu_presets.PRESETS[name]
        expected = preset.to_dict()
        for key in ("c", "s", "a", "b"):
            _compare(problems, f"preset {name} {key}", entry[key], expected[key], SIGMA_TOLERANCE)
        for stage, sigmas in enumerate(expected["stage_sigmas"]):
            _compare(problems, f"preset {name} stage {stage + 1} sigmas", entry["stage_sigmas"][stage], sigmas,
                     SIGMA_TOLERANCE)
        grid = tuple(entry["grid"])
        if entry["stage_lengths"] != list(preset.stage_lengths(*grid)) or entry["k"] != preset.num_selected(*grid):
            problems.append(f"preset {name}: stage lengths/k differ")
        _compare(problems, f"preset {name} alpha", entry["alpha"], correlation_alpha(preset.c), SIGMA_TOLERANCE)
    return problems


def _check_schedules(vectors: Vectors) -> list[str]:
    problems: list[str] = []
    for case in vectors.index["schedules"]["flux_baseline"]:
        _compare(problems, f"flux_baseline_sigmas({case['num_steps']}, {case['image_seq_len']})", case["sigmas"],
                 schedules.flux_baseline_sigmas(case["num_steps"], case["image_seq_len"]), SIGMA_TOLERANCE)
    for case in vectors.index["schedules"]["static_shift"]:
        _compare(problems, f"static_shift_sigmas({case['num_steps']}, {case['shift']})", case["sigmas"],
                 schedules.static_shift_sigmas(case["num_steps"], case["shift"]), SIGMA_TOLERANCE)
    return problems


def _recorded(vectors: Vectors, run: dict[str, Any]) -> tuple[list[DenoiserCall], list[Draw]]:
    calls = [DenoiserCall(vectors.array(c["tokens"]), vectors.array(c["positions"]),
                          np.full(1, c["sigma"], np.float32), vectors.array(c["velocity"])) for c in run["calls"]]
    draws = [Draw(d["method"], vectors.array(d["values"]), d["loc"], d["scale"]) for d in run["draws"]]
    return calls, draws


_NO_COND = Conditioning(text_states=np.zeros((1, 1, 1), np.float32), pooled=np.zeros((1, 1), np.float32))
_NO_COND_CFG = stack_conditionings(_NO_COND, _NO_COND)


class _ReplayHalves:
    """The inner denoiser of a guided run's replay: checks each call's inputs through `replay` (both rows of
    the batch-2 call are the recorded tokens) and returns the recorded [negative; prompt] velocity rows."""

    def __init__(self, replay: ReplayDenoiser, halves: Sequence[np.ndarray]):
        self.replay, self.halves = replay, list(halves)

    def __call__(self, tokens, positions, sigmas, cond):
        index = self.replay.position
        self.replay(tokens[:1], positions, sigmas[:1], cond)
        _compare(self.replay.mismatches, f"denoiser call {index} negative-row tokens", tokens[1:], tokens[:1], 0.0)
        return self.halves[index].copy()


def _replay_denoiser(vectors: Vectors, run: dict[str, Any], replay: ReplayDenoiser):
    """(denoiser, conditioning) replaying a run: the recorded velocities, or for a guided run the recorded
    halves through ralu_edge's ClassifierFreeGuidance, recording the guided velocity it computes."""
    if "guidance_scale" not in run:
        return replay, _NO_COND
    halves = [np.concatenate([vectors.array(c["velocity_uncond"]), vectors.array(c["velocity_cond"])])
              for c in run["calls"]]
    return RecordingDenoiser(ClassifierFreeGuidance(_ReplayHalves(replay, halves), run["guidance_scale"])), \
        _NO_COND_CFG


def _check_run(vectors: Vectors, run: dict[str, Any]) -> list[str]:
    name, grid = run["name"], tuple(run["grid"])
    calls, draws = _recorded(vectors, run)
    replay, noise = ReplayDenoiser(calls), vectors.array(run["noise"])
    denoiser, cond = _replay_denoiser(vectors, run, replay)
    problems: list[str] = []
    if run["mode"] == "baseline":
        sigmas = schedules.flux_baseline_sigmas(run["num_steps"], grid[0] * grid[1])
        _compare(problems, f"{name} sigmas", sigmas, run["sigmas"], SIGMA_TOLERANCE)
        final = sample_baseline(denoiser, noise, *grid, sigmas, cond)
    else:
        preset = ralu_presets.get(run["mode"])
        result = ralu_sample(denoiser, noise, *grid, preset, cond, rng=ReplayRng(draws),
                             latent_channels=run["latent_channels"])
        final = result.tokens
        if not np.array_equal(result.selected, vectors.array(run["trace"]["selected"])):
            problems.append(f"{name}: selected regions differ")
        for role, expected in ralu_trace(calls, draws, noise, grid, preset).items():
            if role in run["trace"]:
                tolerance = 0.0 if role in ("selected", "stage2_groups", "stage3_groups", "raster_order") else \
                    RELATIVE_TOLERANCE
                _compare(problems, f"{name} {role}", expected, vectors.array(run["trace"][role]), tolerance)
    if replay.position != len(calls):
        problems.append(f"{name}: {replay.position} denoiser calls, {len(calls)} recorded")
    problems += [f"{name}: {m}" for m in replay.mismatches]
    if denoiser is not replay:  # guided: ralu_edge's guidance of the recorded halves is the recorded velocity
        for i, (ours, call) in enumerate(zip(denoiser.calls, calls)):
            _compare(problems, f"{name} denoiser call {i} guided velocity", ours.velocity, call.velocity)
    _compare(problems, f"{name} final tokens", final, vectors.array(run["trace"]["final"]))
    return problems


def _check_canny(vectors: Vectors) -> list[str]:
    entry, problems = vectors.index["canny"], []
    image = vectors.array(entry["image"])
    for mapping in ("affine", "reference_clip"):
        gray = gray_uint8(image, mapping)[0]
        edges = canny_edges(gray, entry["low_threshold"], entry["high_threshold"])
        _compare(problems, f"canny gray {mapping}", gray, vectors.array(entry[mapping]["gray"]), 0.0)
        _compare(problems, f"canny edges {mapping}", edges, vectors.array(entry[mapping]["edges"]), 0.0)
    return problems


def _check_tokenizers(vectors: Vectors) -> list[str]:
    try:
        from tokenizers import Tokenizer

        from ralu_runtime.tokenization import add_learned_tokens
    except ImportError:
        return []
    problems = []
    for entry in vectors.index["tokenizers"]:
        tokenizer = Tokenizer.from_file(str(vectors.folder / entry["file"]))
        add_learned_tokens(tokenizer, [t["content"] for t in entry["added_tokens"]])
        for case in entry["cases"]:
            if tokenizer.encode(case["prompt"]).ids != case["ids"]:
                problems.append(f"tokenizer {entry['name']}: ids of {case['prompt']!r} differ")
    return problems


def zo_case_from_index(vectors: Vectors, entry: dict[str, Any]) -> ZoCase:
    """The ZoCase a vector folder's "zo" entry recorded."""
    from ralu_edge.zo import PutsConfig, ZOConfig

    return ZoCase(config=ZOConfig.from_dict(entry["config"]), puts=PutsConfig.from_dict(entry["puts"]),
                  seed=entry["seed"], steps=len(entry["steps"]), moments=vectors.array(entry["moments"]),
                  theta0=vectors.array(entry["theta0"]), shift_factor=entry["shift_factor"],
                  scaling_factor=entry["scaling_factor"], image_pixels=entry["image_pixels"])


def determined_rows(num_rows: int, singular_values: np.ndarray) -> np.ndarray:
    """Mask [num_rows] of the rows of P = the last num_rows rows of Vᵀ whose direction the history determines:
    singular value above 1e-6 of the largest and separated from its neighbours by 1e-6 relative. The others
    (the centred buffer's null space) are arbitrary and differ between SVD implementations (spec §6)."""
    values = np.asarray(singular_values, np.float64)
    first = len(values) - num_rows
    scale = max(float(values.max()), np.finfo(np.float64).tiny) if values.size else 1.0
    mask = np.zeros(num_rows, dtype=bool)
    for j in range(num_rows):
        i = first + j
        gaps = [abs(values[i] - values[o]) for o in (i - 1, i + 1) if 0 <= o < len(values)]
        mask[j] = values[i] > 1e-6 * scale and all(g > 1e-6 * scale for g in gaps)
    return mask


def projector_error(actual: np.ndarray, expected: np.ndarray, singular_values: np.ndarray) -> float:
    """Relative error between PᵀP of the determined rows of two projections P [r, D] (signs and the arbitrary
    null-space rows do not count); inf when the row counts differ."""
    if actual.shape != expected.shape:
        return float("inf")
    mask = determined_rows(expected.shape[0], singular_values)
    a, e = np.asarray(actual, np.float64)[mask], np.asarray(expected, np.float64)[mask]
    return relative_error(a.T @ a, e.T @ e) if mask.any() else 0.0


def _check_zo(vectors: Vectors, entry: dict[str, Any]) -> list[str]:
    import dataclasses

    from ralu_edge.zo import init_state, zo_step

    case, problems = zo_case_from_index(vectors, entry), []
    state = init_state(case.theta0, case.config, case.seed)
    for record in entry["steps"]:
        where = f"zo step {record['step']}"
        draw, x0, x_sigma, target = personalization_batch(case, record["step"])
        if (int(draw.image_indices[0]), bool(draw.flips[0])) != (record["image_index"], record["flip"]):
            problems.append(f"{where}: image index / flip differ")
        _compare(problems, f"{where} sigma", draw.sigmas, [record["sigma"]], SIGMA_TOLERANCE)
        for role, value in (("noise", draw.noise), ("posterior_noise", draw.posterior_noise), ("x0", x0),
                            ("x_sigma", x_sigma), ("target", target)):
            _compare(problems, f"{where} {role}", value, vectors.array(record[role]))
        velocities = vectors.array(record["velocities"])
        state, info = zo_step(state, lambda q: [mse_loss(velocities[i], target) for i in range(len(q))],
                              case.config)
        for role in ("losses", "theta", "adam_m", "adam_v"):
            actual = info.losses if role == "losses" else getattr(state, role)
            _compare(problems, f"{where} {role}", actual, vectors.array(record[role]))
        if info.sg_refreshed != record["sg_refreshed"] or info.d_eff != record["d_eff"]:
            problems.append(f"{where}: SG refresh / d_eff differ")
        if record["sg_refreshed"]:
            expected = vectors.array(record["sg_proj"])
            error = projector_error(state.sg_proj, expected, vectors.array(record["sg_singular_values"]))
            if not error <= RELATIVE_TOLERANCE:
                problems.append(f"{where} SG projector: relative error {error:.3g}")
            state = dataclasses.replace(state, sg_proj=expected)  # continue from the recorded P (see above)
    if "checkpoint" in entry:
        problems += _check_checkpoint(vectors.folder / entry["checkpoint"], vectors.array(entry["steps"][-1]["theta"]))
    return problems


def _check_checkpoint(path: Path, theta: np.ndarray) -> list[str]:
    from safetensors.numpy import load_file
    from safetensors import safe_open

    from ralu_edge.zo import ZOState

    with safe_open(str(path), framework="numpy") as handle:
        meta = handle.metadata()
    state = ZOState.from_arrays(load_file(str(path)), meta)
    return [] if np.array_equal(state.theta, theta) else ["zo checkpoint: theta differs from the last step's"]


def _check_subspace(vectors: Vectors) -> list[str]:
    from ralu_edge.zo.subspace import low_variance_directions

    problems = []
    for i, case in enumerate(vectors.index.get("subspace", [])):
        proj = low_variance_directions(vectors.array(case["history"]), case["nu"])
        error = projector_error(proj, vectors.array(case["proj"]), vectors.array(case["singular_values"]))
        if not error <= RELATIVE_TOLERANCE:
            problems.append(f"subspace case {i}: projector relative error {error:.3g}")
    return problems


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ralu_runtime.conformance", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Check a conformance vector folder (index.json + .bin arrays) against ralu_edge: replays "
                    "every recorded run with the recorded denoiser outputs and random draws and prints each "
                    "value that differs. Reads the folder only. Write vectors with "
                    "android_demo/scripts/make_vectors.py.")
    parser.add_argument("folder", type=Path, help="the vector folder, e.g. "
                                                  "android_demo/core/src/test/resources/vectors")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        problems = check_vectors(args.folder)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for line in problems:
        print(line)
    print(f"{len(problems)} mismatches in {args.folder}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
