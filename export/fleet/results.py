"""Writing a fleet evaluation's results: one folder, built as OUT.tmp-* beside OUT and renamed into place when
complete (as ralu-export does), so a failed or interrupted run leaves nothing behind.

    OUT/table.txt            the metrics table the command prints
    OUT/summary.json         the grid, per-group metrics, per-worker counts (images, Pipelines, ORT sessions), timing
    OUT/results.parquet      one row per image: task, PNG path, pixel sha256, generation stats, worker, scores
    OUT/results.jsonl        the same rows as JSON lines (readable without pyarrow)
    OUT/images/<bundle>/<cache>/<mode>/s<seed>-p<prompt>.png"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from ralu_edge.errors import UserError
from ralu_export.fleet.generate import image_of
from ralu_export.fleet.grid import EvalPlan

RESULT_COLUMNS = ("bundle_index", "bundle", "cache", "mode", "seed", "prompt_index", "prompt", "steps", "png",
                  "image_sha256", "height", "width", "nfe", "image_token_steps", "seconds_total", "seconds_denoise",
                  "worker", "worker_images", "worker_pipelines", "worker_sessions", "attr_correct", "shape_correct",
                  "colour_correct", "position_correct", "psnr_db", "ssim")


def png_path(plan: EvalPlan, row: dict) -> str:
    bundle = plan.bundles[row["bundle_index"]]
    return f"images/{bundle.label}/{row['cache']}/{row['mode']}/s{row['seed']}-p{row['prompt_index']:03d}.png"


def worker_summary(rows: list[dict]) -> list[dict]:
    """Per worker process: images generated, Pipelines it opened, most ORT sessions alive at once."""
    workers: dict[str, dict] = {}
    for r in rows:
        w = workers.setdefault(r["worker"], {"worker": r["worker"], "images": 0, "pipelines_opened": 0,
                                             "ort_sessions": 0})
        w["images"] += 1
        w["pipelines_opened"] = max(w["pipelines_opened"], r["worker_pipelines"])
        w["ort_sessions"] = max(w["ort_sessions"], r["worker_sessions"])
    return sorted(workers.values(), key=lambda w: w["worker"])


def result_rows(plan: EvalPlan, rows: list[dict], scores: list[dict]) -> list[dict]:
    """The rows as written (no pixels: the PNG path instead), scores merged, every column present."""
    out = []
    for row, extra in zip(rows, scores):
        merged = {**row, **extra, "png": png_path(plan, row)}
        out.append({c: merged.get(c) for c in RESULT_COLUMNS})
    return out


def write_results(out: Path, plan: EvalPlan, rows: list[dict], scores: list[dict], groups: list[dict],
                  table: str, run_info: dict, force: bool = False) -> Path:
    """The results folder (see the module docstring); returns `out`."""
    from PIL import Image

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{out.name}.tmp-", dir=out.parent))
    try:
        table_rows = result_rows(plan, rows, scores)
        for row, written in zip(rows, table_rows):
            path = tmp / written["png"]
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image_of(row)).save(path, format="PNG")
        (tmp / "table.txt").write_text(table + "\n")
        summary = {"grid": plan.to_dict(), "groups": groups, "workers": worker_summary(rows), "run": run_info}
        (tmp / "summary.json").write_text(json.dumps(summary, indent=1, default=_json_default) + "\n")
        (tmp / "results.jsonl").write_text("".join(json.dumps(r, default=_json_default) + "\n" for r in table_rows))
        _write_parquet(tmp / "results.parquet", table_rows)
        _publish(tmp, out, force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write_parquet(path: Path, rows: list[dict]) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:  # the serial path runs without the `ray` extra; results.jsonl holds the same rows
        return
    pq.write_table(pa.Table.from_pylist(rows), path)


def _publish(tmp: Path, out: Path, force: bool) -> None:
    """Rename the finished folder into place; with force an existing one is swapped out first, then removed."""
    old = None
    if out.exists():
        if not force:
            raise UserError(f"--out {out} appeared while the run was going; pass --force or choose another folder.")
        old = out.with_name(f"{out.name}.old-{tmp.name.rsplit('-', 1)[-1]}")
        out.rename(old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _json_default(value):
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
