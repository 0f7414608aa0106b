"""Fleet evaluation: generate every image of an EvalPlan, serially in this process or as a Ray Data pipeline over
an actor pool, then score them with the RALU study's metrics (scoring.py) and write the results (results.py).

On Ray the tasks are a dataset with one block per image; `map_batches` runs them on a fixed pool of
`GenerateImages` actors (generate.py), each with `cpus_per_worker` CPUs and as many ORT threads, and the driver
streams the rows back as they finish. Ray Data restarts an actor whose process dies and retries the batch it held
(its default for actor pools: max_restarts=-1, max_task_retries=-1), and a failed attempt's output never reaches the
driver; the driver still checks that every image of the grid came back exactly once."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from ralu_edge.errors import UserError
from ralu_export.fleet.generate import PipelinePool, generate_row, worker_name
from ralu_export.fleet.grid import EvalPlan, task_key

OnRow = Callable[[dict], None]


@dataclass
class Run:
    """What a generation pass returned: rows sorted by task key, and how it ran."""

    rows: list[dict]
    seconds: float
    path: str  # "serial" or "ray"
    workers: int
    cpus_per_worker: int

    @property
    def images_per_second(self) -> float:
        return len(self.rows) / self.seconds if self.seconds else 0.0


def run_serial(plan: EvalPlan, threads: int = 1, on_row: OnRow | None = None) -> Run:
    """Every image in this process, in task order: the single-process reference the Ray path must equal (use the
    same ORT thread count as the Ray workers' CPUs: ORT's sums depend on it)."""
    pool = PipelinePool(threads, worker_name("serial"))
    started = time.perf_counter()
    rows = []
    for task in plan.tasks():
        rows.append(generate_row(pool, task))
        if on_row is not None:
            on_row(rows[-1])
    return Run(complete(plan, rows), time.perf_counter() - started, "serial", 1, threads)


def run_on_ray(plan: EvalPlan, workers: int, cpus_per_worker: int = 1, on_row: OnRow | None = None) -> Run:
    """Every image on the connected Ray cluster: a Ray Data `map_batches` over `workers` actors of
    `cpus_per_worker` CPUs (one image per batch, so the pool balances itself), rows streamed back as they finish.

    Through Ray Client (--address ray://...) Ray Data cannot execute on the client (2.60: its streaming executor
    needs a core worker), so the pipeline is driven from a zero-CPU task on the cluster and its rows come back at
    the end."""
    import ray
    from ray.util.client import ray as ray_client

    started = time.perf_counter()
    if ray_client.is_connected():
        rows = ray.get(ray.remote(num_cpus=0)(generate_rows).remote(plan, workers, cpus_per_worker))
        for row in rows:
            if on_row is not None:
                on_row(row)
    else:
        rows = generate_rows(plan, workers, cpus_per_worker, on_row)
    return Run(complete(plan, rows), time.perf_counter() - started, "ray", workers, cpus_per_worker)


def generate_rows(plan: EvalPlan, workers: int, cpus_per_worker: int, on_row: OnRow | None = None) -> list[dict]:
    """The Ray Data pipeline, run from this process (a driver or a task): rows in the order they finish."""
    import ray

    from ralu_export.fleet.generate import GenerateImages, plain

    tasks = plan.tasks()
    dataset = ray.data.from_items(tasks, override_num_blocks=len(tasks)).map_batches(
        GenerateImages, batch_size=1, batch_format="numpy", num_cpus=cpus_per_worker,
        compute=ray.data.ActorPoolStrategy(size=workers))
    rows = []
    for row in dataset.iter_rows():
        if row.get("error"):
            raise UserError(row["error"])
        rows.append({k: plain(v) for k, v in row.items()})
        if on_row is not None:
            on_row(rows[-1])
    return rows


def complete(plan: EvalPlan, rows: list[dict]) -> list[dict]:
    """The rows sorted by task key, after checking that each image of the grid came back exactly once (a lost or
    duplicated image is a bug in the job, not the user's doing)."""
    expected = sorted(task_key(t) for t in plan.tasks())
    keys = sorted(task_key(r) for r in rows)
    if keys != expected:
        missing, seen = set(expected) - set(keys), set()
        duplicated = {k for k in keys if k in seen or seen.add(k)}
        raise RuntimeError(f"fleet eval returned {len(keys)} rows for {len(expected)} images: missing "
                           f"{sorted(missing)[:5]}, duplicated {sorted(duplicated)[:5]}")
    return sorted(rows, key=task_key)
