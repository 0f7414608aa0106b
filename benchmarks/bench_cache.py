"""Temporal caching stacked on RALU (issue 16): loop speedup over the 50-step baseline, denoiser calls made, and
quality, for the baseline and RALU-4x / RALU-7x, each without a cache and with TeaCache over a threshold sweep and
TaylorSeer at a few (order, interval) settings.

Quality on the built-in `shapes` model reuses the RALU study's metrics (benchmarks/bench_ralu_study.py
summarize: attribute accuracy with a paired 95 % bootstrap interval against base-50, the Fréchet distance of
classifier features with a paired bootstrap interval against base-50, PSNR/SSIM to base-50) on its 72 held-out
prompts, but samples through the shipped runtime (ralu_runtime.Pipeline over `--bundle`, a desktop export of the
built-in model, as `ralu-run --cache` does: its noise rng_for(seed + i, "initial_noise"), its RALU selection
generator), so the loop timed is the one users run and TeaCache uses the rescale the export calibrated into that
bundle's manifest. Prompt i uses seed + i in every configuration; configurations are interleaved per prompt in
rotating order; the time is GenerationStats.seconds_denoise (the sampler loop incl. RALU's host transitions and
the cache's own work; no text encoding or decode).

Speed also on the 1024-token random FLUX (`--flux-bundle`, a desktop export at 512 px of the random-weight FLUX of
bench_runtime.py build-flux) through the ORT runtime (ralu_runtime.Pipeline, the loop `ralu-run` runs): base-50,
RALU without a cache and every cached RALU configuration that reached at least MIN_FLUX_SPEEDUP on shapes,
interleaved, medians. Ratios are only taken within one model's measurements of this run.

Writes <out>/cache.json (environment, load average, per-config rows) and docs/images/cache_pareto.svg (speedup
vs quality), prints the table on stdout and progress on stderr."""

from __future__ import annotations

import os

# One BLAS thread: the Fréchet-distance bootstrap (thousands of 256×256 eigendecompositions) ran 30× slower with
# numpy's default threads on the shared 2-core machine (measured: 2.1 s vs 0.07 s per distance at load 13).
for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import argparse  # noqa: E402  (after the thread settings, which numpy reads when first imported)
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

import bench_ralu_study as study
import measure
from ralu_edge import presets
from ralu_edge.cache import CacheConfig
from ralu_edge.errors import UserError, run_cli

TEACACHE_THRESHOLDS = (0.1, 0.2, 0.3, 0.5)
TAYLORSEER_SETTINGS = ((1, 2), (2, 2), (1, 3))
# The 50-step baseline with every cache would cost more than all RALU rows together; two of each method show it.
BASELINE_CACHES = ("none", "teacache:0.1", "teacache:0.3", "taylorseer:1,2", "taylorseer:2,2")
TARGET_SPEEDUP = 10.0
MIN_FLUX_SPEEDUP = 6.0
FLUX_PROMPTS = ("a large red circle on the left", "a small blue square at the top right")


def cache_sweep() -> list[CacheConfig]:
    """The caches every sampler is run with, none first."""
    return ([CacheConfig("none")] + [CacheConfig("teacache", threshold=t) for t in TEACACHE_THRESHOLDS]
            + [CacheConfig("taylorseer", order=o, interval=i) for o, i in TAYLORSEER_SETTINGS])


def configs() -> list[tuple[study.StudyConfig, CacheConfig]]:
    """(sampler, cache) pairs; the sampler's name gets `+<cache label>` unless uncached. base-50 is the reference."""
    samplers = [study.StudyConfig(study.REFERENCE, "baseline", "baseline", "50 Euler steps, FLUX dynamic shift", steps=50),
                study.StudyConfig("ralu-4x", "ralu-4x", "ralu", "flux-4x, latent-gradient edges",
                                  preset=presets.get("flux-4x")),
                study.StudyConfig("ralu-7x", "ralu-7x", "ralu", "flux-7x, latent-gradient edges",
                                  preset=presets.get("flux-7x"))]
    out = []
    for sampler in samplers:
        for cache in cache_sweep():
            if sampler.kind == "baseline" and cache.label not in BASELINE_CACHES:
                continue
            name = sampler.name if cache.method == "none" else f"{sampler.name}+{cache.label}"
            out.append((dataclasses.replace(sampler, name=name, description=f"{sampler.description}, cache {cache.label}"),
                        cache))
    return out


