"""Checking a vector folder: `check_vectors` replays it through ralu_edge — feeding the recorded denoiser
outputs and draws — and lists every value that no longer matches, the same checks the Kotlin core tests make:
presets and schedules, every run's host-side intermediates (a guided run's velocity recomputed from its two
recorded rows by ralu_edge's guidance), Canny, the runtime tokenizer recipe, every ZO update, the SG
refreshes, the checkpoint layout and the bundle fixture. numpy, ralu_edge, ralu_runtime.tokenization and
safetensors; never torch."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ralu_edge import presets as ralu_presets
from ralu_edge import schedules
from ralu_edge.edges import canny_edges, gray_uint8
from ralu_edge.errors import UserError
from ralu_edge.guidance import ClassifierFreeGuidance, stack_conditionings
from ralu_edge.renoise import correlation_alpha
from ralu_edge.sampler import ralu_sample, sample_baseline
from ralu_edge.seam import Conditioning
from ralu_export.conformance.recording import DenoiserCall, Draw, RecordingDenoiser, ReplayDenoiser, ReplayRng
from ralu_export.conformance.sources import ZoCase
from ralu_export.conformance.trace import ralu_trace
from ralu_export.conformance.vectors import (
    RELATIVE_TOLERANCE, SIGMA_TOLERANCE, Vectors, compare, load_vectors, relative_error,
)


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
            compare(problems, f"preset {name} {key}", entry[key], expected[key], SIGMA_TOLERANCE)
        for stage, sigmas in enumerate(expected["stage_sigmas"]):
            compare(problems, f"preset {name} stage {stage + 1} sigmas", entry["stage_sigmas"][stage], sigmas,
                    SIGMA_TOLERANCE)
        grid = tuple(entry["grid"])
        if entry["stage_lengths"] != list(preset.stage_lengths(*grid)) or entry["k"] != preset.num_selected(*grid):
            problems.append(f"preset {name}: stage lengths/k differ")
        compare(problems, f"preset {name} alpha", entry["alpha"], correlation_alpha(preset.c), SIGMA_TOLERANCE)
    return problems


def _check_schedules(vectors: Vectors) -> list[str]:
    problems: list[str] = []
    for case in vectors.index["schedules"]["flux_baseline"]:
        compare(problems, f"flux_baseline_sigmas({case['num_steps']}, {case['image_seq_len']})", case["sigmas"],
                schedules.flux_baseline_sigmas(case["num_steps"], case["image_seq_len"]), SIGMA_TOLERANCE)
    for case in vectors.index["schedules"]["static_shift"]:
        compare(problems, f"static_shift_sigmas({case['num_steps']}, {case['shift']})", case["sigmas"],
                schedules.static_shift_sigmas(case["num_steps"], case["shift"]), SIGMA_TOLERANCE)
    return problems


# ------------------------------------------------------------------------------------------ sampling runs

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
        compare(self.replay.mismatches, f"denoiser call {index} negative-row tokens", tokens[1:], tokens[:1], 0.0)
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
        compare(problems, f"{name} sigmas", sigmas, run["sigmas"], SIGMA_TOLERANCE)
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
                compare(problems, f"{name} {role}", expected, vectors.array(run["trace"][role]), tolerance)
    if replay.position != len(calls):
        problems.append(f"{name}: {replay.position} denoiser calls, {len(calls)} recorded")
    problems += [f"{name}: {m}" for m in replay.mismatches]
    if denoiser is not replay:  # guided: ralu_edge's guidance of the recorded halves is the recorded velocity
        for i, (ours, call) in enumerate(zip(denoiser.calls, calls)):
            compare(problems, f"{name} denoiser call {i} guided velocity", ours.velocity, call.velocity)
    compare(problems, f"{name} final tokens", final, vectors.array(run["trace"]["final"]))
    return problems


# ------------------------------------------------------------------------------------------ Canny, tokenizers

def _check_canny(vectors: Vectors) -> list[str]:
    entry, problems = vectors.index["canny"], []
    image = vectors.array(entry["image"])
    for mapping in ("affine", "reference_clip"):
        gray = gray_uint8(image, mapping)[0]
        edges = canny_edges(gray, entry["low_threshold"], entry["high_threshold"])
        compare(problems, f"canny gray {mapping}", gray, vectors.array(entry[mapping]["gray"]), 0.0)
        compare(problems, f"canny edges {mapping}", edges, vectors.array(entry[mapping]["edges"]), 0.0)
    return problems


def _check_tokenizers(vectors: Vectors) -> list[str]:
    """The runtime's recipe (PromptTokenizer) still gives every recorded `ids` and `padded` list. The index
    (version 1) records no end-of-text id; each tokenizer's post-processor closes every prompt with it, so it
    is the last id of the empty prompt."""
    from tokenizers import Tokenizer

    from ralu_runtime.tokenization import PromptTokenizer, TokenizerConfig

    problems = []
    for entry in vectors.index["tokenizers"]:
        path = vectors.folder / entry["file"]
        eos_id = Tokenizer.from_file(str(path)).encode("").ids[-1]
        config = TokenizerConfig(entry["max_length"], entry["pad_id"], eos_id, entry["first_free_id"])
        try:
            tokenizer = PromptTokenizer(path, config, tuple(t["content"] for t in entry["added_tokens"]))
        except UserError as e:
            problems.append(f"tokenizer {entry['name']}: {e}")
            continue
        for token in entry["added_tokens"]:
            if tokenizer.placeholder_ids[token["content"]] != token["id"]:
                problems.append(f"tokenizer {entry['name']}: added token {token['content']!r} has another id")
        for case in entry["cases"]:
            if tokenizer.ids(case["prompt"]) != case["ids"]:
                problems.append(f"tokenizer {entry['name']}: ids of {case['prompt']!r} differ")
            if tokenizer.padded_ids(case["prompt"]) != case["padded"]:
                problems.append(f"tokenizer {entry['name']}: padded ids of {case['prompt']!r} differ")
    return problems


# ------------------------------------------------------------------------------------------ personalization

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
    from ralu_edge.zo import init_state, velocity_mse, zo_step

    case, problems = zo_case_from_index(vectors, entry), []
    state = init_state(case.theta0, case.config, case.seed)
    for record in entry["steps"]:
        where = f"zo step {record['step']}"
        draw, pair = case.training_step(record["step"])
        if (int(draw.image_indices[0]), bool(draw.flips[0])) != (record["image_index"], record["flip"]):
            problems.append(f"{where}: image index / flip differ")
        compare(problems, f"{where} sigma", draw.sigmas, [record["sigma"]], SIGMA_TOLERANCE)
        for role, value in (("noise", draw.noise), ("posterior_noise", draw.posterior_noise), ("x0", pair.x0),
                            ("x_sigma", pair.x_sigma), ("target", pair.target)):
            compare(problems, f"{where} {role}", value, vectors.array(record[role]))
        velocities = vectors.array(record["velocities"])
        state, info = zo_step(state, lambda q: [velocity_mse(velocities[i], pair.target) for i in range(len(q))],
                              case.config)
        for role in ("losses", "theta", "adam_m", "adam_v"):
            actual = info.losses if role == "losses" else getattr(state, role)
            compare(problems, f"{where} {role}", actual, vectors.array(record[role]))
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
    from safetensors import safe_open
    from safetensors.numpy import load_file

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
