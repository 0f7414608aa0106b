"""`ralu-run` against the peers on the same weights (issue 15, item 4): diffusers' FluxPipeline on torch CPU,
optimum's ORTFluxPipeline on its own ONNX export and on our desktop bundle, `ralu-run` per bundle precision
(baseline and RALU presets), and stable-diffusion.cpp through stable-diffusion-cpp-python where it can load the
model (otherwise the reason is recorded, not a failure).

Every contender runs in a fresh process (`--worker NAME`), `--repeats` rounds, at each of `--threads`, in an
order rotated per round (measure.rotated) so load drift hits all alike. Every contender that accepts `latents`
gets the same initial noise: ralu-run's own (ralu_edge.rng.initial_noise, packed tokens
[1, L, 4·C], which is FluxPipeline's packed layout). Per run: import seconds, load seconds (pipeline or
sessions), per-step ms (median of the step intervals; ralu-run: seconds_denoise / steps), end-to-end seconds
(one image, prompt to pixels), the process's VmHWM, and the image, whose PSNR against diffusers' image of the
same round is the image agreement. The load average is recorded per run.

Results: benchmarks/results/peers.{json,md} (medians over rounds). RALU's end-to-end speedup over each
contender's `--steps`-step run (50 by default, the paper's baseline) is computed from the same rounds.

    nice -n 5 python benchmarks/peers.py --model shapes --bundle fp32=DIR --bundle int8=DIR --bundle int4=DIR
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import measure

RESULTS = Path(__file__).parent / "results"
PROMPT = "a large red circle on the left"
SEED = 0
SD_CPP_REASON = (
    "stable-diffusion-cpp-python is not installed: its PyPI release (0.4.7) builds from source in ~400 s here and "
    "recognises FLUX only in the original BFL key layout (model.diffusion_model.double_blocks.*) with FLUX.1's "
    "fixed widths (vec_in_dim 768, axes_dim (16, 56, 56), in_channels 64), so it cannot load a diffusers-format "
    "model of other widths ('get sd version from file failed', then a NULL-pointer crash in generate_image; "
    "ENVIRONMENT.md, measured 2026-12)")


# ---------------------------------------------------------------- workers (one fresh process each)

def _noise(model_dir: Path, height: int, width: int) -> np.ndarray:
    """ralu-run's initial noise for SEED: [1, L, 4C] float32 packed tokens."""
    from ralu_edge.rng import initial_noise

    vae = json.loads((model_dir / "vae" / "config.json").read_text())
    factor = 2 ** (len(vae.get("block_out_channels", [0] * 4)) - 1)
    gh, gw = height // factor // 2, width // factor // 2
    channels = vae["latent_channels"] * 4
    return initial_noise(SEED, gh * gw, channels)


def _diffusers_call(pipe, args, latents, step_times: list) -> np.ndarray:
    import torch

    def on_step(p, i, t, kwargs):
        step_times.append(time.perf_counter())
        return kwargs

    step_times.append(time.perf_counter())
    out = pipe(PROMPT, num_inference_steps=args.steps, height=args.height, width=args.width,
               latents=torch.from_numpy(latents), max_sequence_length=args.text_length, output_type="np",
               guidance_scale=3.5, callback_on_step_end=on_step)
    return (np.clip(out.images[0], 0, 1) * 255).round().astype(np.uint8)


def worker_diffusers(args) -> dict:
    t0 = time.perf_counter()
    import torch
    from diffusers import FluxPipeline

    torch.set_num_threads(args.threads)
    t1 = time.perf_counter()
    pipe = FluxPipeline.from_pretrained(str(args.model_dir), torch_dtype=torch.float32)
    t2 = time.perf_counter()
    steps: list[float] = []
    with torch.no_grad():
        image = _diffusers_call(pipe, args, _noise(args.model_dir, args.height, args.width), steps)
    t3 = time.perf_counter()
    return _result(image, args, t1 - t0, t2 - t1, t3 - t2, np.diff(steps))


def worker_optimum(args) -> dict:
    t0 = time.perf_counter()
    import onnxruntime as ort
    from optimum.onnxruntime import ORTDiffusionPipeline

    t1 = time.perf_counter()
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = args.threads, 1
    pipe = ORTDiffusionPipeline.from_pretrained(str(args.onnx_dir), session_options=so)
    t2 = time.perf_counter()
    steps: list[float] = []
    image = _diffusers_call(pipe, args, _noise(args.model_dir, args.height, args.width), steps)
    t3 = time.perf_counter()
    return _result(image, args, t1 - t0, t2 - t1, t3 - t2, np.diff(steps))