def run_shapes(pipe, pairs, prompts: list[str], seed: int) -> tuple[dict, dict]:
    """Per config name: images [P, 128, 128, 3] uint8, loop seconds and (unmeasured) transition seconds in
    study.run_study's layout, and per image the calls made. Prompt i uses seed + i in every config."""
    runs = {c.name: {"images": [], "seconds": [], "transition_seconds": []} for c, _ in pairs}
    calls = {c.name: [] for c, _ in pairs}

    def one(config, cache, prompt, image_seed):
        mode = "baseline" if config.kind == "baseline" else config.group
        return pipe(prompt, mode=mode, steps=config.steps or 28, seed=image_seed, cache=cache)

    for config, cache in pairs:  # untimed warm-up of every config, not a held-out prompt
        one(config, cache, "a small red circle in the middle", seed + study.WARMUP_INDEX)
    started = time.perf_counter()
    for i, prompt in enumerate(prompts):
        for config, cache in measure.rotated(pairs, i):
            res = one(config, cache, prompt, seed + i)
            runs[config.name]["images"].append(res.image)
            runs[config.name]["seconds"].append(res.stats.seconds_denoise)
            runs[config.name]["transition_seconds"].append(None)
            calls[config.name].append(res.stats.calls_made)
        elapsed = time.perf_counter() - started
        print(f"prompt {i + 1}/{len(prompts)}  {elapsed:7.1f} s  eta {elapsed / (i + 1) * (len(prompts) - i - 1):7.1f} s"
              f"  load {measure.load_average()[0]:.2f}", file=sys.stderr, flush=True)
    return {n: {k: (np.stack(v) if k == "images" else v) for k, v in r.items()} for n, r in runs.items()}, calls


def shapes_rows(args, pairs) -> tuple[list[dict], dict]:
    """The shapes rows (study.summarize plus cache columns) and their environment, sampled through ralu_runtime."""
    from ralu_export.eval.scoring import model_backgrounds
    from ralu_export.models import resolve_model
    from ralu_export.shapes_world import caption_for, heldout_scenes
    from ralu_runtime.pipeline import Pipeline

    import torch

    torch.set_num_threads(args.threads)  # the classifier that scores the images
    load_start = measure.load_average()[0]
    pipe = Pipeline.from_bundle(args.bundle, threads=args.threads)
    scenes = heldout_scenes()[: args.limit or None]
    if args.samples is not None and args.samples.is_file():  # images and timings of an earlier run, re-scored
        runs, calls = load_samples(args.samples)
    else:
        runs, calls = run_shapes(pipe, pairs, [caption_for(s) for s in scenes], args.seed)
        if args.samples is not None:
            save_samples(args.samples, runs, calls)
    configs_only = [c for c, _ in pairs]
    grid = pipe.grid
    transformer_config = _transformer_config()
    costs = {c.name: study.config_costs(c, *grid, transformer_config) for c in configs_only}
    rows = study.summarize(configs_only, runs, scenes, costs, args.seed, model_backgrounds(resolve_model("shapes")))
    for row, (config, cache) in zip(rows, pairs):
        made = float(np.mean(calls[config.name]))
        row.update(sampler=config.group, cache=cache.label, calls_made_mean=made,
                   calls_skipped_mean=float(row["nfe"] - made))
        row["within_reference_ci"] = within_reference_ci(row)
    env = {**study.environment_info(args, scenes, resolve_model("shapes"), load_start),
           "backend": "ralu_runtime.Pipeline (ONNX Runtime CPU EP)", "ort_threads": args.threads,
           "bundle": str(args.bundle), "bundle_id": pipe.bundle.bundle_id,
           "teacache_calibration": dataclasses.asdict(pipe.bundle.manifest.cache)}
    return rows, env


