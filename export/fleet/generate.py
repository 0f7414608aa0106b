"""Generating the grid's images, in whichever process runs them: the driver (the serial path) or a Ray Data actor.
Both call `generate_row` with a `PipelinePool`, so the two paths run the same code and differ only in where.
Imports no torch and no Ray at module level: a worker pays for ONNX Runtime and the runtime only.

A pool keeps one `ralu_runtime.Pipeline` per (bundle, cache setting) for the life of its process, so ONNX Runtime
sessions are opened once per worker and reused for every image it serves; each row records how many Pipelines
its process had opened and how many ORT sessions were alive, which is how the reuse is counted."""

from __future__ import annotations

import gc
import hashlib
import os
import socket

import numpy as np

from ralu_export.fleet.grid import CACHE_SETTINGS


def live_ort_sessions() -> int:
    """ONNX Runtime sessions alive in this process (every session the runtime opens is one of these objects). By
    exact type: isinstance would ask every tracked object for its __class__, which some of torch's deprecated
    objects answer with a warning."""
    import onnxruntime as ort

    return sum(1 for obj in gc.get_objects() if type(obj) is ort.InferenceSession)


class PipelinePool:
    """This process's Pipelines, one per (bundle, cache setting), opened at first use with `threads` ORT threads
    and kept. `worker` names the process in every row it generates (pid, host, Ray actor id or `serial`)."""

    def __init__(self, threads: int, worker: str):
        self.threads, self.worker = threads, worker
        self._pipelines: dict[tuple[str, str], object] = {}
        self.images = 0

    @property
    def opened(self) -> int:
        return len(self._pipelines)

    def pipeline(self, bundle: str, cache: str):
        key = (bundle, cache)
        if key not in self._pipelines:
            from ralu_runtime.pipeline import Pipeline

            self._pipelines[key] = Pipeline.from_bundle(bundle, threads=self.threads)
        return self._pipelines[key]


def generate_row(pool: PipelinePool, task: dict) -> dict:
    """One image of the grid: the task's fields plus the raw pixels (`image`: uint8 bytes of [H, W, 3]), their
    sha256, the generation stats, and who made it."""
    setting = CACHE_SETTINGS[task["cache"]]
    pipe = pool.pipeline(task["bundle"], task["cache"])
    result = pipe(task["prompt"], mode=task["mode"], steps=int(task["steps"]),
                  seed=int(task["seed"]) + int(task["prompt_index"]), **setting.call_kwargs)
    image = np.ascontiguousarray(result.image)
    pool.images += 1
    return {
        **{k: task[k] for k in ("bundle_index", "bundle", "cache", "mode", "seed", "prompt_index", "prompt", "steps")},
        "image": image.tobytes(), "height": int(image.shape[0]), "width": int(image.shape[1]),
        "image_sha256": hashlib.sha256(image.tobytes()).hexdigest(),
        "nfe": int(result.stats.nfe), "image_token_steps": int(result.stats.image_token_steps),
        "seconds_total": float(result.stats.seconds_total), "seconds_denoise": float(result.stats.seconds_denoise),
        "worker": pool.worker, "worker_images": pool.images, "worker_pipelines": pool.opened,
        "worker_sessions": live_ort_sessions(),
    }


def image_of(row: dict) -> np.ndarray:
    """The uint8 [H, W, 3] pixels of a row."""
    return np.frombuffer(row["image"], dtype=np.uint8).reshape(int(row["height"]), int(row["width"]), 3)


def worker_name(tag: str = "") -> str:
    """`<host>:<pid>[:<tag>]`: the process, and e.g. ray_worker_tag()."""
    name = f"{socket.gethostname()}:{os.getpid()}"
    return f"{name}:{tag}" if tag else name


def ray_worker_tag() -> str:
    """`node-<id>` of the Ray node this worker runs on, plus `/actor-<id>` in an actor (a restarted actor keeps
    its id but not its pid); call it inside a Ray task or actor."""
    import ray

    context = ray.get_runtime_context()
    actor = context.get_actor_id()
    return f"node-{context.get_node_id()[:8]}" + (f"/actor-{actor[:12]}" if actor else "")


class GenerateImages:
    """The Ray Data actor: a PipelinePool whose ORT thread count is the CPUs Ray assigned this actor. Called with a
    batch of task rows (numpy format), returns the generated rows as columns."""

    def __init__(self):
        import ray

        context = ray.get_runtime_context()
        cpus = context.get_assigned_resources().get("CPU", 1.0)
        self.pool = PipelinePool(max(1, int(cpus)), worker_name(ray_worker_tag()))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        """A user's mistake that only a worker can see (a bundle path missing on its node) comes back as a
        one-column row {"error": sentence}: Ray Data hands the driver a UserError raised here only as text."""
        from ralu_edge.errors import UserError

        count = len(next(iter(batch.values())))
        try:
            rows = [generate_row(self.pool, {k: plain(v[i]) for k, v in batch.items()}) for i in range(count)]
        except UserError as e:
            return {"error": [str(e)]}
        return {k: [r[k] for r in rows] for k in rows[0]}


def plain(value):
    """A numpy scalar (from a batch column or a dataset row) as the Python value it holds."""
    return value.item() if isinstance(value, np.generic) else value
