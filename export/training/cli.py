"""`ralu-train`: train the built-in `shapes` model from a seed, or assemble a pipeline folder from packed
weights. `all` writes checkpoints under --work (rerun the same command to resume) and packed weights to
--weights-out; `assemble` turns packed weights into the diffusers FluxPipeline folder that ships."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

from ralu_edge.errors import UserError, run_cli


def build_parser() -> argparse.ArgumentParser:
    from ralu_export.training.train import TrainConfig

    p = argparse.ArgumentParser(prog="ralu-train", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("all", help="train tokenizers, VAE, transformer + text encoders, classifier",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a.add_argument("--work", type=Path, required=True, help="checkpoint folder (reused to resume)")
    a.add_argument("--weights-out", type=Path, required=True, help="folder for the packed weights + report")
    a.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    a.add_argument("--init-weights", type=Path, default=None,
                   help="continue from packed weights of an earlier run, or from an assembled pipeline folder such as export/builtin/shapes (keeps its VAE and classifier)")
    a.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    for f in dataclasses.fields(TrainConfig):
        if f.type in ("int", "float", "str"):
            a.add_argument("--" + f.name.replace("_", "-"), type={"int": int, "float": float, "str": str}[f.type],
                           default=getattr(TrainConfig(), f.name), help=f"TrainConfig.{f.name}")
    a.add_argument("--resolutions", type=_resolutions, default=None,
                   help="training resolutions and their shares, e.g. 128:0.7,64:0.3 (default: TrainConfig's)")
    s = sub.add_parser("assemble", help="packed weights -> FluxPipeline folder + classifier weights",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    s.add_argument("--weights", type=Path, required=True, help="folder written by `ralu-train all`")
    s.add_argument("--tokenizers", type=Path, default=None,
                   help="tokenizer folder (default: the shipped ones, else a fresh build)")
    s.add_argument("--out", type=Path, required=True, help="pipeline folder to write")
    s.add_argument("--classifier-out", type=Path, required=True, help="where to write classifier.safetensors")
    return p


def _resolutions(text: str) -> dict[int, float]:
    try:
        pairs = [item.split(":") for item in text.split(",")]
        shares = {int(size): float(share) for size, share in pairs}
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not SIZE:SHARE[,SIZE:SHARE...], e.g. 128:0.7,64:0.3") from None
    if not shares or any(size % 32 or size <= 0 or share <= 0 for size, share in shares.items()):
        raise argparse.ArgumentTypeError(f"{text!r}: sizes must be positive multiples of 32, shares positive")
    return shares


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    return run_cli(lambda: train_or_assemble(args))


def train_or_assemble(args: argparse.Namespace) -> None:
    """`all`: train every component and print the report's summary as JSON; `assemble`: write the pipeline
    folder and print its path."""
    import tempfile

    import torch

    from ralu_export import shapes_model as sm
    from ralu_export.shapes_world.world import shape_probabilities
    from ralu_export.training import run
    from ralu_export.training.train import TrainConfig

    if args.command == "all":
        if args.threads:
            torch.set_num_threads(args.threads)
        if args.device.startswith("cuda"):
            if not torch.cuda.is_available():
                raise UserError("--device cuda was given but torch sees no GPU; use --device cpu.")
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        run.training_backgrounds(args.backgrounds)  # refuse a bad name before any folder is written
        try:
            shape_probabilities(args.shape_weights)
        except ValueError as e:
            raise UserError(f"--shape-weights {e}.") from None
        overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
                     if getattr(args, f.name, None) is not None}
        report = run.train_all(TrainConfig(**overrides), sm.ShapesModelConfig(), args.work, args.weights_out,
                               torch.device(args.device), init_weights=args.init_weights)
        print(json.dumps({k: report[k] for k in ("vae", "dit", "classifier", "classifier_accuracy_clean",
                                                 "total_seconds") if k in report}))
    else:
        if not (args.weights / "training_report.json").is_file():
            raise UserError(f"{args.weights}: no training_report.json; pass the folder `ralu-train all` wrote.")
        with tempfile.TemporaryDirectory() as tmp:
            toks = args.tokenizers or run.training_tokenizers(Path(tmp) / "tokenizers")
            print(run.assemble_pipeline_folder(args.weights, toks, args.out, args.classifier_out))


if __name__ == "__main__":
    sys.exit(main())
