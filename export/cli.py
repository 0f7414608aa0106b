"""`ralu-export`: the command line over ralu_export.bundle.build_bundle. No logic lives here: arguments
become an ExportConfig, the library builds the bundle, and this module prints the results."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from ralu_edge.errors import run_cli
from ralu_export.families import FAMILIES
from ralu_export.int8_policy import INT8_BY_DEFAULT
from ralu_export.parity import rule_text
from ralu_export.targets import PRECISIONS, TARGETS

DESCRIPTION = """\
Export a diffusers FLUX or SD3 pipeline (a local folder, or the built-in `shapes` model) into a bundle folder
that ralu-edge's runtime runs: the RALU denoiser graph(s) with host-computed positions, text encoders that take
learned-token embeddings, the VAE decoder and encoder, the tokenizers, and ralu_config.json (every file
with sha256 and size, every graph's inputs and outputs, the RALU presets with their sigma lists and stage
lengths). Every graph is compared with the torch model at export time; a graph beyond tolerance fails the
export. The bundle is built in OUT.tmp-* beside OUT and renamed into place when complete, so a failed or
interrupted export leaves nothing behind.

targets:
  desktop     .onnx + model.onnx_data in optimum's layout (ORTDiffusionPipeline opens it)
  android     .ort files, required_operators.config, mobile usability reports; int8 text encoders
  executorch  one .pte per component, the denoiser with one method per RALU stage length (XNNPACK)
  ios         one .mlpackage per component, static per-stage denoisers (conversion only on Linux)

The path of the written bundle goes to stdout (or one JSON object with --json); progress, the parity
table and logs go to stderr."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ralu-export", description=DESCRIPTION,
                                     formatter_class=_Formatter)
    parser.add_argument("--model", required=True,
                        help="`shapes` (built in) or the path of a local diffusers pipeline folder "
                             f"({', '.join(FAMILIES)})")
    parser.add_argument("--target", required=True, choices=TARGETS, help="which runtime the bundle is for")
    parser.add_argument("--out", required=True, type=Path,
                        help="bundle folder to create (missing parent folders are created too)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="denoiser precision; int8 = per-channel int8 weights on its linear layers, attention "
                             "stays float; int4 (desktop, android) = 4-bit blocks in ONNX Runtime's MatMulNBits "
                             "(docs/precision.md), text encoders int8. Text encoders are int8 on "
                             f"{'/'.join(t for t, roles in INT8_BY_DEFAULT.items() if 'text_encoder' in roles)} "
                             "either way")
    parser.add_argument("--attention", choices=("fused", "unfused"), default=None,
                        help="fused: the denoiser's attentions become ONNX Runtime's MultiHeadAttention (flash "
                             "attention on the CPU: no tokens x tokens score matrix; docs/precision.md); unfused: the "
                             "ops as torch exports them, for a runtime without contrib operators (default: fused "
                             "for desktop, unfused elsewhere)")
    parser.add_argument("--height", type=int, default=None,
                        help="image height in pixels; a multiple of 4 x the VAE factor (default: the model's "
                             "native size, 128 for shapes)")
    parser.add_argument("--width", type=int, default=None, help="image width in pixels (see --height)")
    parser.add_argument("--presets", default=None,
                        help="comma-separated RALU presets whose stage lengths the bundle must serve (default: "
                             "the family's, " + "; ".join(f"{f.name}: {','.join(f.default_presets)}"
                                                          for f in FAMILIES.values()) + ")")
    parser.add_argument("--force", action="store_true",
                        help="replace an existing --out folder (only once the new bundle is complete)")
    parser.add_argument("--json", action="store_true", help="print one JSON summary object instead of the path")
    parser.add_argument("--quiet", action="store_true",
                        help="print errors only: no progress, no parity table (the JSON or the path still goes to "
                             "stdout)")
    return parser


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def parity_table(manifest) -> str:
    """A fixed-width table of every graph's export-time check."""
    lines = [f"{'graph':<16} {'file':<34} {'precision':<24} {'max abs':>10} {'max rel':>10} {'cosine':>10}  check"]
    for graph in manifest.graphs:
        p = graph.parity
        if p is None:
            lines.append(f"{graph.name:<16} {graph.file:<34} {graph.precision:<24} {'-':>10} {'-':>10} {'-':>10}  "
                         "I/O spec checked (no prediction on this platform)")
            continue
        rule = rule_text(p.metric, p.tolerance)
        lines.append(f"{graph.name:<16} {graph.file:<34} {graph.precision:<24} {p.max_abs_error:>10.3g} "
                     f"{p.max_rel_error:>10.3g} {p.cosine:>10.6f}  {'pass' if p.passed else 'FAIL'} ({rule})")
    return "\n".join(lines)


