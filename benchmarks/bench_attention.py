"""Attention alone: torch's exported ops (MatMul(q, kᵀ) -> Mul -> Softmax -> MatMul(·, v), then back to tokens)
against the same graph after export/attention_fusion.py (ONNX Runtime's MultiHeadAttention: MLAS flash attention
on the CPU), at the attention shapes of the models the project measures:

  builtin     the built-in shapes model: 6 heads x 32, 256 image + 32 text tokens (its full-resolution stage)
  flux-512    the 1024-token random FLUX (bench_runtime.py build-flux): 4 heads x 64, 1024 + 32 tokens
  real-512    FLUX.1's width (24 heads x 128) at a 512² image: 1024 + 512 text tokens
  real-1024   FLUX.1's width at a 1024² image: 4096 + 512 tokens

Time: both graphs in one process, interleaved rounds (measure.interleaved_seconds), medians. Memory: each graph in a
fresh process that opens its session and runs one call; the growth of VmHWM over the process after opening is the
call's own peak (the unfused graph holds the [heads, tokens, tokens] scores; the fused kernel L2-sized tiles).
Output agreement: max abs difference of the two graphs' outputs. Writes a table to stdout and
benchmarks/results/attention.{json,md}.

    nice -n 5 python benchmarks/bench_attention.py --threads 1
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

import measure

RESULTS = Path(__file__).parent / "results"
SHAPES = {"builtin": (6, 32, 256 + 32), "flux-512": (4, 64, 1024 + 32), "real-512": (24, 128, 1024 + 512),
          "real-1024": (24, 128, 4096 + 512)}


def graphs(heads: int, head_dim: int) -> dict:
    import onnx_ir as ir

    from ralu_export.attention_fusion import fuse_attention, torch_attention_graph

    unfused = torch_attention_graph(heads, head_dim)
    fused, count = fuse_attention(ir.from_proto(unfused))
    if count != 1:
        raise SystemExit(f"the attention of {heads} x {head_dim} did not fuse")
    return {"unfused": unfused.SerializeToString(), "fused": ir.serde.serialize_model(fused).SerializeToString()}


def session(model: bytes, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.enable_mem_pattern = False  # as the runtime opens dynamic-token graphs (runtime/sessions.py)
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def feeds(heads: int, head_dim: int, tokens: int) -> dict:
    rng = np.random.default_rng(0)
    return {n: rng.standard_normal((1, heads, tokens, head_dim)).astype(np.float32) for n in "qkv"}


def child_memory(shape: str, variant: str, threads: int) -> dict:
    heads, head_dim, tokens = SHAPES[shape]
    s = session(graphs(heads, head_dim)[variant], threads)
    x = feeds(heads, head_dim, tokens)
    before = measure.peak_rss_mb()
    s.run(None, x)
    return {"peak_growth_mb": measure.peak_rss_mb() - before, "inputs_mb": 3 * x["q"].nbytes / 2**20}


def time_shape(shape: str, threads: int, repeats: int) -> dict:
    heads, head_dim, tokens = SHAPES[shape]
    sessions = {name: session(model, threads) for name, model in graphs(heads, head_dim).items()}
    x = feeds(heads, head_dim, tokens)
    outputs = {name: s.run(None, x)[0] for name, s in sessions.items()}
    seconds = measure.interleaved_seconds({name: (lambda s=s: s.run(None, x)) for name, s in sessions.items()},
                                          repeats, warmup=0)
    return {"heads": heads, "head_dim": head_dim, "tokens": tokens,
            "max_abs_difference": float(np.abs(outputs["fused"] - outputs["unfused"]).max()),
            **{name: measure.summary_ms(s, count=True) for name, s in seconds.items()}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5, help="interleaved rounds per shape")
    p.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--child", nargs=2, metavar=("SHAPE", "VARIANT"), help=argparse.SUPPRESS)
    p.add_argument("--json", type=Path, default=RESULTS / "attention.json")
    p.add_argument("--md", type=Path, default=RESULTS / "attention.md")
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child_memory(*args.child, args.threads)))
        return 0
    doc = {"benchmark": "bench_attention", "environment": measure.environment(args.threads, ("onnxruntime",)),
           "repeats": args.repeats, "shapes": {}}
    for shape in args.shapes:
        row = time_shape(shape, args.threads, max(1, args.repeats if SHAPES[shape][2] < 4000 else args.repeats // 2))
        for variant in ("unfused", "fused"):
            row[variant].update(measure.json_child([sys.executable, __file__, "--threads", str(args.threads),
                                                    "--child", shape, variant], args.threads,
                                                   f"{shape} {variant}: memory"))
        doc["shapes"][shape] = row
        print(f"{shape}: {row['unfused']['median_ms']:.1f} -> {row['fused']['median_ms']:.1f} ms", file=sys.stderr)
    doc["load_average_at_end"] = measure.load_average()
    lines = [f"{'shape':10s} {'heads x dim':>11s} {'tokens':>6s} {'unfused ms':>10s} {'fused ms':>9s} {'x':>5s} "
             f"{'unfused peak MB':>15s} {'fused peak MB':>13s} {'max |diff|':>10s}", "-" * 98]
    for shape, r in doc["shapes"].items():
        u, f = r["unfused"], r["fused"]
        lines.append(f"{shape:10s} {r['heads']:>5d} x {r['head_dim']:<3d} {r['tokens']:6d} {u['median_ms']:10.1f} "
                     f"{f['median_ms']:9.1f} {f['median_ms'] / u['median_ms']:5.2f} {u['peak_growth_mb']:15.0f} "
                     f"{f['peak_growth_mb']:13.0f} {r['max_abs_difference']:10.1e}")
    text = "\n".join(lines)
    print(text)
    env = doc["environment"]
    args.json.write_text(json.dumps(doc, indent=1) + "\n")
    args.md.write_text(
        "# Attention: torch's exported ops vs ONNX Runtime's MultiHeadAttention\n\n"
        f"{measure.machine_line(env, doc['load_average_at_end'])}, {args.threads} thread(s). ms: median of "
        f"{args.repeats} interleaved calls (half as many at 4608 tokens) in one process; "
        "peak MB: growth of VmHWM during one call in a fresh process (the q, k, v inputs excluded: allocated "
        "before). Tokens: image + text.\n\n"
        f"Reproduce: `nice -n 5 .venv/bin/python benchmarks/bench_attention.py --threads {args.threads}`\n\n"
        f"```\n{text}\n```\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
