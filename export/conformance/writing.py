"""Writing a vector folder: `write_vectors` runs RALU and a plain baseline through any seam denoiser while
recording every denoiser input and output and every random draw, then writes the intermediate host-side values
(sigma lists, token layouts and positions, RoPE tables, edge scores, selected regions, renoise draws and
results, final latent), tokenizer ids from the runtime's recipe, a Canny case, SG refreshes, an optional
fixture (e.g. a small bundle) and every ZO update of a few personalization steps. A run with classifier-free
guidance records, per call, the guided velocity the sampler saw and the two rows of the inner batch-2 call
(`velocity_uncond` for the negative prompt "", `velocity_cond` for the prompt). numpy, ralu_edge,
ralu_runtime.tokenization and safetensors; never torch."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ralu_edge import presets as ralu_presets
from ralu_edge import schedules
from ralu_edge.guidance import ClassifierFreeGuidance, stack_conditionings
from ralu_edge.rng import rng_for
from ralu_edge.sampler import StepInfo, ralu_sample, sample_baseline
from ralu_edge.seam import Conditioning, Denoiser
from ralu_export.conformance.recording import RecordingDenoiser, RecordingRng
from ralu_export.conformance.sources import NEGATIVE_PROMPT, QueryVelocity, RunSpec, VectorSources, ZoCase
from ralu_export.conformance.synthetic import canny_entry, preset_entries, schedule_entries, subspace_entries
from ralu_export.conformance.trace import SHAPES_AXES, ralu_trace
from ralu_export.conformance.vectors import (
    FORMAT, INDEX_NAME, RELATIVE_TOLERANCE, SIGMA_TOLERANCE, VERSION, ArrayStore,
)
from ralu_runtime.tokenization import PromptTokenizer, TokenizerConfig


def write_vectors(out_dir: Path, sources: VectorSources) -> Path:
    """Write a vector folder (ralu_export.conformance.vectors) to out_dir, replacing an existing one only once
    the new one is complete. Returns out_dir. extra_files(folder) may add files (e.g. a bundle fixture) and
    returns the index entries describing them, merged under "extra"."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        store = ArrayStore(work)
        index: dict[str, Any] = {"format": FORMAT, "version": VERSION, "provenance": sources.provenance,
                                 "tolerances": {"relative": RELATIVE_TOLERANCE, "sigma": SIGMA_TOLERANCE}}
        index["presets"] = preset_entries(sources.grid)
        index["schedules"] = schedule_entries()
        index["runs"] = [_write_run(store, spec, sources.denoiser, _run_conditioning(spec, sources.cond_for),
                                    sources.grid, sources.latent_channels, sources.noise_for(spec.seed))
                         for spec in sources.runs]
        index["canny"] = canny_entry(store)
        index["tokenizers"] = tokenizer_entries(work, sources.tokenizer_files, sources.prompts, sources.added_tokens)
        if sources.zo_case is not None:
            if sources.query_velocity is None:
                raise ValueError("a zo_case needs a query_velocity callable")
            index["zo"] = _write_zo(store, sources.zo_case, sources.query_velocity)
            index["subspace"] = subspace_entries(store)
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


# ------------------------------------------------------------------------------------------ sampling runs

def _run_conditioning(spec: RunSpec, cond_for: Callable[[str], Conditioning]) -> Conditioning:
    """The prompt's conditioning, or for a guided run the [negative "", prompt] batch of 2."""
    if spec.guidance_scale is None:
        return cond_for(spec.prompt)
    return stack_conditionings(cond_for(NEGATIVE_PROMPT), cond_for(spec.prompt))


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


def _write_run(store: ArrayStore, spec: RunSpec, denoiser: Denoiser, cond: Conditioning,
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
    entry["rope_axes_dim"] = list(SHAPES_AXES)
    entry["trace"] = {role: store.add(prefix + role, array) for role, array in trace.items()
                      if role not in ("noise", "jitter", "renoise1_eps", "renoise2_eps")}
    if not np.array_equal(trace["final"], result.tokens) or not np.array_equal(trace["selected"], result.selected):
        raise AssertionError(f"{spec.name}: ralu_trace disagrees with ralu_sample; fix ralu_trace")
    return entry


# ------------------------------------------------------------------------------------------ tokenizers

def tokenizer_entries(folder: Path, tokenizer_files: dict[str, tuple[Path, str, TokenizerConfig]],
                      prompts: Sequence[str], added_tokens: Sequence[str]) -> list[dict[str, Any]]:
    """Token ids of `prompts` from the runtime's recipe (ralu_runtime.tokenization.PromptTokenizer, with
    `added_tokens` added as it adds learned tokens): for each name -> (tokenizer.json, kind, config), the file is
    copied to `folder/tokenizers/<name>/tokenizer.json` and each prompt encoded twice: plain (`ids`, no padding
    or truncation) and as the text encoders read it (`padded`: truncated and padded to max_length)."""
    out = []
    for name, (path, kind, config) in tokenizer_files.items():
        target = folder / "tokenizers" / name / "tokenizer.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        tokenizer = PromptTokenizer(Path(path), config, tuple(added_tokens))
        cases = [{"prompt": p, "ids": tokenizer.ids(p), "padded": tokenizer.padded_ids(p)} for p in prompts]
        out.append({"name": name, "file": f"tokenizers/{name}/tokenizer.json", "kind": kind,
                    "max_length": config.max_length, "pad_id": config.pad_token_id,
                    "first_free_id": config.first_free_id,
                    "added_tokens": [{"content": t, "id": tokenizer.placeholder_ids[t]} for t in added_tokens],
                    "cases": cases})
    return out


# ------------------------------------------------------------------------------------------ personalization

def _write_zo(store: ArrayStore, case: ZoCase, query_velocity: QueryVelocity) -> dict[str, Any]:
    from ralu_edge.zo import init_state, project_out, rge_gradient, velocity_mse, zo_step
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
        draw, pair = case.training_step(step)
        sigma = float(draw.sigmas[0])
        velocities: list[np.ndarray] = []

        def loss_fn(queries):
            out = []
            for row in queries:
                velocities.append(np.asarray(query_velocity(np.array(row), pair.x_sigma, sigma), np.float32))
                out.append(velocity_mse(velocities[-1], pair.target))
            return np.array(out)

        before = state
        state, info = zo_step(state, loss_fn, case.config)
        directions = perturbation_directions(rng_for(case.seed, PURPOSE_DIRECTIONS, step), case.config.n, state.dim)
        gradient = project_out(rge_gradient(info.losses, directions, case.config.mu, before.d_eff,
                                            case.config.grad_normalization), before.sg_proj)
        record = {"step": step, "image_index": int(draw.image_indices[0]), "flip": bool(draw.flips[0]),
                  "sigma": sigma, "loss": info.loss, "grad_norm": info.grad_norm, "theta_norm": info.theta_norm,
                  "d_eff": info.d_eff, "sg_refreshed": info.sg_refreshed, "sg_rank": info.sg_rank}
        for role, array in (("noise", draw.noise), ("posterior_noise", draw.posterior_noise), ("x0", pair.x0),
                            ("x_sigma", pair.x_sigma), ("target", pair.target), ("directions", directions),
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
