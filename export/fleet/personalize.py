"""Batch personalization: a manifest of users' image folders -> one learned-embeddings file per user, one task per
user, each exactly what `ralu-personalize --resume` does for that user (runtime/cli_personalize.py's image loading,
runtime/personalize.py's Personalizer). A user's files are

    OUT/<user>/learned_embeds.safetensors               written atomically when the fit is done
    OUT/<user>/learned_embeds.safetensors.checkpoint/   every --checkpoint-every steps

and every attempt resumes from that checkpoint, so a task Ray retries after its worker died (or a rerun of the whole
job) continues from the user's last checkpoint instead of step 0; a resumed fit equals an uninterrupted one bit for
bit (tests/test_runtime_personalize.py). A user whose input turns out bad (an unreadable photo, an init word of two
tokens) fails alone; the others finish, and the run ends with that user's sentence.

The manifest is JSON Lines, one user per line:
    {"user": "alice", "images": "alice/photos", "token": "<alice-cat>", "init_word": "cat"}
`images` is a folder of 1-20 photos; a relative path is relative to the manifest's folder."""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ralu_edge.errors import UserError
from ralu_export.fleet.generate import ray_worker_tag, worker_name

EMBEDDINGS_NAME = "learned_embeds.safetensors"
USER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
FIELDS = ("user", "images", "token", "init_word")


@dataclass(frozen=True)
class UserJob:
    user: str
    images: Path
    token: str
    init_word: str

    def embeddings(self, out: Path) -> Path:
        return out / self.user / EMBEDDINGS_NAME

    def checkpoint(self, out: Path) -> Path:
        """Where ralu-personalize keeps the checkpoint of `--out <embeddings>`."""
        path = self.embeddings(out)
        return path.with_name(path.name + ".checkpoint")


