"""`ralu-run`: generate images from an exported bundle with ONNX Runtime (no torch): the baseline Euler
sampler or RALU (`--mode ralu-4x` ...). Reads the bundle (verified against its manifest) and optional learned
embeddings; writes one PNG per prompt (and mode) into --out with the generation parameters in a `parameters`
text chunk; prints the written paths, or one JSON object with --json. Progress bars go to stderr."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from ralu_edge.cache import CacheConfig
from ralu_edge.errors import UserError, run_cli
from ralu_runtime.memory import peak_rss_mb


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ralu-run", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--bundle", type=Path, required=True, help="bundle folder written by ralu-export")
    p.add_argument("--prompt", action="append", default=[], help="prompt (repeat for several)")
    p.add_argument("--prompts", type=Path, default=None, help="text file with one prompt per line")
    p.add_argument("--mode", default="baseline", help="baseline, or ralu-<N>x for a preset the bundle carries")
    p.add_argument("--steps", type=int, default=28, help="steps of the baseline mode (RALU presets fix theirs)")
    p.add_argument("--seed", type=int, default=0, help="prompt i uses seed + i")
    p.add_argument("--edge-proxy", choices=("latent_grad", "canny"), default="latent_grad",
                   help="RALU region scoring: latent Sobel (no extra decode) or half-res VAE decode + Canny")
    p.add_argument("--embeddings", type=Path, default=None, help="learned_embeds.safetensors from ralu-personalize")
    p.add_argument("--lora", action="append", default=[], metavar="PATH[:SCALE]",
                   help="a LoRA .safetensors (diffusers/PEFT or kohya keys) merged at load, at SCALE (default 1); "
                        "repeat for several (docs/lora.md)")
    p.add_argument("--cache", default="none",
                   help="temporal cache of denoiser calls, in every mode (docs/caching.md): none; teacache[:THRESHOLD] "
                        "(reuse the last velocity until the calibrated change since it sums to THRESHOLD, default "
                        "0.3; larger skips more); taylorseer[:ORDER,INTERVAL] (run every INTERVAL-th step, forecast "
                        "the others from the last ORDER+1 computed ones, default 1,2). Calls made and skipped go "
                        "into --json and the PNG metadata")
    p.add_argument("--compare", action="store_true",
                   help="also write a side-by-side grid of baseline and every RALU mode for the same seed")
    p.add_argument("--height", type=int, default=None, help="image height; must be a resolution of the bundle")
    p.add_argument("--width", type=int, default=None, help="image width; must be a resolution of the bundle")
    p.add_argument("--guidance-scale", type=float, default=None,
                   help="classifier-free guidance scale (negative prompt \"\") for bundles whose manifest records "
                        "one (default: that scale: SD3 7.0 as diffusers, a FLUX model's sampling.json); other "
                        "bundles reject it")
    p.add_argument("--threads", type=int, default=0,
                   help="ONNX Runtime intra-op threads (0 = all cores); ORT splits its sums per thread count, so "
                        "another count can move a pixel by one level, while the same count and seed repeat exactly")
    p.add_argument("--out", type=Path, required=True, help="folder for the PNGs (created if missing)")
    p.add_argument("--json", action="store_true", help="print one JSON object with paths and stats")
    p.add_argument("--no-progress", action="store_true", help="hide the per-step progress bar")
    return p


def _progress(total: int, disable: bool):
    from tqdm import tqdm

    bar = tqdm(total=total, unit="step", file=sys.stderr, disable=disable or not sys.stderr.isatty(), leave=False)
    return bar, (lambda info: bar.update(1))


def check_args(args: argparse.Namespace) -> None:
    """UserError for numbers no run can use (before anything is loaded)."""
    if args.seed < 0:
        raise UserError(f"--seed must be 0 or more, got {args.seed}.")
    if args.threads < 0:
        raise UserError(f"--threads must be 0 (all cores) or a positive count, got {args.threads}.")
    if args.steps < 1:
        raise UserError(f"--steps must be at least 1, got {args.steps}.")
    CacheConfig.parse(args.cache)
    if args.out.exists() and not args.out.is_dir():
        raise UserError(f"{args.out}: exists and is not a folder; pass a folder for the PNGs with --out.")


def output_paths(out: Path, prompts: list[str], modes: list[str], seed: int, compare: bool) -> list[Path]:
    """Every PNG a run will write, in order; UserError when one of them is taken by a folder."""
    paths = []
    for i in range(len(prompts)):
        paths += [out / f"{i:03d}-{mode}-seed{seed + i}.png" for mode in modes]
        if compare:
            paths.append(out / f"{i:03d}-compare-seed{seed + i}.png")
    for path in paths:
        if path.exists() and not path.is_file():
            raise UserError(f"{path}: exists and is not a file, so the image cannot be written there; move it "
                            "away or pass another --out.")
    return paths


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="warning: %(message)s")
    created_out = not args.out.exists()  # an --out this run creates is taken back when it fails before writing
    return run_cli(lambda: generate(args), cleanup=lambda: _remove_if_empty(args.out, created_out))


def generate(args: argparse.Namespace) -> None:
    """Validate every input before the first image, write the PNGs, print their paths (or the --json report)."""
    check_args(args)
    prompts = read_prompts(args.prompt, args.prompts)
    from ralu_runtime.lora import LoraRequest

    loras = [LoraRequest.parse(text) for text in args.lora]  # a bad scale is refused before any model loads
    from ralu_runtime.pipeline import Pipeline

    pipe = Pipeline.from_bundle(args.bundle, threads=args.threads, embeddings=args.embeddings, loras=loras)
    pipe.check_size(args.height, args.width)
    modes = pipe.modes if args.compare else [args.mode]
    for mode in modes:
        if mode not in pipe.modes:
            raise UserError(f"mode {mode!r} is not in this bundle; choose one of: {', '.join(pipe.modes)}.")
    scale = pipe.check_guidance_scale(args.guidance_scale)  # refuse a bad scale before anything is written
    pipe.check_cache(args.cache)  # TeaCache needs the bundle's calibration
    for prompt in prompts:  # every prompt before the first image, so a bad one does not stop a batch midway
        pipe.check_prompt(prompt)
    paths = output_paths(args.out, prompts, modes, args.seed, args.compare)
    args.out.mkdir(parents=True, exist_ok=True)
    results = generate_images(pipe, args, prompts, modes, scale, iter(paths))
    peak = peak_rss_mb()
    if args.json:
        print(json.dumps({**results[0], "bundle": str(args.bundle), "seconds_load": pipe.seconds_load,
                          "peak_rss_mb": peak, "loras": [lora.describe() for lora in pipe.loras], "images": results}))
    else:
        for r in results:
            print(r["out"])


def generate_images(pipe, args: argparse.Namespace, prompts: list[str], modes: list[str], scale: float | None,
                    paths) -> list[dict]:
    """Every prompt in every mode (and the --compare grid), each PNG written to the next of `paths`; returns one
    result dict per written image."""
    from ralu_runtime.images import parameters_text, save_png, side_by_side

    results = []
    for i, prompt in enumerate(prompts):
        seed = args.seed + i
        row = []
        for mode in modes:
            total = args.steps if mode == "baseline" else pipe.preset_for_mode(mode).nfe
            bar, on_step = _progress(total, args.no_progress)
            res = pipe(prompt, mode=mode, steps=args.steps, seed=seed, edge_proxy=args.edge_proxy,
                       on_step=on_step, guidance_scale=args.guidance_scale, cache=args.cache)
            bar.close()
            fields = {"Mode": mode, "Steps": res.stats.nfe, "Seed": seed, "Size": "x".join(
                map(str, res.image.shape[1::-1])), "Bundle": pipe.bundle.bundle_id,
                "Model": pipe.bundle.manifest.model.name, "Sampler": "ralu-edge",
                **({"CFG scale": scale} if scale is not None else {}), "Cache": res.stats.cache,
                "Calls made": res.stats.calls_made, "Calls skipped": res.stats.calls_skipped,
                **({"LoRA": ", ".join(f"{lora.name}:{lora.scale:g}" for lora in pipe.loras)} if pipe.loras else {})}
            path = save_png(next(paths), res.image, parameters_text(prompt, fields))
            row.append((mode, res))
            st = res.stats
            results.append({"out": str(path), "prompt": prompt, "seed": seed, "mode": mode, "nfe": st.nfe,
                            "token_steps": st.image_token_steps, "seconds_total": st.seconds_total,
                            "seconds_denoise": st.seconds_denoise,
                            "seconds_host": st.seconds_denoise - st.seconds_in_sessions_denoise,
                            **{k: v for k, v in st.to_dict().items() if k not in ("mode", "nfe")}})
        if args.compare:
            grid = save_png(next(paths), side_by_side([r.image for _, r in row],
                                                      [f"{m} {r.stats.seconds_total:.2f} s" for m, r in row]),
                            parameters_text(prompt, {"Modes": " | ".join(modes), "Seed": seed,
                                                     **({"CFG scale": scale} if scale is not None else {})}))
            results.append({"out": str(grid), "prompt": prompt, "seed": seed, "mode": "compare"})
    return results


def _remove_if_empty(folder: Path, created: bool) -> None:
    """Take back an --out folder this run created when it failed before writing anything into it."""
    if created and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


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


if __name__ == "__main__":
    sys.exit(main())
