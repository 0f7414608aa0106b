"""RALU on your own checkpoint (issue 8, item 5): speed and quality of every RALU mode against the family's
full-step baseline (FLUX.1: 50 steps, SD3: 28 steps, as in the RALU paper), for a local diffusers FLUX.1 or
SD3/SD3.5 pipeline folder (exported first, with `ralu-export`) or an already exported bundle.

What it prints (stdout) and writes (--json, default benchmarks/results/checkpoint.json):
  1. export (with --model): wall time and peak RSS of `ralu-export`, as a multiple of the transformer's
     checkpoint size;
  2. the speed table of benchmarks/bench_runtime.py, from its own functions: per mode the median denoising
     loop, loop speedup vs the baseline, the image-token-FLOP bound, speedup / bound, end-to-end speedup and
     the host share of the loop (modes interleaved, same prompts and seeds);
  3. per mode: peak RSS of a fresh `ralu-run` process (and its ratio to the baseline's), and image fidelity
     to the baseline image of the same prompt and seed: PSNR and SSIM (median over the prompts). A
     side-by-side grid (rows: prompts, columns: baseline then each mode) is saved as a PNG next to the JSON.
     There is no attribute classifier for a user's model, so fidelity to the full-step baseline is the
     quality measure here (the paper reports FID/CLIP score on COCO, which needs thousands of images).

Examples (see docs/real-checkpoints.md):
    python benchmarks/bench_checkpoint.py --model ~/models/FLUX.1-schnell --target desktop --height 512 \\
        --width 512 --work /tmp/ralu-ckpt --prompts 4 --repeats 1
    python benchmarks/bench_checkpoint.py --bundle /tmp/ralu-ckpt/bundle-desktop --json out.json
Progress goes to stderr."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import bench_runtime  # noqa: E402  (a sibling script: its measurement functions and table are reused)
import measure  # noqa: E402

RESULTS = Path(__file__).parent / "results"
OFFLINE = {"HF_HUB_OFFLINE": "1"}  # the environment added for the ralu-export / ralu-run children
BASELINE_STEPS = {"flux": 50, "sd3": 28}  # the RALU paper's baselines per family (spec/RALU.md)
PROMPTS = ("a photo of a red fox sitting in fresh snow, morning light",
           "a bowl of ramen on a wooden table, steam rising, close-up",
           "an old lighthouse on a rocky coast at sunset, dramatic clouds",
           "a watercolor painting of a city street in the rain with umbrellas",
           "a golden retriever puppy playing with a blue ball on green grass",
           "a futuristic glass building in a desert, wide angle")


def export(args) -> tuple[Path, dict]:
    """`ralu-export` of --model into WORK/bundle-<target>; wall time and peak RSS vs the checkpoint size."""
    out = args.work / f"bundle-{args.target}"
    cmd = [sys.executable, "-m", "ralu_export.cli", "--model", args.model, "--target", args.target,
           "--precision", args.precision, "--out", str(out), "--force"]
    for flag in ("height", "width"):
        if getattr(args, flag):
            cmd += [f"--{flag}", str(getattr(args, flag))]
    print(f"export {args.model} -> {out}", file=sys.stderr, flush=True)
    run = measure.run_with_peak_rss(cmd, OFFLINE)
    from ralu_export.models import resolve_model  # a path, or the built-in `shapes`

    folder = resolve_model(str(args.model)) / "transformer"
    weights = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    return out, {"seconds": run["seconds"], "peak_rss_mb": run["peak_rss_mb"], "transformer_mb": weights / 2**20,
                 "peak_rss_over_transformer": run["peak_rss_mb"] / (weights / 2**20) if weights else None}


def run_memory(bundle: Path, modes: list[str], prompt: str, baseline_steps: int, threads: int) -> dict:
    """Peak RSS of one `ralu-run` process per mode (the command a user runs), and its ratio to baseline's."""
    out = {}
    for mode in modes:
        tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"ralu-bench-ckpt-{os.getpid()}"
        cmd = [sys.executable, "-m", "ralu_runtime.cli_run", "--bundle", str(bundle), "--prompt", prompt,
               "--mode", mode, "--steps", str(baseline_steps), "--threads", str(threads), "--out", str(tmp),
               "--no-progress"]
        print(f"memory {mode}", file=sys.stderr, flush=True)
        out[mode] = {"maxrss_mb": measure.run_with_peak_rss(cmd, OFFLINE)["peak_rss_mb"]}
    for mode in modes:
        out[mode]["ratio_to_baseline"] = out[mode]["maxrss_mb"] / out["baseline"]["maxrss_mb"]
    return out


def run_quality(bundle: Path, modes: list[str], prompts, baseline_steps: int, threads: int, grid_path: Path) -> dict:
    """PSNR/SSIM of each mode's image vs the baseline image of the same prompt and seed; writes the grid."""
    from ralu_runtime.images import save_png, side_by_side
    from ralu_runtime.pipeline import Pipeline

    pipe = Pipeline.from_bundle(bundle, threads=threads)
    images = {m: [] for m in modes}
    for i, prompt in enumerate(prompts):
        for mode in modes:
            print(f"quality {mode} p{i}", file=sys.stderr, flush=True)
            images[mode].append(pipe(prompt, mode=mode, steps=baseline_steps, seed=i).image)
    base = np.stack(images["baseline"])
    out = {}
    for mode in modes[1:]:
        got = np.stack(images[mode])
        p, s = measure.psnr(got, base), measure.ssim(got, base)
        out[mode] = {"psnr_db_median": float(np.median(np.minimum(p, 99.0))), "ssim_median": float(np.median(s)),
                     "psnr_db": [float(x) for x in p], "ssim": [float(x) for x in s]}
    rows = [side_by_side([images[m][i] for m in modes]) for i in range(len(prompts))]
    gap = np.full((4, rows[0].shape[1], 3), 255, np.uint8)
    grid = np.concatenate([x for row in rows for x in (row, gap)][:-1])
    save_png(grid_path, grid, f"columns: {', '.join(modes)}; rows: prompts 0..{len(prompts) - 1}, seed = row")
    return out