def quiet_third_party_output() -> None:
    """Keep the libraries the exporter drives from talking on stderr, so it shows only the export's own progress,
    its parity table and errors. Every silenced message is about the libraries' own setup, not the export:
    torchao's optional CUDA kernels and missing triton, torch.onnx's "torchvision is not installed" per export,
    FutureWarnings inside torch, diffusers' "pip install accelerate" and its loading bar, onnx's reference
    evaluator dividing by zero while quantizing, and ONNX Runtime's note that the text encoders' placeholder
    inputs are also initializers: they are, on purpose (optional inputs with an empty default, so optimum's
    ORTDiffusionPipeline can feed input_ids alone), so the warning is about a choice, not a defect. The
    libraries' own verbosity variables, when set, still win."""
    import warnings

    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")  # read when diffusers first logs, before our imports
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore")  # Python warnings from the libraries; ours stay visible:
    warnings.filterwarnings("default", module=r"ralu_(edge|export|runtime)(\.|$)")
    for name in ("torchao", "onnxscript", "onnxruntime"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import onnxruntime
    import torch
    from onnxruntime.tools.ort_format_model import utils as ort_format_utils

    torch._logging.set_logs(all=logging.ERROR)  # torch sets its loggers' levels itself, on import
    ort_format_utils.log.setLevel(logging.WARNING)  # the ORT tool sets DEBUG on import
    onnxruntime.set_default_logger_severity(3)  # errors only, for sessions that set no severity of their own
    import diffusers.utils.logging

    diffusers.utils.logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(lambda: export(args), interrupted="interrupted; no bundle was written")


def export(args: argparse.Namespace) -> int:
    """Build the bundle the arguments describe and print the result; 1 when an exported graph fails its check
    (the exporter's fault, not the user's)."""
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    quiet_third_party_output()
    logging.getLogger("ralu_export").setLevel(logging.ERROR if args.quiet else logging.INFO)
    from ralu_edge.manifest import read_manifest
    from ralu_export.bundle import ExportConfig, build_bundle
    from ralu_export.parity import ParityError
    from ralu_export.pipeline_files import TokenizerMismatch

    presets = None if args.presets is None else tuple(p.strip() for p in args.presets.split(",") if p.strip())
    config = ExportConfig(model=args.model, target=args.target, out=args.out, precision=args.precision,
                          height=args.height, width=args.width, presets=presets, force=args.force,
                          attention=args.attention)
    started = time.perf_counter()
    try:
        out = build_bundle(config)
    except (ParityError, TokenizerMismatch) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    manifest = read_manifest(out)
    if not args.quiet:
        print(parity_table(manifest), file=sys.stderr)
    if args.json:
        print(json.dumps({
            "out": str(out), "target": manifest.target, "precision": manifest.precision,
            "seconds": round(time.perf_counter() - started, 1), "size_bytes": sum(f.size for f in manifest.files),
            "graphs": [{"name": g.name, "file": g.file, "precision": g.precision,
                        "max_rel_error": g.parity.max_rel_error if g.parity else None,
                        "cosine": g.parity.cosine if g.parity else None} for g in manifest.graphs],
        }))
    else:
        print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
