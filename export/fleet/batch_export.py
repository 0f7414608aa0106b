"""Batch export: checkpoints x targets -> bundles, one task per bundle, each `ralu_export.bundle.build_bundle`
(ralu-export's library): built in OUT/<name>/<target>.tmp-* and renamed into place when complete, so a task whose
worker dies leaves no bundle, and its retry (or the next export to that path) removes the temporary folder it left.

Every request is validated by ralu-export's own `plan_export` (ralu_export.plan) before any task starts, so a bad
model, target or output path is one sentence and nothing is written. A retried task whose bundle is already in
place (its previous attempt died after publishing it) reports that bundle instead of failing on an existing --out.

Export tasks run in worker processes started with PYTHONHASHSEED=EXPORT_HASH_SEED: torch.export writes its
range-constraint metadata into the .onnx files in an order that follows Python's per-process string hashing
(measured: the same export in two processes wrote `{..., s38: ..., s97: ...}` and `{..., s97: ..., s38: ...}` into
vae_encoder/model.onnx), so without a fixed seed no two processes are guaranteed the same bundle bytes. With it, a
task's bundle equals `PYTHONHASHSEED=0 OMP_NUM_THREADS=<cpus> ralu-export ...` bit for bit."""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ralu_edge.errors import UserError
from ralu_export.fleet.generate import ray_worker_tag, worker_name

MANIFEST_NAME = "ralu_config.json"
EXPORT_HASH_SEED = "0"


@dataclass(frozen=True)
class ExportJob:
    """One bundle to build: a model (built-in name or pipeline folder) under a short name, for one target."""

    name: str
    model: str
    target: str
    out: Path


def parse_models(specs: list[str]) -> list[tuple[str, str]]:
    """`--model` values -> (name, model): `shapes`, `PATH` (named after its folder) or `NAME=PATH`."""
    from ralu_export import BUILTIN_MODELS
    from ralu_export.fleet.personalize import USER_ID

    if not specs:
        raise UserError("no --model given; pass `shapes` or a diffusers pipeline folder (repeat for several).")
    named = []
    for spec in specs:
        name, sep, model = spec.partition("=")
        if not sep:
            name, model = Path(spec.rstrip("/")).name, spec
        if model not in BUILTIN_MODELS:  # a folder: absolute, since workers have their own working directory
            model = str(Path(model).resolve())
        if not USER_ID.fullmatch(name):
            raise UserError(f"--model {spec!r}: {name!r} cannot be a folder name; write NAME=PATH with a NAME of "
                            "letters, digits, '.', '_' and '-'.")
        named.append((name, model))
    names = [n for n, _ in named]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UserError(f"two --model values are both named {repeated[0]!r}; name them apart with NAME=PATH.")
    return named


def plan_exports(models: list[str], targets: list[str], out: Path, precision: str, force: bool,
                 skip_existing: bool) -> tuple[list[ExportJob], list[ExportJob]]:
    """(jobs to run, jobs skipped because their bundle exists and skip_existing) after ralu-export's own
    validation of every request; UserError names the first problem."""
    from ralu_export.plan import ExportConfig, plan_export

    if not targets:
        raise UserError("no --target given; pass e.g. --target desktop (repeat for several).")
    if len(set(targets)) != len(targets):
        raise UserError("a --target is given twice; list each target once.")
    if force and skip_existing:
        raise UserError("--force replaces existing bundles and --skip-existing keeps them; pass one of them.")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is an existing file, not a folder; choose a folder path.")
    run, skipped = [], []
    for name, model in parse_models(models):
        for target in targets:
            job = ExportJob(name, model, target, out / name / target)
            if skip_existing and (job.out / MANIFEST_NAME).is_file():
                skipped.append(job)
                continue
            plan_export(ExportConfig(model, target, job.out, precision, force=force))
            run.append(job)
    return run, skipped