def worker_ralu(args) -> dict:
    """ralu-run itself (its main in this process), read back from its --json report and PNG."""
    t0 = time.perf_counter()
    import contextlib
    import io

    from PIL import Image

    from ralu_runtime import cli_run

    t1 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ralu-peers-") as tmp:
        stdout = io.StringIO()
        with contextlib.redirect_stdout(stdout):
            code = cli_run.main(["--bundle", str(args.onnx_dir), "--prompt", PROMPT, "--mode", args.mode,
                                 "--steps", str(args.steps), "--seed", str(SEED), "--threads", str(args.threads),
                                 "--out", tmp, "--json", "--no-progress"])
        if code:
            raise SystemExit(code)
        report = json.loads(stdout.getvalue())
        image = np.asarray(Image.open(report["out"]).convert("RGB"))
    t2 = time.perf_counter()
    per_step = report["seconds_denoise"] / report["nfe"]
    out = _result(image, args, t1 - t0, report["seconds_load"], report["seconds_total"], [per_step] * report["nfe"])
    out["nfe"], out["seconds_denoise"] = report["nfe"], report["seconds_denoise"]
    out["seconds_run_call"] = t2 - t1
    return out


def _result(image, args, import_s, load_s, e2e_s, step_s) -> dict:
    path = Path(args.image_out)
    np.save(path, image)
    return {"import_seconds": import_s, "load_seconds": load_s, "end_to_end_seconds": e2e_s,
            "step_ms": float(np.median(step_s)) * 1e3 if len(step_s) else None, "steps": len(step_s),
            "vmhwm_mb": measure.peak_rss_mb(), "image": str(path), "load_average": measure.load_average()}


WORKERS = {"diffusers": worker_diffusers, "optimum": worker_optimum, "ralu": worker_ralu}


# ---------------------------------------------------------------- driver