def read_users(manifest: Path) -> list[UserJob]:
    """The users of a manifest (see the module docstring), validated; UserError names the line and the fix."""
    from ralu_runtime.cli_personalize import IMAGE_SUFFIXES

    if not manifest.is_file():
        raise UserError(f"{manifest}: no such manifest; write one JSON object per line with the fields "
                        f"{', '.join(FIELDS)}.")
    jobs, seen = [], set()
    for number, line in enumerate(manifest.read_text().splitlines(), 1):
        if not line.strip():
            continue
        where = f"{manifest}:{number}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            raise UserError(f"{where}: not a JSON object; write one object per line, e.g. {{\"user\": \"alice\", "
                            "\"images\": \"alice/photos\", \"token\": \"<alice-cat>\", \"init_word\": "
                            "\"cat\"}.") from None
        if not isinstance(entry, dict) or sorted(entry) != sorted(FIELDS) or \
                not all(isinstance(entry[f], str) and entry[f].strip() for f in FIELDS):
            raise UserError(f"{where}: needs exactly the text fields {', '.join(FIELDS)}.")
        user = entry["user"]
        if not USER_ID.fullmatch(user):
            raise UserError(f"{where}: user {user!r} cannot be a folder name; use letters, digits, '.', '_' and '-'.")
        if user in seen:
            raise UserError(f"{where}: user {user!r} is listed twice; give each user one line.")
        seen.add(user)
        if any(c.isspace() for c in entry["token"]):
            raise UserError(f"{where}: token {entry['token']!r} contains whitespace; use one word such as '<my-cat>'.")
        images = manifest.parent.resolve() / entry["images"]  # absolute: workers have their own working directory
        if not images.is_dir():
            raise UserError(f"{where}: {images} is not a folder; point `images` at a folder of 1-20 photos.")
        count = sum(1 for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not 1 <= count <= 20:
            raise UserError(f"{where}: {images} holds {count} PNG/JPEG images; personalization uses 1-20.")
        jobs.append(UserJob(user, images, entry["token"], entry["init_word"]))
    if not jobs:
        raise UserError(f"{manifest}: lists no user; write one JSON object per line.")
    return jobs


def check_out(out: Path, jobs: list[UserJob]) -> None:
    """UserError, before any work, for an --out (or a user's path in it) that cannot be written. An existing OUT
    is fine: its checkpoints are what a rerun resumes from."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is an existing file, not a folder; choose a folder path.")
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: the folder {out.parent} does not exist; create it first.")
    for job in jobs:
        for path in (job.embeddings(out).parent, job.checkpoint(out)):
            if path.exists() and not path.is_dir():
                raise UserError(f"{path} exists and is not a folder; move it away or choose another --out.")


def personalize_user(bundle: str, job: UserJob, out: Path, config, threads: int) -> dict:
    """One user's fit, as `ralu-personalize --bundle B --images I --token T --init-word W --threads N --resume --out
    OUT/<user>/learned_embeds.safetensors` runs it; returns what it did."""
    from ralu_runtime.cli_personalize import load_images
    from ralu_runtime.personalize import Personalizer

    started = time.perf_counter()
    personalizer = Personalizer.from_bundle(bundle, threads=threads)
    images, _ = load_images(job.images, personalizer.resolution.height)
    target = job.embeddings(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    result = personalizer.fit(images, job.token, job.init_word, config, checkpoint=job.checkpoint(out), resume=True)
    personalizer.save(result, target, job.init_word)
    return {"user": job.user, "embeddings": str(target), "sha256": hashlib.sha256(target.read_bytes()).hexdigest(),
            "steps": result.steps_done, "resumed_from": result.resumed_from,
            "final_loss": result.losses[-1] if result.losses else None, "seconds": time.perf_counter() - started,
            "worker": worker_name("serial")}


def _personalize_task(bundle: str, job: UserJob, out: Path, config) -> dict:
    """The Ray task: personalize_user with ORT threads = the CPUs Ray assigned it."""
    import ray

    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    return {**personalize_user(bundle, job, out, config, max(1, int(cpus))), "worker": worker_name(ray_worker_tag())}


OnDone = Callable[[dict], None]


def run_serial(bundle: str, jobs: list[UserJob], out: Path, config, threads: int = 1,
               on_done: OnDone | None = None) -> list[dict]:
    """Every user in this process, in manifest order (the reference path)."""
    results = []
    for job in jobs:
        results.append(_attempt(lambda: personalize_user(bundle, job, out, config, threads), job))
        if on_done is not None:
            on_done(results[-1])
    return results


def run_on_ray(bundle: str, jobs: list[UserJob], out: Path, config, workers: int, cpus_per_worker: int = 1,
               max_retries: int = 3, on_done: OnDone | None = None) -> list[dict]:
    """One Ray task per user (at most `workers` in flight, each `cpus_per_worker` CPUs), retried up to
    `max_retries` times when its worker process dies; results in manifest order."""
    import ray

    task = ray.remote(_personalize_task)
    pending, running, results = list(jobs), {}, {}
    while pending or running:
        while pending and len(running) < workers:
            job = pending.pop(0)
            ref = task.options(num_cpus=cpus_per_worker, max_retries=max_retries, retry_exceptions=False,
                               name=f"ralu-personalize:{job.user}").remote(bundle, job, out, config)
            running[ref] = job
        done, _ = ray.wait(list(running), num_returns=1)
        for ref in done:
            job = running.pop(ref)
            results[job.user] = _attempt(lambda: ray.get(ref), job)
            if on_done is not None:
                on_done(results[job.user])
    return [results[job.user] for job in jobs]


def _attempt(call: Callable[[], dict], job: UserJob) -> dict:
    """The user's result, or {"user", "error"} when the user's own input failed it (a UserError, also from inside
    a Ray task); any other failure is a bug and propagates."""
    from ralu_export.fleet.cluster import user_error_in

    try:
        return call()
    except Exception as e:
        found = user_error_in(e)
        if found is None:
            raise
        return {"user": job.user, "error": str(found)}


def write_summary(out: Path, bundle: str, config, results: list[dict], run_info: dict) -> Path:
    """OUT/summary.json (temporary name, then renamed): the bundle, the fit settings and one entry per user."""
    path = out / "summary.json"
    out.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"bundle": bundle, "config": config.to_dict(), "users": results, "run": run_info},
                              indent=1, default=str) + "\n")
    os.replace(tmp, path)
    return path


def format_table(results: list[dict]) -> str:
    lines = [f"{'user':<20} {'steps':>6} {'resumed':>8} {'final loss':>11} {'sha256':<12}  worker"]
    for r in results:
        if "error" in r:
            lines.append(f"{r['user']:<20} failed: {r['error']}")
            continue
        loss = "–" if r["final_loss"] is None else f"{r['final_loss']:.5f}"
        lines.append(f"{r['user']:<20} {r['steps']:>6} {r['resumed_from']:>8} {loss:>11} {r['sha256'][:12]:<12}  "
                     f"{r['worker']}")
    return "\n".join(lines)
