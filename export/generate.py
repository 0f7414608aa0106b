"""`ralu-generate`: images from a diffusers FLUX pipeline (built-in `shapes` or a folder) with diffusers'
own FluxPipeline, the torch reference path. Writes one PNG per prompt into --out, each carrying its
generation parameters in a `parameters` text chunk (the A1111 convention); prints the written paths."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ralu_edge.errors import UserError


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


def read_prompts(prompts: list[str], prompts_file: Path | None) -> list[str]:
    """The prompts from --prompt and --prompts, validated (a missing file or no prompt is a UserError)."""
    out = list(prompts)
    if prompts_file is not None:
        if not prompts_file.is_file():
            raise UserError(f"{prompts_file}: no such prompts file; pass a text file with one prompt per line.")
        out += [line.strip() for line in prompts_file.read_text().splitlines() if line.strip()]
    if not out:
        raise UserError("no prompt given; pass --prompt TEXT or --prompts FILE.")
    return out


def save_png(path: Path, image, parameters: str) -> None:
    """Write a PNG atomically with a `parameters` text chunk."""
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", parameters)
    tmp = path.with_name(path.name + ".tmp")
    Image.fromarray(image).save(tmp, format="PNG", pnginfo=info)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        prompts = read_prompts(args.prompt, args.prompts)
        if args.steps < 1 or args.size % 16:
            raise UserError(f"--steps must be >= 1 and --size a multiple of 16 (got {args.steps}, {args.size}).")
        from ralu_export.eval.generate import flux_pipeline_images
        from ralu_export.models import load_flux_pipeline

        pipe = load_flux_pipeline(args.model)
        seeds = [args.seed + i for i in range(len(prompts))]
        images = flux_pipeline_images(pipe, prompts, seeds, args.steps, size=args.size)
        args.out.mkdir(parents=True, exist_ok=True)
        for i, (prompt, seed, image) in enumerate(zip(prompts, seeds, images)):
            path = args.out / f"{i:03d}-seed{seed}.png"
            save_png(path, image, f"{prompt}\nSteps: {args.steps}, Seed: {seed}, Size: {args.size}x{args.size}, "
                                  f"Model: {args.model}, Sampler: FluxPipeline")
            print(path)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