def quality_table(memory: dict, quality: dict, modes: list[str]) -> str:
    head = f"{'mode':<16} {'RSS MB':>8} {'RSS x':>6} {'PSNR dB':>8} {'SSIM':>6}"
    lines = [head, "-" * len(head)]
    for mode in modes:
        m, q = memory.get(mode, {}), quality.get(mode, {})
        rss, ratio = m.get("maxrss_mb", float("nan")), m.get("ratio_to_baseline", float("nan"))
        fidelity = f"{q['psnr_db_median']:8.2f} {q['ssim_median']:6.3f}" if q else f"{'(ref)':>8} {'(ref)':>6}"
        lines.append(f"{mode:<16} {rss:8.0f} {ratio:6.2f} {fidelity}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="local diffusers FLUX.1 / SD3 pipeline folder (or `shapes`): exported first")
    src.add_argument("--bundle", type=Path, help="an exported bundle (desktop or android): no export")
    p.add_argument("--target", default="desktop", choices=("desktop", "android"),
                   help="export target with --model (both run on this machine's ONNX Runtime)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "int8"), help="export precision (--model)")
    p.add_argument("--height", type=int, help="export height in pixels (default: the model's native size)")
    p.add_argument("--width", type=int, help="export width in pixels (default: the model's native size)")
    p.add_argument("--work", type=Path, default=Path("/tmp/ralu-bench-checkpoint"),
                   help="folder for the exported bundle (--model); it can be as large as the checkpoint")
    p.add_argument("--prompts", type=int, default=3, help=f"how many of the {len(PROMPTS)} fixed prompts")
    p.add_argument("--prompt", action="append", default=[],
                   help="your own prompt instead of the fixed ones (repeatable; --prompts is then ignored)")
    p.add_argument("--repeats", type=int, default=1, help="speed repeats per prompt (seed = 1000*repeat + prompt)")
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    p.add_argument("--baseline-steps", type=int,
                   help=f"baseline steps (default per family: {BASELINE_STEPS})")
    p.add_argument("--no-memory", action="store_true", help="skip the per-mode ralu-run RSS processes")
    p.add_argument("--json", type=Path, default=RESULTS / "checkpoint.json",
                   help="result JSON; the image grid is written beside it as <stem>_grid.png")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from ralu_edge.manifest import read_manifest
    from ralu_runtime.pipeline import mode_for_preset

    doc: dict = {"benchmark": "bench_checkpoint", "environment": bench_runtime.environment(args.threads)}
    bundle = args.bundle
    if args.model is not None:
        args.work.mkdir(parents=True, exist_ok=True)
        bundle, doc["export"] = export(args)
    manifest = read_manifest(bundle)
    family = manifest.model.family
    steps = args.baseline_steps or BASELINE_STEPS.get(family)
    if steps is None:
        raise SystemExit(f"no default baseline step count for family {family!r}; pass --baseline-steps.")
    modes = ["baseline"] + [mode_for_preset(p.name) for p in manifest.presets]
    prompts = tuple(args.prompt) or PROMPTS[:args.prompts]
    doc.update({"bundle": bench_runtime.bundle_info(bundle), "family": family, "baseline_steps": steps,
                "modes": modes, "prompts": list(prompts), "repeats": args.repeats})
    print(f"speed: {', '.join(modes)} vs {steps}-step baseline", file=sys.stderr, flush=True)
    doc["speed"] = bench_runtime.run_speed(bundle, prompts, args.repeats, args.threads, baseline_steps=steps,
                                           modes=tuple(modes))
    doc["memory"] = {} if args.no_memory else run_memory(bundle, modes, prompts[0], steps, args.threads)
    grid = args.json.with_name(f"{args.json.stem}_grid.png")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    doc["quality"] = run_quality(bundle, modes, prompts, steps, args.threads, grid)
    doc["grid"] = str(grid)
    name = f"{manifest.model.name.rstrip('/').split('/')[-1]} {manifest.target}"[:26]
    # bench_runtime.table's RSS columns assume its own memory layout; ours is per mode, in the second table
    doc["table"] = bench_runtime.table({name: {"speed": doc["speed"]}})
    doc["quality_table"] = quality_table(doc["memory"], doc["quality"], modes)
    if "export" in doc:
        e = doc["export"]
        print(f"export: {e['seconds']:.0f} s, peak RSS {e['peak_rss_mb']:.0f} MB "
              f"({e['peak_rss_over_transformer']:.2f}x the {e['transformer_mb']:.1f} MB transformer checkpoint)")
    print(f"{steps}-step baseline vs RALU, {args.threads} threads, {len(prompts)} prompts x {args.repeats}")
    print(doc["table"])
    print()
    print(doc["quality_table"])
    args.json.write_text(json.dumps(doc, indent=1, default=float) + "\n")
    print(args.json)
    print(grid)
    return 0


if __name__ == "__main__":
    sys.exit(main())