def export_one(job: ExportJob, precision: str, force: bool, fresh: bool, threads: int) -> dict:
    """Build one bundle (ralu-export's build_bundle) with `threads` torch threads; returns its path, its files'
    sha256 and the seconds taken. The graphs do not depend on the thread count, but the manifest records each
    graph's measured parity error, whose last digits do: `OMP_NUM_THREADS=N ralu-export` is the single-process
    run this equals bit for bit. fresh: the driver saw no bundle at job.out, so one found there now is this job's
    own, published by an attempt that died before reporting."""
    import torch

    from ralu_export.bundle import build_bundle
    from ralu_export.plan import ExportConfig

    started = time.perf_counter()
    torch.set_num_threads(threads)
    if not (fresh and (job.out / MANIFEST_NAME).is_file()):
        build_bundle(ExportConfig(job.model, job.target, job.out, precision, force=force))
    return {"name": job.name, "model": job.model, "target": job.target, "out": str(job.out),
            "files": bundle_hashes(job.out), "seconds": time.perf_counter() - started, "threads": threads,
            "python_hash_seed": os.environ.get("PYTHONHASHSEED"), "worker": worker_name("serial")}


def bundle_hashes(bundle: Path) -> dict[str, str]:
    """sha256 of every file the manifest lists, and of the manifest itself."""
    manifest = json.loads((bundle / MANIFEST_NAME).read_text())
    files = {entry["path"]: entry["sha256"] for entry in manifest["files"]}
    files[MANIFEST_NAME] = hashlib.sha256((bundle / MANIFEST_NAME).read_bytes()).hexdigest()
    return files


OnDone = Callable[[dict], None]


def _export_task(job: ExportJob, precision: str, force: bool, fresh: bool) -> dict:
    """The Ray task: export_one with torch threads = the CPUs Ray assigned it."""
    import ray

    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    return {**export_one(job, precision, force, fresh, max(1, int(cpus))), "worker": worker_name(ray_worker_tag())}


def run_serial(jobs: list[ExportJob], precision: str, force: bool, threads: int = 1,
               on_done: OnDone | None = None) -> list[dict]:
    """Every bundle in this process, in order (the reference path)."""
    results = []
    for job in jobs:
        results.append(export_one(job, precision, force, not job.out.exists(), threads))
        if on_done is not None:
            on_done(results[-1])
    return results


def run_on_ray(jobs: list[ExportJob], precision: str, force: bool, workers: int, cpus_per_worker: int = 1,
               max_retries: int = 3, on_done: OnDone | None = None) -> list[dict]:
    """One Ray task per bundle (at most `workers` in flight, `cpus_per_worker` CPUs and torch threads each),
    retried up to `max_retries` times when its worker process dies; results in job order."""
    import ray

    task = ray.remote(_export_task)
    fresh = {job: not job.out.exists() for job in jobs}
    pending, running, results = list(jobs), {}, {}
    while pending or running:
        while pending and len(running) < workers:
            job = pending.pop(0)
            ref = task.options(num_cpus=cpus_per_worker, max_retries=max_retries, retry_exceptions=False,
                               name=f"ralu-export:{job.name}/{job.target}",
                               runtime_env={"env_vars": {"PYTHONHASHSEED": EXPORT_HASH_SEED}},
                               ).remote(job, precision, force, fresh[job])
            running[ref] = job
        done, _ = ray.wait(list(running), num_returns=1)
        for ref in done:
            job = running.pop(ref)
            results[job] = ray.get(ref)
            if on_done is not None:
                on_done(results[job])
    return [results[job] for job in jobs]


def write_summary(out: Path, results: list[dict], skipped: list[ExportJob], run_info: dict) -> Path:
    path = out / "summary.json"
    out.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"bundles": results, "skipped": [str(j.out) for j in skipped], "run": run_info},
                              indent=1) + "\n")
    os.replace(tmp, path)
    return path


def format_table(results: list[dict], skipped: list[ExportJob]) -> str:
    lines = [f"{'bundle':<40} {'files':>5} {'manifest sha256':<16} {'seconds':>8}  worker"]
    for r in results:
        lines.append(f"{r['name'] + '/' + r['target']:<40} {len(r['files']):>5} "
                     f"{r['files'][MANIFEST_NAME][:16]:<16} {r['seconds']:>8.1f}  {r['worker']}")
    lines += [f"{j.name + '/' + j.target:<40} skipped: already exported" for j in skipped]
    return "\n".join(lines)
