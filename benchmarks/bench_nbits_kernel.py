"""One weight MatMul at a time: fp32 (MLAS SGEMM) against ONNX Runtime's MatMulNBits at each bits / block size /
accuracy level, at the weight shapes of the models the project measures, to show where 4- and 8-bit weights can
be faster than fp32 and which block size and level are (issue 15: "block size and accuracy_level chosen by
measurement").

Shapes ([K, N] of x[M, K] @ W[K, N], M = image + text tokens):
  builtin   the built-in model (192 wide, MLP 768): 192x192 (q/k/v/out), 192x768 (MLP in), 768x192 (MLP out),
            960x192 (single block's output projection over attention + MLP), M = 256 + 32
  flux-512  the 1024-token random FLUX (256 wide): 256x256, 256x1024, 1024x256, 1280x256, M = 1024 + 32
  real      FLUX.1's width: 3072x3072, 3072x12288, 12288x3072, 15360x3072, M = 1024 + 512

Each weight is N(0, 1/K); each MatMulNBits graph is the exporter's own pass (export/quantize.quantize_nbits) on
the fp32 MatMul. Every variant of one shape lives in one process and is timed in interleaved rounds
(measure.interleaved_seconds), medians; the ratio to fp32 is from the same rounds; cosine: the output against
fp32's. Writes a table to stdout and benchmarks/results/nbits_kernel.{json,md}.

    nice -n 5 python benchmarks/bench_nbits_kernel.py --threads 1
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

import measure

RESULTS = Path(__file__).parent / "results"
MODELS = {"builtin": (256 + 32, ((192, 192), (192, 768), (768, 192), (960, 192))),
          "flux-512": (1024 + 32, ((256, 256), (256, 1024), (1024, 256), (1280, 256))),
          "real": (1024 + 512, ((3072, 3072), (3072, 12288), (12288, 3072), (15360, 3072)))}
VARIANTS = tuple((bits, block, level) for bits in (4, 8) for block in (32, 64, 128, 256) for level in (1, 4))


def matmul_graph(weight: np.ndarray):
    from onnx import TensorProto, helper, numpy_helper

    k, n = weight.shape
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", k])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", n])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "matmul", [x], [y],
                              [numpy_helper.from_array(weight, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


def measure_shape(tokens: int, k: int, n: int, threads: int, repeats: int) -> dict:
    import onnxruntime as ort

    from ralu_export.quantize import NBitsConfig, quantize_nbits

    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
    x = {"x": rng.standard_normal((tokens, k)).astype(np.float32)}
    base = matmul_graph(weight)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    models = {"fp32": base}
    for bits, block, level in VARIANTS:
        if block <= k:
            models[f"{bits}:{block}:{level}"] = quantize_nbits(base, NBitsConfig(bits, block, level))
    sessions = {name: ort.InferenceSession(m.SerializeToString(), options, providers=["CPUExecutionProvider"])
                for name, m in models.items()}
    reference = sessions["fp32"].run(None, x)[0].ravel().astype(np.float64)
    cosine = {}
    for name, s in sessions.items():
        out = s.run(None, x)[0].ravel().astype(np.float64)
        cosine[name] = float(out @ reference / (np.linalg.norm(out) * np.linalg.norm(reference)))
    seconds = measure.interleaved_seconds({name: (lambda s=s: s.run(None, x)) for name, s in sessions.items()},
                                          repeats)
    fp32 = float(np.median(seconds["fp32"]))
    return {"tokens": tokens, "k": k, "n": n,
            "variants": {name: {**measure.summary_ms(s), "x_fp32": float(np.median(s)) / fp32,
                                "cosine": cosine[name]} for name, s in seconds.items()}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=7, help="interleaved rounds (real width: a third as many)")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--json", type=Path, default=RESULTS / "nbits_kernel.json")
    p.add_argument("--md", type=Path, default=RESULTS / "nbits_kernel.md")
    args = p.parse_args(argv)
    doc = {"benchmark": "bench_nbits_kernel", "issue": 15,
           "environment": measure.environment(args.threads, ("onnxruntime",)), "rows": []}
    for model in args.models:
        tokens, shapes = MODELS[model]
        for k, n in shapes:
            repeats = args.repeats if model != "real" else max(3, args.repeats // 3)
            row = {"model": model, **measure_shape(tokens, k, n, args.threads, repeats)}
            doc["rows"].append(row)
            best = min((v for v in row["variants"] if v != "fp32" and v.startswith("4:")),
                       key=lambda v: row["variants"][v]["x_fp32"])
            print(f"{model} {k}x{n}: fp32 {row['variants']['fp32']['median_ms']:.2f} ms, fastest 4-bit {best} "
                  f"{row['variants'][best]['x_fp32']:.2f}x", file=sys.stderr, flush=True)
    doc["load_average_at_end"] = measure.load_average()
    names = ["fp32"] + [f"{b}:{s}:{lv}" for b, s, lv in VARIANTS]
    lines = ["x fp32 per call (cosine to fp32 below each ratio row); columns bits:block:accuracy level",
             f"{'model':9s} {'K x N':>11s} {'fp32 ms':>8s} " + " ".join(f"{n:>7s}" for n in names[1:])]
    for row in doc["rows"]:
        v = row["variants"]
        lines.append(f"{row['model']:9s} {row['k']:>5d}x{row['n']:<5d} {v['fp32']['median_ms']:8.2f} "
                     + " ".join(f"{v[n]['x_fp32']:7.2f}" if n in v else f"{'-':>7s}" for n in names[1:]))
        lines.append(f"{'':9s} {'':11s} {'cosine':>8s} "
                     + " ".join(f"{v[n]['cosine']:7.4f}" if n in v else f"{'-':>7s}" for n in names[1:]))
    text = "\n".join(lines)
    print(text)
    env = doc["environment"]
    args.json.write_text(json.dumps(doc, indent=1) + "\n")
    args.md.write_text(
        "# One weight MatMul: fp32 vs MatMulNBits (issue 15)\n\n"
        f"{measure.machine_line(env, doc['load_average_at_end'])}, {args.threads} thread(s); medians of "
        f"{args.repeats} interleaved rounds ({max(3, args.repeats // 3)} at real width). "
        "Ratios below 1 are faster than fp32.\n\n"
        f"Reproduce: `nice -n 5 .venv/bin/python benchmarks/bench_nbits_kernel.py --threads {args.threads}`\n\n"
        f"```\n{text}\n```\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