def optimum_export(model_dir: Path, out: Path) -> Path:
    """optimum's own ONNX export of the pipeline folder (once; reused from --work)."""
    if not (out / "model_index.json").is_file():
        subprocess.run(["nice", sys.executable, "-m", "optimum.exporters.onnx", "-m", str(model_dir), "--task",
                        "text-to-image", str(out)], check=True, stdout=sys.stderr,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return out


def contenders(args) -> dict[str, dict]:
    """name -> worker arguments."""
    c = {"diffusers": {"worker": "diffusers"}}
    if args.optimum_own:
        c["optimum-own-export"] = {"worker": "optimum",
                                   "onnx_dir": str(optimum_export(args.model_dir, args.work / "optimum-export"))}
    first = next(iter(args.bundles.values()))
    c["optimum-our-bundle"] = {"worker": "optimum", "onnx_dir": str(first)}
    for name, path in args.bundles.items():
        c[f"ralu-{name}"] = {"worker": "ralu", "onnx_dir": str(path), "mode": "baseline"}
        for mode in args.ralu_modes:
            c[f"ralu-{name}-{mode}"] = {"worker": "ralu", "onnx_dir": str(path), "mode": mode}
    return c


def run_one(name: str, spec: dict, args, threads: int, round_index: int) -> dict:
    image = args.work / "images" / f"{name}-t{threads}-r{round_index}.npy"
    image.parent.mkdir(parents=True, exist_ok=True)
    cmd = ["nice", "-n", "5", sys.executable, __file__, "--worker", spec["worker"], "--model-dir",
           str(args.model_dir), "--threads", str(threads), "--steps", str(args.steps), "--height",
           str(args.height), "--width", str(args.width), "--text-length", str(args.text_length),
           "--image-out", str(image), "--mode", spec.get("mode", "baseline")]
    if "onnx_dir" in spec:
        cmd += ["--onnx-dir", spec["onnx_dir"]]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    started = time.perf_counter()
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    if done.returncode:
        return {"error": done.stderr.strip().splitlines()[-1][:300] if done.stderr.strip() else "failed"}
    out = json.loads(done.stdout.strip().splitlines()[-1])
    out["process_seconds"] = time.perf_counter() - started
    return out


def summarize(runs: dict, names: list[str]) -> dict:
    """Medians per (contender, threads), PSNR against diffusers' image of the same round."""
    out = {}
    for threads, by_name in runs.items():
        out[threads] = {}
        for name in names:
            ok = [r for r in by_name[name] if "error" not in r]
            if not ok:
                out[threads][name] = {"error": by_name[name][0]["error"]}
                continue
            med = {k: float(np.median([r[k] for r in ok])) for k in
                   ("import_seconds", "load_seconds", "end_to_end_seconds", "step_ms", "vmhwm_mb")}
            psnrs = []
            for r, ref in zip(by_name[name], by_name["diffusers"]):
                if "error" not in r and "error" not in ref:
                    psnrs.append(float(np.clip(measure.psnr(np.load(r["image"]), np.load(ref["image"])), None, 99)))
            med["psnr_vs_diffusers_db"] = float(np.median(psnrs)) if psnrs else None
            med["n"] = len(ok)
            out[threads][name] = med
    return out


def table(summary: dict, steps: int) -> str:
    lines = []
    for threads, rows in summary.items():
        lines.append(f"[{threads} thread(s), {steps} steps; RALU rows: the preset's own steps]")
        head = (f"{'contender':28s} {'step ms':>8s} {'e2e s':>7s} {'import s':>8s} {'load s':>7s} {'VmHWM MB':>8s} "
                f"{'PSNR':>6s}")
        lines += [head, "-" * len(head)]
        for name, r in rows.items():
            if "error" in r:
                lines.append(f"{name:28s} error: {r['error'][:80]}")
                continue
            psnr = "-" if r["psnr_vs_diffusers_db"] is None else f"{r['psnr_vs_diffusers_db']:6.1f}"
            lines.append(f"{name:28s} {r['step_ms']:8.1f} {r['end_to_end_seconds']:7.2f} {r['import_seconds']:8.2f} "
                         f"{r['load_seconds']:7.2f} {r['vmhwm_mb']:8.0f} {psnr:>6s}")
        lines.append("")
    return "\n".join(lines)


def findings(summary: dict, args) -> dict:
    """The issue's must-shows, from the medians: ralu-run int4/int8 per step vs every other contender that ran
    (equal steps), their VmHWM against every peer's, and each RALU preset's end-to-end speedup over each contender's
    baseline run."""
    out = {}
    for threads, rows in summary.items():
        ok = {k: v for k, v in rows.items() if "error" not in v}
        baselines = {k: v for k, v in ok.items() if not any(k.endswith(f"-{m}") for m in args.ralu_modes)}
        f = {}
        for precision in ("int4", "int8"):
            mine = ok.get(f"ralu-{precision}")
            if mine is None:
                continue
            others = {k: v for k, v in baselines.items() if not k.startswith("ralu-")}
            f[f"{precision}_faster_per_step_than_every_peer"] = all(mine["step_ms"] < v["step_ms"]
                                                                    for v in others.values())
            f[f"{precision}_step_ms_ratio_to_peers"] = {k: mine["step_ms"] / v["step_ms"] for k, v in others.items()}
            f[f"{precision}_lower_vmhwm_than_every_peer"] = all(mine["vmhwm_mb"] < v["vmhwm_mb"]
                                                                 for v in others.values())
        f["ralu_speedup_end_to_end"] = {
            f"{k}": {peer: v["end_to_end_seconds"] / ok[k]["end_to_end_seconds"] for peer, v in baselines.items()}
            for k in ok if any(k.endswith(f"-{m}") for m in args.ralu_modes)}
        out[threads] = f
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="shapes", help="`shapes` or a diffusers FluxPipeline folder")
    p.add_argument("--bundle", action="append", default=[],
                   help="PRECISION=DIR of a desktop bundle of the same model (repeatable; the first is also "
                        "what optimum opens)")
    p.add_argument("--steps", type=int, default=50, help="baseline steps of every contender")
    p.add_argument("--ralu-modes", default="ralu-4x,ralu-7x")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-optimum-export", dest="optimum_own", action="store_false",
                   help="skip optimum's own export of the model (it needs a few minutes once)")
    p.add_argument("--work", type=Path, default=Path("/tmp/ralu-peers"))
    p.add_argument("--name", default=None, help="results name (default peers, or peers-<name>)")
    p.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    p.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--onnx-dir", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--mode", default="baseline", help=argparse.SUPPRESS)
    p.add_argument("--height", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--width", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--text-length", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--image-out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        args.threads = args.threads[0]
        print(json.dumps(WORKERS[args.worker](args)))
        return 0
    from ralu_edge.manifest import read_manifest
    from ralu_export.models import resolve_model

    args.model_dir = resolve_model(args.model)
    args.bundles = {s.split("=", 1)[0]: Path(s.split("=", 1)[1]) for s in args.bundle}
    manifest = read_manifest(next(iter(args.bundles.values())))
    res = manifest.resolutions[0]
    args.height, args.width, args.text_length = res.height, res.width, manifest.text_length
    args.ralu_modes = [m for m in args.ralu_modes.split(",") if m]
    args.work.mkdir(parents=True, exist_ok=True)
    from importlib.metadata import version

    env = {**measure.environment(None, ("onnxruntime", "torch", "diffusers", "numpy")),
           "optimum-onnx": version("optimum-onnx")}  # the optimum namespace package has no __version__
    specs = contenders(args)
    names = list(specs)
    runs = {str(t): {n: [] for n in names} for t in args.threads}
    for r in range(args.repeats):
        for threads in args.threads:
            for name in measure.rotated(names, r):
                result = run_one(name, specs[name], args, threads, r)
                runs[str(threads)][name].append(result)
                print(f"round {r} t{threads} {name}: "
                      + (result["error"] if "error" in result else
                         f"{result['step_ms']:.1f} ms/step, e2e {result['end_to_end_seconds']:.2f} s, "
                         f"{result['vmhwm_mb']:.0f} MB"), file=sys.stderr, flush=True)
        text = write_results(args, argv, env, specs, names, runs, rounds_done=r + 1)  # each round: a partial
    print(text)  # run stopped early still leaves its complete rounds
    return 0


def write_results(args, argv, env: dict, specs: dict, names: list[str], runs: dict, rounds_done: int) -> str:
    summary = summarize(runs, names)
    doc = {"benchmark": "peers", "issue": 15, "environment": env, "load_average_at_end": measure.load_average(),
           "model": str(args.model_dir), "height": args.height, "width": args.width, "steps": args.steps,
           "repeats": rounds_done, "repeats_requested": args.repeats, "threads": args.threads, "prompt": PROMPT,
           "seed": SEED, "bundles": {k: str(v) for k, v in args.bundles.items()}, "contenders": specs,
           "stable_diffusion_cpp": {"ran": False, "reason": _sd_cpp_reason()},
           "summary": summary, "findings": findings(summary, args), "runs": runs}
    text = table(summary, args.steps)
    stem = "peers" if args.name is None else f"peers-{args.name}"
    (RESULTS / f"{stem}.json").write_text(json.dumps(doc, indent=1) + "\n")
    (RESULTS / f"{stem}.md").write_text(markdown(doc, text, argv))
    return text


def _sd_cpp_reason() -> str:
    try:
        import stable_diffusion_cpp  # noqa: F401
    except ImportError:
        return SD_CPP_REASON
    return "installed, but not run: it cannot load a diffusers-format FLUX (" + SD_CPP_REASON.split("(", 1)[1]


def markdown(doc: dict, text: str, argv) -> str:
    env = doc["environment"]
    lines = [f"# Peers on the same weights ({Path(doc['model']).name}, {doc['height']}x{doc['width']})\n",
             f"CPU {env['cpu']}, {env['cores']} cores (shared; load average at start "
             f"{', '.join(f'{x:.1f}' for x in env['load_average_at_start'])}, at end "
             f"{', '.join(f'{x:.1f}' for x in doc['load_average_at_end'])}); ORT {env['onnxruntime']}, torch "
             f"{env['torch']}, diffusers {env['diffusers']}, optimum-onnx {env['optimum-onnx']}. A fresh process per "
             f"contender and run, {doc['repeats']} rounds in rotating order, medians. Same prompt, seed and initial "
             "noise (ralu-run's, passed as `latents`). step ms: median step interval (ralu-run: seconds_denoise / "
             "steps); e2e: prompt to pixels of one image after loading; import/load: module import and pipeline "
             "or session creation; VmHWM: the process's peak RSS; PSNR: against diffusers' image of the same round.",
             f"\nstable-diffusion.cpp: {doc['stable_diffusion_cpp']['reason']}.\n",
             f"Reproduce: `nice -n 5 .venv/bin/python benchmarks/peers.py {' '.join(argv or sys.argv[1:])}`\n",
             "```", text, "```", "", "## Findings (from the medians above)", "",
             "```json", json.dumps(doc["findings"], indent=1), "```", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