def save_samples(path: Path, runs: dict, calls: dict) -> None:
    """The sampled images (.npz) and timings and calls (.json beside it), so the scoring can be rerun."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path.with_suffix(".npz"), **{name: run["images"] for name, run in runs.items()})
    path.write_text(json.dumps({"runs": {n: {"seconds": r["seconds"], "transition_seconds": r["transition_seconds"]}
                                         for n, r in runs.items()}, "calls": calls}))


def load_samples(path: Path) -> tuple[dict, dict]:
    data = json.loads(path.read_text())
    images = np.load(path.with_suffix(".npz"))
    return {n: {**r, "images": images[n]} for n, r in data["runs"].items()}, data["calls"]


def _transformer_config():
    """The built-in model's transformer config (for the RALU study's MAC model), read without loading weights."""
    from types import SimpleNamespace

    from ralu_export.models import resolve_model

    return SimpleNamespace(**json.loads((resolve_model("shapes") / "transformer" / "config.json").read_text()))


def within_reference_ci(row: dict) -> bool | None:
    """Whether both paired 95 % intervals against base-50 (attribute accuracy, Fréchet distance) contain 0: no
    measurable loss, nor gain, on either metric. None for the reference itself."""
    if "vs_reference" not in row:
        return None
    acc, fd = row["vs_reference"]["ci95"], row["fd_vs_reference"]["ci95"]
    return bool(acc[0] <= 0.0 <= acc[1] and fd[0] <= 0.0 <= fd[1])


def flux_speed(bundle: Path, names: list[str], threads: int, repeats: int) -> dict:
    """Median denoising-loop seconds of each named config on the random FLUX through the ORT runtime (interleaved,
    one warm-up each), with its calls made and the speedup over base-50 of this measurement."""
    from ralu_runtime.pipeline import Pipeline

    pipe = Pipeline.from_bundle(bundle, threads=threads)
    load_start = measure.load_average()

    def settings(name: str) -> tuple[str, str, int]:
        sampler, _, cache = name.partition("+")
        mode = "baseline" if sampler == study.REFERENCE else sampler
        return mode, cache or "none", 50

    stats: dict[str, list] = {n: [] for n in names}
    calls = {}
    for name in names:
        mode, cache, steps = settings(name)

        def call(prompt, seed, mode=mode, cache=cache, steps=steps, name=name):
            res = pipe(prompt, mode=mode, steps=steps, seed=seed, cache=cache)
            stats[name].append(res.stats)
        calls[name] = call
    seconds: dict[str, list[float]] = {n: [] for n in names}
    for name in names:  # warm-up
        calls[name](FLUX_PROMPTS[0], 999)
    round_index = 0
    for r in range(repeats):
        for p, prompt in enumerate(FLUX_PROMPTS):
            for name in measure.rotated(names, round_index):
                calls[name](prompt, 1000 * r + p)
                seconds[name].append(stats[name][-1].seconds_denoise)
            round_index += 1
            print(f"flux round {round_index}/{repeats * len(FLUX_PROMPTS)} load {measure.load_average()[0]:.2f}",
                  file=sys.stderr, flush=True)
    base = float(np.median(seconds[study.REFERENCE]))
    rows = {n: {"loop_median_ms": float(np.median(seconds[n]) * 1e3), "loop_p90_ms": float(np.percentile(seconds[n], 90) * 1e3),
                "runs": len(seconds[n]), "calls_made_mean": float(np.mean([s.calls_made for s in stats[n][1:]])),
                "nfe": stats[n][-1].nfe, "loop_speedup": base / float(np.median(seconds[n]))} for n in names}
    manifest = pipe.bundle.manifest
    return {"bundle": str(bundle), "bundle_id": pipe.bundle.bundle_id, "tokens": manifest.resolutions[0].num_tokens,
            "threads": threads, "prompts": list(FLUX_PROMPTS), "repeats": repeats, "warmup": 1,
            "load_average_start": load_start, "load_average_end": measure.load_average(), "rows": rows}


# ------------------------------------------------------------------------------------------------ reporting

def table(rows: list[dict], flux: dict | None) -> str:
    head = (f"{'config':30} {'NFE':>4} {'calls':>6} {'tokFLOP×':>8} {'wall×':>6} {'flux×':>6} {'attr':>6} "
            f"{'Δattr 95% CI':>17} {'FD':>6} {'ΔFD 95% CI':>17} {'inCI':>5}")
    lines = [head, "-" * len(head)]
    for r in rows:
        acc = r.get("vs_reference", {}).get("ci95")
        fd = r.get("fd_vs_reference", {}).get("ci95")
        fx = (flux or {}).get("rows", {}).get(r["name"], {}).get("loop_speedup")
        lines.append(
            f"{r['name']:30} {r['nfe']:4d} {r['calls_made_mean']:6.1f} {r['token_flop_speedup']:8.2f} "
            f"{r.get('wall_clock_speedup', float('nan')):6.2f} {('%6.2f' % fx) if fx else '     –'} "
            f"{r['attribute_accuracy']:6.3f} {('[%+.3f, %+.3f]' % tuple(acc)) if acc else '–':>17} "
            f"{r['frechet_distance']:6.1f} {('[%+.1f, %+.1f]' % tuple(fd)) if fd else '–':>17} "
            f"{'–' if r['within_reference_ci'] is None else ('yes' if r['within_reference_ci'] else 'no'):>5}")
    return "\n".join(lines)


def pareto_svg(rows: list[dict], path: Path) -> None:
    """Scatter of wall-clock loop speedup (x, log) against attribute accuracy and Fréchet distance (two panels),
    one marker per config, coloured by sampler, hollow when outside base-50's paired intervals."""
    colours = {"baseline": "#444444", "ralu-4x": "#1f77b4", "ralu-7x": "#d62728"}
    width, height, pad = 900, 380, 55
    panels = (("attribute_accuracy", "attribute accuracy (higher is better)"),
              ("frechet_distance", "Fréchet distance (lower is better)"))
    xs = [r["wall_clock_speedup"] for r in rows]
    x_lo, x_hi = np.log(0.8), np.log(max(xs) * 1.25)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
           f'font-size="11"><rect width="100%" height="100%" fill="white"/>']
    panel_w = width // 2
    for p, (key, label) in enumerate(panels):
        ys = [r[key] for r in rows]
        y_lo, y_hi = min(ys), max(ys)
        y_lo, y_hi = y_lo - 0.08 * (y_hi - y_lo + 1e-9), y_hi + 0.08 * (y_hi - y_lo + 1e-9)
        left = p * panel_w + pad

        def sx(v):
            return left + (np.log(v) - x_lo) / (x_hi - x_lo) * (panel_w - pad - 15)

        def sy(v):
            return height - pad - (v - y_lo) / (y_hi - y_lo) * (height - 2 * pad)

        out.append(f'<rect x="{left}" y="{pad}" width="{panel_w - pad - 15}" height="{height - 2 * pad}" '
                   'fill="none" stroke="#999"/>')
        for tick in (1, 2, 5, 10, 20, 50):
            if 0.8 <= tick <= max(xs) * 1.25:
                out.append(f'<line x1="{sx(tick):.1f}" x2="{sx(tick):.1f}" y1="{pad}" y2="{height - pad}" '
                           f'stroke="{"#f4a" if tick == TARGET_SPEEDUP else "#eee"}"/>'
                           f'<text x="{sx(tick):.1f}" y="{height - pad + 14}" text-anchor="middle">{tick}×</text>')
        for frac in (0.0, 0.5, 1.0):
            v = y_lo + frac * (y_hi - y_lo)
            out.append(f'<text x="{left - 4}" y="{sy(v) + 4:.1f}" text-anchor="end">{v:.3g}</text>')
        ref = rows[0][key]
        out.append(f'<line x1="{left}" x2="{left + panel_w - pad - 15}" y1="{sy(ref):.1f}" y2="{sy(ref):.1f}" '
                   'stroke="#444" stroke-dasharray="4 3"/>')
        out.append(f'<text x="{left + (panel_w - pad) / 2}" y="{pad - 22}" text-anchor="middle" font-size="13">'
                   f'{label}</text><text x="{left + (panel_w - pad) / 2}" y="{height - 18}" text-anchor="middle">'
                   'loop speedup over base-50 (wall clock, log)</text>')
        for r in rows:
            colour = colours.get(r["sampler"], "#2ca02c")
            fill = colour if r["within_reference_ci"] in (True, None) else "none"
            shape = ("circle" if r["cache"] == "none" else "rect" if r["cache"].startswith("teacache") else "polygon")
            x, y = sx(r["wall_clock_speedup"]), sy(r[key])
            if shape == "circle":
                out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5" fill="{fill}" stroke="{colour}" stroke-width="1.5">')
            elif shape == "rect":
                out.append(f'<rect x="{x - 4:.1f}" y="{y - 4:.1f}" width="8" height="8" fill="{fill}" stroke="{colour}" '
                           'stroke-width="1.5">')
            else:
                out.append(f'<polygon points="{x:.1f},{y - 5:.1f} {x - 5:.1f},{y + 4:.1f} {x + 5:.1f},{y + 4:.1f}" '
                           f'fill="{fill}" stroke="{colour}" stroke-width="1.5">')
            out.append(f'<title>{r["name"]}: {r["wall_clock_speedup"]:.2f}×, {key} {r[key]:.3g}</title></{shape}>')
    legend = ("colour: grey baseline-50, blue RALU-4x, red RALU-7x; circle no cache, square TeaCache (thresholds "
              f"{', '.join(map(str, TEACACHE_THRESHOLDS))}), triangle TaylorSeer; hollow: outside base-50's paired 95 % "
              "interval on attribute accuracy or Fréchet distance; dashed: base-50; pink: 10×")
    out.append(f'<text x="{pad}" y="{height - 3}" font-size="10">{legend}</text></svg>')
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(out) + "\n")
    os.replace(tmp, path)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] + " Writes OUT/cache.json and the Pareto SVG.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--bundle", type=Path, required=True,
                   help="desktop export of the built-in model: its manifest's TeaCache calibration is used")
    p.add_argument("--flux-bundle", type=Path, default=None,
                   help="desktop export of bench_runtime.py's random FLUX at 512 px (1024 tokens); skipped if not given")
    p.add_argument("--limit", type=int, default=0, help="first N >= 2 held-out prompts (0 = all 72)")
    p.add_argument("--threads", type=int, default=1, help="torch and ORT threads")
    p.add_argument("--flux-repeats", type=int, default=1, help="rounds over the FLUX prompts")
    p.add_argument("--seed", type=int, default=0, help="prompt i uses seed + i")
    p.add_argument("--samples", type=Path, default=None,
                   help="JSON file (+ .npz beside it) keeping the sampled images and timings; when it exists, they are "
                        "re-scored instead of sampled again")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="folder for cache.json")
    p.add_argument("--plot", type=Path, default=Path("docs/images/cache_pareto.svg"), help="Pareto plot (SVG)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(lambda: bench(args))


def bench(args) -> int:
    if args.limit < 0 or args.limit == 1 or args.threads < 1:
        raise UserError("--limit must be 0 (all) or ≥ 2 and --threads ≥ 1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from ralu_runtime.bundle import open_bundle

    manifest = open_bundle(args.bundle).manifest
    if manifest.cache is None:
        raise UserError(f"{args.bundle}: its manifest has no TeaCache calibration; export it again with ralu-export.")
    pairs = configs()
    rows, env = shapes_rows(args, pairs)
    environment = {**env, **measure.environment(args.threads, ("numpy", "onnxruntime", "torch"))}
    meets = [r["name"] for r in rows if r.get("within_reference_ci") and r["wall_clock_speedup"] >= TARGET_SPEEDUP]
    doc = {"benchmark": "bench_cache", "environment": environment, "target_speedup": TARGET_SPEEDUP,
           "meets_target": meets, "configs": rows, "flux_random": None}
    write_json(args.out / "cache.json", doc)  # the shapes study is kept even if the FLUX part fails
    pareto_svg(rows, args.plot)
    if args.flux_bundle is not None:
        names = [study.REFERENCE, "ralu-4x", "ralu-7x"] + [
            r["name"] for r in rows if r["cache"] != "none" and r["sampler"] != "baseline"
            and r["wall_clock_speedup"] >= MIN_FLUX_SPEEDUP]
        doc["flux_random"] = flux_speed(args.flux_bundle, names, args.threads, args.flux_repeats)
        doc["environment"]["load_average_end"] = measure.load_average()
        write_json(args.out / "cache.json", doc)
    print(table(rows, doc["flux_random"]))
    print(args.out / "cache.json")
    return 0


def write_json(path: Path, doc: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=float) + "\n")
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
