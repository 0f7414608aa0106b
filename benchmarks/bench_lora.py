"""LoRA at run time (issue 17): what a LoRA costs on each bundle. Per bundle: peak RSS of a whole `ralu-run`
with and without `--lora` (child processes, interleaved, medians), the seconds of `Pipeline.load_lora` (read,
check, merge, reopen the touched sessions), of switching to another scale, of `unload_lora`, and of one image
with and without the LoRA; with --psnr, the image's PSNR against diffusers' load_lora_weights + FluxPipeline
(fp32, same noise). Prints a table and writes benchmarks/results/lora.json.

    python benchmarks/bench_lora.py --bundle DESKTOP_FP32 --bundle ANDROID_INT8 --psnr"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import measure

ROOT = Path(__file__).resolve().parents[1]
LORA = ROOT / "tests" / "data" / "lora" / "shapes-red-to-green.safetensors"
PROMPT = "a large red circle on the left"


def rss_runs(bundle: Path, lora: Path, repeats: int, threads: int, steps: int) -> dict[str, list[float]]:
    """Peak RSS (MiB) of ralu-run without and with the LoRA, in rotating order."""
    peaks: dict[str, list[float]] = {"without": [], "with": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):
            for name in measure.rotated(list(peaks), r):
                extra = ["--lora", str(lora)] if name == "with" else []
                cmd = [sys.executable, "-m", "ralu_runtime.cli_run", "--bundle", str(bundle), "--prompt", PROMPT,
                       "--steps", str(steps), "--threads", str(threads), "--out", f"{tmp}/{name}{r}", *extra]
                peaks[name].append(measure.run_with_peak_rss(cmd)["peak_rss_mb"])
    return peaks


def lora_seconds(bundle: Path, lora: Path, repeats: int, threads: int, steps: int) -> dict[str, list[float]]:
    """Seconds of load_lora, a switch (the same file at another scale: every touched session reopens),
    unload_lora, and of one image with and without the LoRA."""
    from ralu_runtime.lora import LoraRequest
    from ralu_runtime.pipeline import Pipeline

    pipe = Pipeline.from_bundle(bundle, threads=threads)
    pipe(PROMPT, steps=steps, seed=0)  # warm-up
    times: dict[str, list[float]] = {k: [] for k in ("load_lora", "switch", "unload_lora", "image_without",
                                                     "image_with")}

    def timed(name, call):
        started = time.perf_counter()
        call()
        times[name].append(time.perf_counter() - started)

    for _ in range(repeats):
        timed("image_without", lambda: pipe(PROMPT, steps=steps, seed=0))
        timed("load_lora", lambda: pipe.load_lora([LoraRequest(lora, 1.0)]))
        timed("image_with", lambda: pipe(PROMPT, steps=steps, seed=0))
        timed("switch", lambda: pipe.load_lora([LoraRequest(lora, 0.5)]))
        timed("unload_lora", pipe.unload_lora)
    return times


def psnr_to_diffusers(bundle: Path, lora: Path, threads: int, steps: int) -> dict[str, float]:
    """PSNR (dB) of the bundle's image with the LoRA against diffusers fp32 with it, and without it against
    diffusers without it (what the target's precision costs anyway)."""
    import torch

    from ralu_edge.rng import initial_noise
    from ralu_export.models import load_flux_pipeline
    from ralu_runtime.lora import LoraRequest
    from ralu_runtime.pipeline import Pipeline

    torch.set_num_threads(threads)
    pipe = Pipeline.from_bundle(bundle, threads=threads)
    gh, gw = pipe.grid
    noise = initial_noise(0, gh * gw, pipe.channels)
    noise = torch.from_numpy(noise)
    res = pipe.bundle.manifest.resolutions[0]
    ref = load_flux_pipeline(pipe.bundle.manifest.model.name)

    def reference() -> np.ndarray:
        image = ref(PROMPT, height=res.height, width=res.width, num_inference_steps=steps, max_sequence_length=32,
                    latents=noise.clone(), output_type="np").images[0]
        return np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)

    base = measure.psnr(pipe(PROMPT, steps=steps, seed=0).image, reference())
    pipe.load_lora([LoraRequest(lora, 1.0)])
    ref.load_lora_weights(str(lora.parent), weight_name=lora.name, adapter_name="bench")
    with_lora = measure.psnr(pipe(PROMPT, steps=steps, seed=0).image, reference())
    return {"psnr_db_without_lora": float(base), "psnr_db_with_lora": float(with_lora)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--bundle", type=Path, action="append", required=True, help="bundle folder (repeat)")
    p.add_argument("--lora", type=Path, default=LORA, help="LoRA .safetensors")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds")
    p.add_argument("--rss-repeats", type=int, default=3, help="ralu-run processes per variant")
    p.add_argument("--threads", type=int, default=1, help="ORT threads")
    p.add_argument("--steps", type=int, default=8, help="baseline steps per image")
    p.add_argument("--psnr", action="store_true", help="also compare with diffusers (imports torch)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "lora.json", help="JSON written")
    args = p.parse_args(argv)
    rows = []
    report = {"environment": measure.environment(args.threads, ("onnxruntime", "numpy")),
              "lora": {"file": args.lora.name, "size_bytes": args.lora.stat().st_size},
              "steps": args.steps, "repeats": args.repeats, "rss_repeats": args.rss_repeats, "bundles": []}
    for bundle in args.bundle:
        from ralu_edge.manifest import read_manifest

        manifest = read_manifest(bundle)
        peaks = rss_runs(bundle, args.lora, args.rss_repeats, args.threads, args.steps)
        times = lora_seconds(bundle, args.lora, args.repeats, args.threads, args.steps)
        entry = {"bundle": str(bundle), "target": manifest.target, "precision": manifest.precision,
                 "graph_formats": sorted({g.format for g in manifest.graphs}),
                 "lora_targets": sum(len(g.lora_targets) for g in manifest.graphs),
                 "peak_rss_mb_without": float(np.median(peaks["without"])),
                 "peak_rss_mb_with": float(np.median(peaks["with"])), "peak_rss_mb_runs": peaks,
                 **{name: measure.summary_ms(s) for name, s in times.items()},
                 "load_average_after": measure.load_average()}
        entry["peak_rss_ratio_with_over_without"] = entry["peak_rss_mb_with"] / entry["peak_rss_mb_without"]
        entry["image_ratio_with_over_without"] = (entry["image_with"]["median_ms"]
                                                  / entry["image_without"]["median_ms"])
        if args.psnr:
            entry.update(psnr_to_diffusers(bundle, args.lora, args.threads, args.steps))
        report["bundles"].append(entry)
        rows.append(entry)
    print(f"{'bundle':<24} {'RSS w/o MB':>10} {'RSS with':>9} {'ratio':>6} {'load ms':>8} {'switch ms':>9} "
          f"{'unload ms':>9} {'img ratio':>9} {'PSNR w/o':>8} {'PSNR with':>9}")
    for e in rows:
        label = f"{e['target']}-{e['precision']}"
        print(f"{label:<24} {e['peak_rss_mb_without']:>10.1f} {e['peak_rss_mb_with']:>9.1f} "
              f"{e['peak_rss_ratio_with_over_without']:>6.3f} {e['load_lora']['median_ms']:>8.0f} "
              f"{e['switch']['median_ms']:>9.0f} {e['unload_lora']['median_ms']:>9.0f} "
              f"{e['image_ratio_with_over_without']:>9.3f} {e.get('psnr_db_without_lora', float('nan')):>8.1f} "
              f"{e.get('psnr_db_with_lora', float('nan')):>9.1f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
