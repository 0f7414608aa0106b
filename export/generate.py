"""`ralu-generate`: images from a diffusers FLUX pipeline (built-in `shapes` or a folder) with diffusers'
own FluxPipeline, the torch reference path, sampled as the model's sampling.json records (classifier-free
guidance when it names a true_cfg_scale). Writes one PNG per prompt into --out, each carrying its generation
parameters in a `parameters` text chunk (the A1111 convention, CFG scale included); prints the written paths."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ralu_edge.errors import UserError, run_cli
from ralu_runtime.cli_run import read_prompts
from ralu_runtime.images import save_png


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ralu-generate", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="shapes", help="built-in model name or local diffusers pipeline folder")
    p.add_argument("--prompt", action="append", default=[], help="prompt (repeat for several)")
    p.add_argument("--prompts", type=Path, default=None, help="text file with one prompt per line")
    p.add_argument("--steps", type=int, default=28, help="denoising steps")
    p.add_argument("--seed", type=int, default=0, help="prompt i uses seed + i")
    p.add_argument("--size", type=int, default=128, help="image height and width in pixels")
    p.add_argument("--out", type=Path, required=True, help="folder for the PNGs (created if missing)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(lambda: generate(args))


def generate(args: argparse.Namespace) -> None:
    """Sample every prompt with FluxPipeline, write one PNG each into --out, print the written paths."""
    prompts = read_prompts(args.prompt, args.prompts)
    if args.steps < 1 or args.size % 16:
        raise UserError(f"--steps must be >= 1 and --size a multiple of 16 (got {args.steps}, {args.size}).")
    from ralu_export.eval.generate import flux_pipeline_images
    from ralu_export.models import load_flux_pipeline, recorded_sampling, resolve_model

    sampling = recorded_sampling(resolve_model(args.model))
    pipe = load_flux_pipeline(args.model)
    seeds = [args.seed + i for i in range(len(prompts))]
    images = flux_pipeline_images(pipe, prompts, seeds, args.steps, size=args.size, sampling=sampling)
    cfg = f", CFG scale: {sampling.true_cfg_scale}" if sampling.guided else ""
    args.out.mkdir(parents=True, exist_ok=True)
    for i, (prompt, seed, image) in enumerate(zip(prompts, seeds, images)):
        path = args.out / f"{i:03d}-seed{seed}.png"
        save_png(path, image, f"{prompt}\nSteps: {args.steps}, Seed: {seed}, Size: {args.size}x{args.size}, "
                              f"Model: {args.model}, Sampler: FluxPipeline{cfg}")
        print(path)


if __name__ == "__main__":
    sys.exit(main())
