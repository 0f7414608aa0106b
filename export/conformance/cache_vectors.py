"""Conformance vectors of temporal caching (issue 16, ralu_edge.cache): a small vector folder of its own
(default android_demo/core/src/test/resources/cache_vectors, the format of `ralu_export.conformance.vectors`)
with a few cached sampling runs of the built-in model, so that a port (the Kotlin core's Cache.kt) proves it
makes the same run/skip decisions and the same reused or forecast velocities.

Each run records the cache text, the seam's output at every call (the model's velocity where it ran, the cached
or forecast one where it did not), whether the model ran, the RALU random draws, the initial noise and the final
latent; the index also holds the TeaCache rescale the runs used, fitted by `ralu_edge.cache.fit_rescale` on
uncached runs of the same model (as an export calibrates it). A replay feeds the recorded model velocities to
the port's cache in order and compares the rest.

`python -m ralu_export.conformance.cache_vectors [--out DIR]` writes the folder with the torch reference over the
built-in shapes model (needs torch); `check_cache_vectors(folder)` replays it through ralu_edge (numpy only)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ralu_edge import presets as ralu_presets
from ralu_edge import schedules
from ralu_edge.cache import CacheConfig, CachedDenoiser, SignalRecorder, fit_rescale
from ralu_edge.rng import rng_for
from ralu_edge.sampler import ralu_sample, sample_baseline
from ralu_edge.seam import Conditioning
from ralu_export.conformance.recording import Draw, RecordingDenoiser, RecordingRng, ReplayRng
from ralu_export.conformance.vectors import FORMAT, INDEX_NAME, RELATIVE_TOLERANCE, VERSION, ArrayStore, compare

DEFAULT_OUT = Path(__file__).resolve().parents[2] / "android_demo/core/src/test/resources/cache_vectors"
PROMPT = "a large red circle on the left"
BASELINE_STEPS = 6


@dataclass(frozen=True)
class CacheRun:
    """One recorded run: `mode` is "baseline" (BASELINE_STEPS steps, FLUX's schedule) or a RALU preset name."""

    name: str
    mode: str
    cache: str
    seed: int


RUNS = (CacheRun("baseline6-teacache", "baseline", "teacache:0.15", 0),
        CacheRun("baseline6-taylorseer", "baseline", "taylorseer:2,2", 0),
        CacheRun("flux-7x-teacache", "flux-7x", "teacache:0.15", 1),
        CacheRun("flux-7x-taylorseer", "flux-7x", "taylorseer:1,2", 1))


def _sample(denoiser, run: CacheRun, noise: np.ndarray, cond: Conditioning, grid: tuple[int, int], rng) -> np.ndarray:
    if run.mode == "baseline":
        sigmas = schedules.flux_baseline_sigmas(BASELINE_STEPS, grid[0] * grid[1])
        return sample_baseline(denoiser, noise, *grid, sigmas, cond)
    return ralu_sample(denoiser, noise, *grid, ralu_presets.get(run.mode), cond, rng=rng,
                       latent_channels=noise.shape[2] // 4).tokens


def write_cache_vectors(out_dir: Path, denoiser, cond: Conditioning, noise_for, grid: tuple[int, int],
                        provenance: dict[str, str]) -> Path:
    """Fit the rescale on uncached runs of `denoiser`, record RUNS with it, write the folder (replacing out_dir
    once complete). noise_for(seed) -> [1, L, C] float32 initial noise."""
    recorder = SignalRecorder(denoiser)
    for run in RUNS:
        _sample(recorder, run, noise_for(run.seed), cond, grid, rng_for(run.seed, "ralu"))
    coefficients = fit_rescale(recorder.signals, recorder.sigma_steps, recorder.changes)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        store = ArrayStore(work)
        index: dict[str, Any] = {"format": FORMAT, "version": VERSION, "provenance": provenance,
                                 "tolerances": {"relative": RELATIVE_TOLERANCE}, "coefficients": list(coefficients),
                                 "baseline_steps": BASELINE_STEPS, "grid": list(grid), "runs": []}
        for run in RUNS:
            cached = CachedDenoiser(denoiser, CacheConfig.parse(run.cache), coefficients)
            seam, rng = RecordingDenoiser(cached), RecordingRng(rng_for(run.seed, "ralu"))
            noise = noise_for(run.seed)
            final = _sample(seam, run, noise, cond, grid, rng)
            ran = cached.stats().ran
            if all(ran):
                raise AssertionError(f"{run.name}: the cache skipped nothing, so the run checks no decision")
            p = f"{run.name}/"
            index["runs"].append({
                "name": run.name, "mode": run.mode, "cache": run.cache, "seed": run.seed, "ran": list(ran),
                "sigmas": [float(c.sigmas[0]) for c in seam.calls], "noise": store.add(p + "noise", noise),
                "outputs": [store.add(f"{p}out{i:02d}", c.velocity) for i, c in enumerate(seam.calls)],
                "draws": [{"method": d.method, "loc": d.loc, "scale": d.scale, "shape": list(d.values.shape),
                           "values": store.add(f"{p}draw{i}", d.values)} for i, d in enumerate(rng.draws)],
                "final": store.add(p + "final", final)})
        index["arrays"] = store.entries
        (work / INDEX_NAME).write_text(json.dumps(index, indent=1) + "\n", encoding="utf-8")
        old = out_dir.with_name(f".{out_dir.name}-old-{os.getpid()}")
        if out_dir.exists():
            os.replace(out_dir, old)
        os.replace(work, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out_dir


class _ModelReplay:
    """The model under the cache: returns the recorded outputs of the calls that ran, in order."""

    def __init__(self, velocities: list[np.ndarray]):
        self.velocities, self.position = velocities, 0

    def __call__(self, tokens, positions, sigmas, cond):
        if self.position >= len(self.velocities):
            raise AssertionError("the cache ran the model more often than the recording")
        self.position += 1
        return self.velocities[self.position - 1]


def check_cache_vectors(folder: Path) -> list[str]:
    """Replay every run of the folder through ralu_edge's cache and samplers; one line per disagreement."""
    folder = Path(folder)
    index = json.loads((folder / INDEX_NAME).read_text(encoding="utf-8"))

    def array(name: str) -> np.ndarray:
        entry = index["arrays"][name]
        data = np.fromfile(folder / entry["file"], dtype=np.dtype(entry["dtype"]).newbyteorder("<"))
        return data.reshape(entry["shape"]).astype(entry["dtype"])

    problems: list[str] = []
    cond = Conditioning(np.zeros((1, 1, 1), np.float32), np.zeros((1, 1), np.float32))
    for entry in index["runs"]:
        outputs = [array(name) for name in entry["outputs"]]
        model = _ModelReplay([o for o, ran in zip(outputs, entry["ran"]) if ran])
        cached = CachedDenoiser(model, CacheConfig.parse(entry["cache"]), index["coefficients"])
        seam = RecordingDenoiser(cached)
        draws = [Draw(d["method"], array(d["values"]), d["loc"], d["scale"]) for d in entry["draws"]]
        run = CacheRun(entry["name"], entry["mode"], entry["cache"], entry["seed"])
        final = _sample(seam, run, array(entry["noise"]), cond, tuple(index["grid"]), ReplayRng(draws))
        if list(cached.stats().ran) != entry["ran"]:
            problems.append(f"{run.name}: decisions {list(cached.stats().ran)} but the vectors say {entry['ran']}")
            continue
        for i, (call, expected) in enumerate(zip(seam.calls, outputs)):
            compare(problems, f"{run.name} call {i} output", call.velocity, expected)
        compare(problems, f"{run.name} final", final, array(entry["final"]))
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="vector folder to (re)write")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from ralu_export import torch_backend as tb
    from ralu_export.models import load_flux_pipeline

    torch.set_num_threads(args.threads)
    pipe = load_flux_pipeline("shapes")
    grid = tb.packed_grid(pipe, 128, 128)
    provenance = {"script": "python -m ralu_export.conformance.cache_vectors",
                  "denoiser": "ralu_export.torch_backend.TorchFluxDenoiser over the built-in shapes model, fp32, CPU",
                  "prompt": PROMPT, "noise": "FluxPipeline's initial noise (torch.Generator().manual_seed(seed))",
                  "torch": torch.__version__, "numpy": np.__version__}
    out = write_cache_vectors(args.out, tb.TorchFluxDenoiser(pipe.transformer), tb.encode_prompt(pipe, [PROMPT], 32),
                              lambda seed: tb.initial_noise(pipe, seed, 128, 128), grid, provenance)
    problems = check_cache_vectors(out)
    print(out if not problems else "\n".join(problems))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
