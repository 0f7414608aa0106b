"""`ralu-personalize`: learn a new token from a few photos on this device, forward passes only (zeroth-order
Textual Inversion through the bundle's text encoders and denoiser; no torch). Reads the bundle and the images
folder; writes learned_embeds.safetensors to --out (atomically) and a checkpoint folder beside it
(`<out>.checkpoint/`, every --checkpoint-every steps) that --resume continues from. Prints the written path,
or one JSON object with --json; progress with the running loss goes to stderr."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from ralu_edge.errors import UserError, run_cli
from ralu_runtime.memory import peak_rss_mb

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ralu-personalize", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--bundle", type=Path, required=True, help="bundle folder written by ralu-export (int8 is leanest)")
    p.add_argument("--images", type=Path, required=True, help="folder with 1-20 photos of the concept (PNG/JPEG)")
    p.add_argument("--token", required=True, help="the new token, e.g. '<my-cat>' (must not be a known word)")
    p.add_argument("--init-word", required=True, help="a one-token word close to the concept, e.g. 'cat'")
    p.add_argument("--steps", type=int, default=1000, help="zeroth-order steps")
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw")
    p.add_argument("--lr", type=float, default=1e-2, help="ZO-Adam learning rate")
    p.add_argument("--queries", type=int, default=2, help="random directions per step (n; n + 1 forward passes)")
    p.add_argument("--mu", type=float, default=1e-3, help="perturbation size")
    p.add_argument("--no-subspace-gradient", action="store_true", help="turn Subspace Gradient off (ablation)")
    p.add_argument("--sigma-range", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                   help="PUTS noise-level range; default: spec's DDPM [500, 900) mapped to sigma for this resolution")
    p.add_argument("--caption", action="append", default=[],
                   help="caption template with {} for the token (repeat; cycled over the images); default 'a {}'")
    p.add_argument("--posterior", choices=("auto", "sample", "mean"), default="auto",
                   help="x0 from a VAE posterior sample per step, the mean, or auto (mean when the posterior is wide)")
    p.add_argument("--theta-units", choices=("absolute", "table_rms"), default="absolute",
                   help="optimise the embedding itself (the spec) or per-encoder table-RMS units, which gives "
                        "encoders of different embedding scale (CLIP vs T5) the same relative lr and mu")
    p.add_argument("--checkpoint-every", type=int, default=50, help="steps between checkpoints")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint beside --out")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0 = all cores)")
    p.add_argument("--out", type=Path, required=True, help="learned_embeds.safetensors to write")
    p.add_argument("--json", action="store_true", help="print one JSON object with the result")
    return p


def load_images(folder: Path, size: int):
    """Every image file in `folder` as uint8 [N, size, size, 3] (centre-cropped and resized)."""
    import numpy as np

    from ralu_runtime.images import load_rgb

    if not folder.is_dir():
        raise UserError(f"{folder}: no such images folder; pass a folder with 1-20 photos of the concept.")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UserError(f"{folder}: no PNG or JPEG images in it.")
    if len(files) > 20:
        raise UserError(f"{folder}: {len(files)} images; personalization uses 1-20, pick the best ones.")
    return np.stack([load_rgb(f, size, min_side=size // 4) for f in files]), files


def check_outputs(args) -> Path:
    """Refuse, before any work, an --out that cannot be written and numbers no run can use; returns the
    checkpoint folder beside --out."""
    if args.threads < 0:
        raise UserError(f"--threads must be 0 (all cores) or a positive count, got {args.threads}.")
    if args.seed < 0:
        raise UserError(f"--seed must be 0 or more, got {args.seed}.")
    out = args.out
    if not out.parent.is_dir():
        raise UserError(f"{out.parent}: the output folder does not exist; create it first.")
    if out.exists() and not out.is_file():
        raise UserError(f"{out}: exists and is not a file; pass the path of the learned_embeds.safetensors to "
                        "write, e.g. {out}/learned_embeds.safetensors.".replace("{out}", str(out)))
    checkpoint = out.with_name(out.name + ".checkpoint")
    if checkpoint.exists() and not checkpoint.is_dir():
        raise UserError(f"{checkpoint}: exists and is not a checkpoint folder; move it away or pick another --out.")
    return checkpoint


def config_from_args(args):
    from ralu_edge.zo.optimizer import ZOConfig
    from ralu_edge.zo.timesteps import PutsConfig
    from ralu_runtime.personalize import PersonalizeConfig

    puts = PutsConfig(sigma_min=args.sigma_range[0], sigma_max=args.sigma_range[1]) if args.sigma_range \
        else PutsConfig()
    zo = ZOConfig(lr=args.lr, mu=args.mu, n=args.queries, subspace_gradient=not args.no_subspace_gradient)
    return PersonalizeConfig(steps=args.steps, seed=args.seed, checkpoint_every=args.checkpoint_every, zo=zo,
                             puts=puts, captions=tuple(args.caption) or ("a {}",), posterior=args.posterior,
                             theta_units=args.theta_units)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="warning: %(message)s")
    return run_cli(lambda: personalize(args),
                   interrupted="interrupted; rerun with --resume to continue from the last checkpoint")


def personalize(args: argparse.Namespace) -> None:
    """Validate the inputs, fit the token (checkpointing beside --out), save it, print its path (or --json)."""
    from tqdm import tqdm

    from ralu_runtime.personalize import Personalizer

    config = config_from_args(args)
    checkpoint = check_outputs(args)
    personalizer = Personalizer.from_bundle(args.bundle, threads=args.threads)
    images, files = load_images(args.images, personalizer.resolution.height)
    if args.resume and not (checkpoint / "state.json").is_file():
        logging.getLogger(__name__).warning("no checkpoint at %s to resume from; starting at step 0.", checkpoint)
    bar = tqdm(total=config.steps, unit="step", file=sys.stderr, disable=not sys.stderr.isatty())

    def on_step(step: int, loss: float) -> None:
        bar.n = step
        bar.set_postfix(loss=f"{loss:.4f}")
        bar.refresh()

    result = personalizer.fit(images, args.token, args.init_word, config, checkpoint=checkpoint,
                              resume=args.resume, on_step=on_step)
    bar.close()
    path = personalizer.save(result, args.out, args.init_word)
    if args.json:
        print(json.dumps({"out": str(path), "token": result.token, "steps": result.steps_done,
                          "peak_rss_mb": peak_rss_mb(),
                          "resumed_from": result.resumed_from, "seconds_per_step": result.seconds_per_step,
                          "final_loss": result.losses[-1] if result.losses else None,
                          "images": [str(f) for f in files]}))
    else:
        print(path)


if __name__ == "__main__":
    sys.exit(main())
