"""`ralu-eval`: generate from the held-out ShapesWorld prompts and score the images with the attribute
classifier. Reads a model (built-in name or pipeline folder, sampled as its sampling.json records: classifier-free
guidance when it names a true_cfg_scale) or a bundle (sampled as its manifest records); writes nothing unless
--grid is given; prints a table, or one JSON object with --json."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ralu_edge.errors import UserError, run_cli


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ralu-eval", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="shapes", help="built-in model name or local diffusers pipeline folder")
    p.add_argument("--bundle", type=Path, default=None,
                   help="evaluate an exported bundle through the ONNX Runtime runtime instead of --model")
    p.add_argument("--mode", default="baseline", help="with --bundle: baseline or ralu-<N>x")
    p.add_argument("--steps", type=int, default=28, help="denoising steps (FluxPipeline, or the baseline mode)")
    p.add_argument("--seed", type=int, default=0, help="prompt i uses seed + i")
    p.add_argument("--noise", choices=("diffusers", "runtime"), default=None,
                   help="initial noise of prompt i. diffusers (--model's default): FluxPipeline's own draw for seed i; "
                        "runtime (--bundle's, the only one it has): ralu-run's draw for seed i, given to FluxPipeline "
                        "as latents with --model, so its images pair one to one with --bundle's and a difference "
                        "between the two is the bundle's, not the noise's")
    p.add_argument("--limit", type=int, default=0, help="score only the first N held-out prompts (0 = all 72)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--grid", type=Path, default=None, help="write a PNG grid of prompts -> images here")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return p


def evaluate(model: str, steps: int, seed: int, limit: int = 0, grid: Path | None = None,
             noise: str = "diffusers") -> dict:
    """Generate with FluxPipeline over the held-out prompts and score them (see attribute_report)."""
    from ralu_export.eval.generate import flux_pipeline_images
    from ralu_export.eval.scoring import attribute_report, classify, load_classifier
    from ralu_export.models import load_flux_pipeline, recorded_sampling, resolve_model
    from ralu_export.shapes_world import caption_for, heldout_scenes

    if steps < 1:
        raise UserError(f"--steps must be at least 1, got {steps}.")
    sampling = recorded_sampling(resolve_model(model))  # a malformed sampling.json stops us before any loading
    clf = load_classifier()
    pipe = load_flux_pipeline(model)
    scenes = heldout_scenes()
    scenes = scenes[:limit] if limit > 0 else scenes
    prompts = [caption_for(s) for s in scenes]
    started = time.perf_counter()
    images = flux_pipeline_images(pipe, prompts, [seed + i for i in range(len(prompts))], steps, sampling=sampling,
                                  noise=noise)
    seconds = time.perf_counter() - started
    report = {"model": model, "sampler": "diffusers-FluxPipeline", "steps": steps, "seed": seed, "noise": noise,
              "true_cfg_scale": sampling.true_cfg_scale,
              **attribute_report(classify(clf, images), scenes), "seconds_per_image": seconds / len(prompts)}
    if grid is not None:
        _write_grid(grid, images)
    return report


def evaluate_bundle(bundle: Path, mode: str, steps: int, seed: int, limit: int = 0, threads: int = 0,
                    grid: Path | None = None) -> dict:
    """The same scoring as `evaluate`, generating through ralu_runtime.Pipeline (baseline or a RALU mode)."""
    import numpy as np

    from ralu_export.eval.scoring import attribute_report, classify, load_classifier
    from ralu_export.shapes_world import caption_for, heldout_scenes
    from ralu_runtime.pipeline import Pipeline

    clf = load_classifier()
    pipe = Pipeline.from_bundle(bundle, threads=threads)
    if mode not in pipe.modes:
        raise UserError(f"mode {mode!r} is not in this bundle; choose one of: {', '.join(pipe.modes)}.")
    scenes = heldout_scenes()
    scenes = scenes[:limit] if limit > 0 else scenes
    started = time.perf_counter()
    results = [pipe(caption_for(s), mode=mode, steps=steps, seed=seed + i) for i, s in enumerate(scenes)]
    seconds = time.perf_counter() - started
    images = np.stack([r.image for r in results])
    report = {"bundle": str(bundle), "sampler": f"ralu-runtime {mode}", "mode": mode,
              "steps": results[0].stats.nfe, "seed": seed, "noise": "runtime",
              "true_cfg_scale": pipe.check_guidance_scale(None),
              **attribute_report(classify(clf, images), scenes),
              "seconds_per_image": seconds / len(scenes),
              "seconds_denoise_per_image": float(np.mean([r.stats.seconds_denoise for r in results]))}
    if grid is not None:
        _write_grid(grid, images)
    return report


def _write_grid(path: Path, images) -> None:
    import os

    from PIL import Image

    from ralu_export.eval.generate import image_grid

    tmp = path.with_name(path.name + ".tmp")
    Image.fromarray(image_grid(images)).save(tmp, format="PNG")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(lambda: report(args))


def report(args: argparse.Namespace) -> None:
    """Evaluate the bundle (--bundle) or the model and print the report as a table, or one JSON object."""
    if args.limit < 0 or args.threads < 0:
        raise UserError(f"--limit and --threads must be 0 (all) or positive, got {args.limit} and {args.threads}.")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.bundle is not None and args.noise == "diffusers":
        raise UserError("--noise diffusers needs --model: a bundle samples with the runtime's noise only.")
    if args.bundle is not None:
        result = evaluate_bundle(args.bundle, args.mode, args.steps, args.seed, args.limit, args.threads, args.grid)
    else:
        result = evaluate(args.model, args.steps, args.seed, args.limit, args.grid, args.noise or "diffusers")
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:28s} {value:.4f}" if isinstance(value, float) else f"{key:28s} {value}")


if __name__ == "__main__":
    sys.exit(main())
