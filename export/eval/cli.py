"""`ralu-eval`: generate from the held-out ShapesWorld prompts and score the images with the attribute
classifier. Reads a model (built-in name or pipeline folder); writes nothing unless --grid is given; prints a
table, or one JSON object with --json."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ralu_edge.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ralu-eval", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="shapes", help="built-in model name or local diffusers pipeline folder")
    p.add_argument("--steps", type=int, default=28, help="denoising steps of FluxPipeline")
    p.add_argument("--seed", type=int, default=0, help="prompt i uses seed + i")
    p.add_argument("--limit", type=int, default=0, help="score only the first N held-out prompts (0 = all 72)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--grid", type=Path, default=None, help="write a PNG grid of prompts -> images here")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return p


def evaluate(model: str, steps: int, seed: int, limit: int = 0, grid: Path | None = None) -> dict:
    """Generate with FluxPipeline over the held-out prompts and score them (see attribute_report)."""
    from ralu_export.eval.generate import flux_pipeline_images
    from ralu_export.eval.scoring import attribute_report, classify, load_classifier
    from ralu_export.models import load_flux_pipeline
    from ralu_export.shapes_world import caption_for, heldout_scenes

    if steps < 1:
        raise UserError(f"--steps must be at least 1, got {steps}.")
    clf = load_classifier()
    pipe = load_flux_pipeline(model)
    scenes = heldout_scenes()
    scenes = scenes[:limit] if limit > 0 else scenes
    prompts = [caption_for(s) for s in scenes]
    started = time.perf_counter()
    images = flux_pipeline_images(pipe, prompts, [seed + i for i in range(len(prompts))], steps)
    seconds = time.perf_counter() - started
    report = {"model": model, "sampler": "diffusers-FluxPipeline", "steps": steps, "seed": seed,
              **attribute_report(classify(clf, images), scenes), "seconds_per_image": seconds / len(prompts)}
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
    try:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        report = evaluate(args.model, args.steps, args.seed, args.limit, args.grid)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key:28s} {value:.4f}" if isinstance(value, float) else f"{key:28s} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
