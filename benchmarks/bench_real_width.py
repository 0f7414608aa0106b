"""Weight precision at FLUX.1's real block width (issue 15, item 3): a random-weight FLUX with hidden 3072 (24 heads x
128), FLUX.1's MLP ratio 4 and RoPE axes (16, 56, 56), and a few blocks (default 1 double + 1 single), exported
to the desktop target at fp32 and quantized to int8 (weight-only per-channel QDQ) / int4 (MatMulNBits,
export/quantize.NBITS),
each phase in its own process so that its peak RSS (VmHWM) is its own:

  build    ralu_export.tiny_models.build_large_flux (skipped when --model holds the folder)
  export   `ralu-export --target desktop` (fp32) in-process: wall seconds, peak RSS
  quantize int8 / int4: the exporter's quantize stage on that exported graph, streamed: wall seconds, peak RSS
  weights  bytes per block (initializers named transformer_blocks.<i>. / single_transformer_blocks.<i>.) in the
           exported denoiser graph, and the rest
  step     the bundle's denoiser session alone, configured as a generation session is (the manifest's
           session_config + generation_session_config; int8 also as personalization opens it), --threads:
           open time and peak RSS
           after opening, then per-call ms at 512² and 1024² token counts (1024 and 4096 image tokens + the
           text tokens), peak RSS after the calls

The per-block bytes are then extrapolated to FLUX.1-dev (19 double + 38 single blocks; the blocks are 99.5 % of
its 11.9 B parameters) and, by measured bytes per block parameter, to SD3.5-medium (2.5 B parameters, its
published size), and set beside stable-diffusion.cpp's published FLUX.1-dev GGUF sizes (docs/flux.md there:
q8_0 12.1 GB, q4_0 6.4 GB). Writes a table to stdout and benchmarks/results/real_width.{json,md}.

    nice -n 5 python benchmarks/bench_real_width.py --work /tmp/ralu-real-width
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

import measure

RESULTS = Path(__file__).parent / "results"
PRECISIONS = ("fp32", "int8", "int4")
FLUX1_DEV = {"double": 19, "single": 38, "parameters": 11.9e9}
SD35_MEDIUM_PARAMETERS = 2.5e9
SD_CPP_FLUX1_DEV_GB = {"q8_0": 12.1, "q4_0": 6.4}  # leejet/stable-diffusion.cpp docs/flux.md (ANCHORS.md)
BLOCK = re.compile(r"^(?:transformer\.)?(transformer_blocks|single_transformer_blocks)\.(\d+)\.")  # boundary module prefix


# ---------------------------------------------------------------- children (one process each)

def child_build(args) -> dict:
    from ralu_export.tiny_models import build_large_flux

    started = time.perf_counter()
    build_large_flux(args.model, layers=args.layers, single_layers=args.single_layers, heads=args.heads)
    return {"seconds": time.perf_counter() - started, "peak_rss_mb": measure.peak_rss_mb()}


def child_quantize(args) -> dict:
    """The exporter's quantize stage (export/quantize.quantize: weight_qdq for int8, MatMulNBits for int4) on the
    fp32 bundle's exported denoiser graph, streamed one weight at a time as ralu-export does, saved beside it:
    wall seconds and peak RSS. (A whole `ralu-export --precision int8/int4` of this model repeats the fp32
    export's tracing and parity runs, 26 min on this shared machine: its RSS is the fp32 row's, since
    quantizing streams.)"""
    import onnx_ir as ir

    from ralu_export.quantize import quantize

    started = time.perf_counter()
    source = ir.load(str(args.work / "bundle-fp32" / "transformer" / "denoiser.onnx"))
    path = quantized_path(args.work, args.precision)
    path.parent.mkdir(exist_ok=True)
    ir.save(quantize(source, METHODS[args.precision]), str(path), external_data=path.name + ".data")
    return {"seconds": time.perf_counter() - started, "peak_rss_mb": measure.peak_rss_mb(),
            "method": METHODS[args.precision], "stage": "quantize (export/quantize.py) of the exported fp32 graph"}


METHODS = {"int8": "weight_qdq", "int4": "nbits4"}
# Step runs beyond PRECISIONS: the int8 graph as personalization opens it (runtime/sessions.py purpose
# "personalize": the manifest's session_config alone, MatMulNBits level 1, float activations); the PRECISIONS
# rows are timed as generation opens them (session_config + generation_session_config: int8 at level 4).
ZO_RUNS = {"int8-personalize": "int8", "int4-personalize": "int4"}
# The fp32 denoiser exported with `--attention unfused` (torch's MatMul/Softmax/MatMul attention instead of
# MultiHeadAttention's flash kernel): what every bundle ran before the fusion, timed beside the fused fp32 graph.
UNFUSED = "fp32-unfused"


def quantized_path(work: Path, precision: str) -> Path:
    return work / "quantized" / f"denoiser-{precision}.onnx"


def graph_path(work: Path, precision: str) -> Path:
    if precision == UNFUSED:
        return work / f"bundle-{UNFUSED}" / "transformer" / "denoiser.onnx"
    precision = ZO_RUNS.get(precision, precision)
    return work / "bundle-fp32" / "transformer" / "denoiser.onnx" if precision == "fp32" else \
        quantized_path(work, precision)


def child_export(args) -> dict:
    from ralu_export import cli

    started = time.perf_counter()
    unfused = args.precision == UNFUSED
    code = cli.main(["--model", str(args.model), "--target", "desktop", "--precision", "fp32" if unfused else
                     args.precision, "--attention", "unfused" if unfused else "fused",
                     "--height", str(args.size), "--width", str(args.size), "--presets", "flux-4x",
                     "--out", str(args.bundle), "--force"])
    if code:
        raise SystemExit(code)
    return {"seconds": time.perf_counter() - started, "peak_rss_mb": measure.peak_rss_mb()}


def child_weights(args) -> dict:
    """Stored bytes of the denoiser graph, and the transformer's parameters per block from its safetensors
    (names survive there; the ONNX exporter folds transposed weights into unnamed constants): matrix parameters
    (2-D weights, what int8/int4 quantize) and the rest, per block and outside the blocks."""
    from safetensors import safe_open

    out = _graph_bytes(args)
    params: dict[str, dict[str, int]] = {}
    for path in sorted((args.model / "transformer").glob("*.safetensors")):
        with safe_open(str(path), framework="np") as f:
            for key in f.keys():
                shape = f.get_slice(key).get_shape()
                match = BLOCK.match(key)
                block = (f"{'double' if match.group(1) == 'transformer_blocks' else 'single'}.{match.group(2)}"
                         if match else "other")
                kind = "matrix" if len(shape) == 2 and int(np.prod(shape)) >= 256 else "rest"
                params.setdefault(block, {"matrix": 0, "rest": 0})[kind] += int(np.prod(shape))
    out["parameters"] = params
    return out


def _graph_bytes(args) -> dict:
    """Initializer bytes of the exported denoiser graph per named block and in total (no tensor is read)."""
    import onnx

    from ralu_edge.manifest import read_manifest

    manifest = read_manifest(args.work / "bundle-fp32")
    path = graph_path(args.work, args.precision)
    model = onnx.load(str(path), load_external_data=False)
    per_block: dict[str, int] = {}
    other = 0
    for tensor in model.graph.initializer:
        size = tensor_bytes(tensor)
        match = BLOCK.match(tensor.name)
        if match:
            key = f"{'double' if match.group(1) == 'transformer_blocks' else 'single'}.{match.group(2)}"
            per_block[key] = per_block.get(key, 0) + size
        else:
            other += size
    return {"per_block_bytes": per_block, "other_bytes": other, "total_bytes": other + sum(per_block.values()),
            "graph": str(path), "model": manifest.model.name}


def tensor_bytes(tensor) -> int:
    """Stored bytes of an initializer (external or inline), from its metadata."""
    for entry in tensor.external_data:
        if entry.key == "length":
            return int(entry.value)
    if tensor.raw_data:
        return len(tensor.raw_data)
    import onnx

    return int(np.prod(tensor.dims)) * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize


def child_step(args) -> dict:
    """The denoiser session alone at each token count: open time, peak RSS, per-call seconds."""
    args.bundle = args.work / f"bundle-{UNFUSED if args.precision == UNFUSED else 'fp32'}"
    path = graph_path(args.work, args.precision)
    if args.precision not in ZO_RUNS:
        path = generation_graph(path, METHODS.get(args.precision, ""))
    return _time_graph(args, path)


def generation_graph(path: Path, method: str) -> Path:
    """The graph generation sessions open: for a method with a generation variant (quantize.GENERATION_NBITS:
    int4 at MatMulNBits accuracy level 4 where K >= its int8_compute_min_k, GraphEntry.generation_file) the
    quantized graph with those levels,
    saved beside it over the same external weights (the packed weights do not depend on the level)."""
    import onnx

    from ralu_export.quantize import GENERATION_NBITS

    if method not in GENERATION_NBITS:
        return path
    model = onnx.load(str(path), load_external_data=False)
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            k = next(a.i for a in node.attribute if a.name == "K")
            for attr in node.attribute:
                if attr.name == "accuracy_level":
                    attr.i = GENERATION_NBITS[method].level_for(k)
    out = path.with_name(f"{path.stem}_generation{path.suffix}")
    onnx.save(model, str(out))
    return out


def _time_graph(args, path: Path | None) -> dict:
    """Open the bundle's denoiser graph (or the graph at `path` with the bundle's geometry) and time it."""
    import onnxruntime as ort

    from ralu_edge.rope import rope_tables
    from ralu_edge.tokens import grid_positions
    from ralu_runtime.bundle import open_bundle
    from ralu_runtime.sessions import SessionConfig, session_options

    bundle = open_bundle(args.bundle, verify=False)
    manifest, spec = bundle.manifest, bundle.manifest.denoiser
    graph = manifest.graph(spec.stage_graphs[0].graph)
    so = session_options(SessionConfig(threads=args.threads))
    so.enable_mem_pattern = False  # as the runtime opens dynamic-token graphs (runtime/sessions.py)
    from ralu_export.quantize import GENERATION_SESSION_CONFIG, SESSION_CONFIG

    method = METHODS.get(ZO_RUNS.get(args.precision, args.precision), "")
    entries = dict(SESSION_CONFIG.get(method, {}))  # what the manifest records for the graph (weight_qdq: level 1)
    if args.precision not in ZO_RUNS:  # and what a generation session adds (weight_qdq: level 4)
        entries.update(GENERATION_SESSION_CONFIG.get(method, {}))
    for key, value in entries.items():
        so.add_session_config_entry(key, value)
    out_config = entries
    started = time.perf_counter()
    session = ort.InferenceSession(str(path or bundle.path(graph.file)), so, providers=["CPUExecutionProvider"])
    out = {"open_seconds": time.perf_counter() - started, "peak_rss_mb_after_open": measure.peak_rss_mb(),
           "after_open": measure.memory_mb(), "session_config": out_config, "calls": {}}
    names = {i.name for i in session.get_inputs()}
    rng = np.random.default_rng(0)
    for side in args.grids:
        tokens = side * side
        text_ids = np.zeros((spec.text_length, len(manifest.rope.axes_dim)))
        cos, sin = rope_tables(np.concatenate([text_ids, grid_positions(side, side)]), manifest.rope.axes_dim,
                               manifest.rope.theta)
        feeds = {"hidden_states": rng.standard_normal((1, tokens, spec.token_channels), np.float32),
                 "encoder_hidden_states": rng.standard_normal((1, spec.text_length, spec.text_dim), np.float32),
                 "pooled_projections": rng.standard_normal((1, spec.pooled_dim), np.float32),
                 "timestep": np.asarray([0.5], np.float32), "rope_cos": cos, "rope_sin": sin,
                 "guidance": np.asarray([3.5], np.float32)}
        feeds = {k: v for k, v in feeds.items() if k in names}
        # One untimed warm-up before the first size only: with memory patterns off (as the runtime runs
        # dynamic-token graphs) every call allocates its own buffers, and a 1024² call costs minutes here.
        warmup = 1 if side == args.grids[0] else 0
        seconds, first = [], None
        for i in range(args.calls + warmup):
            t0 = time.perf_counter()
            velocity = session.run(None, feeds)[0]
            if i >= warmup:
                seconds.append(time.perf_counter() - t0)
            first = velocity if first is None else first
        np.save(args.work / f"velocity-{args.precision.replace(':', '-')}-{tokens}.npy", first)
        out["calls"][str(tokens)] = {"image_tokens": tokens, "text_tokens": spec.text_length,
                                     "seconds": seconds, "median_ms": float(np.median(seconds)) * 1e3,
                                     "peak_rss_mb": measure.peak_rss_mb()}
    out["peak_rss_mb"] = measure.peak_rss_mb()
    return out


# Level 4 beside the bundle's level 1 (4, 32, 1): the speed ZO safety costs; larger blocks at level 4: fewer
# per-block scales and activation quantizations for the same kernel (the block size of quantize.NBITS).
SWEEP = ((4, 32, 4), (4, 64, 4), (4, 128, 4))


def child_sweep(args) -> dict:
    """MatMulNBits settings (bits, block_size, accuracy_level) on the fp32 bundle's denoiser graph: each
    quantized by export/quantize's pass into a scratch file, its session opened alone, then per-call ms at
    the first --grids side and its output against fp32's (the choice of quantize.NBITS)."""
    import onnx_ir as ir

    from ralu_export.quantize import NBitsConfig, _quantize_nbits_ir

    bits, block, level = (int(v) for v in args.precision.split(":"))
    source = ir.load(str(args.work / "bundle-fp32" / "transformer" / "denoiser.onnx"))
    path = args.work / "sweep" / f"denoiser-{bits}-{block}-{level}.onnx"
    path.parent.mkdir(exist_ok=True)
    ir.save(_quantize_nbits_ir(source, NBitsConfig(bits, block, level)), str(path), external_data=path.name + ".data")
    del source
    args.bundle = args.work / "bundle-fp32"
    return _time_graph(args, path)


CHILDREN = {"build": child_build, "export": child_export, "quantize": child_quantize, "weights": child_weights,
            "step": child_step, "sweep": child_sweep}


def run_child(phase: str, args, precision: str = "fp32") -> dict:
    """One phase in a fresh process; its result is kept in WORK/results/ and reused by a rerun (--fresh redoes)."""
    record = args.work / "results" / f"{phase}-{precision.replace(':', '-')}.json"
    if record.is_file() and not args.fresh:
        return json.loads(record.read_text())
    result = _run_child(phase, args, precision)
    record.parent.mkdir(exist_ok=True)
    record.write_text(json.dumps(result))
    return result


def _run_child(phase: str, args, precision: str) -> dict:
    bundle = args.work / f"bundle-{precision}"
    cmd = ["nice", "-n", "5", sys.executable, __file__, "--child", phase, "--model", str(args.model), "--work",
           str(args.work), "--bundle", str(bundle), "--precision", precision, "--size", str(args.size),
           "--threads", str(args.threads), "--calls", str(args.calls), "--grids", *map(str, args.grids),
           "--layers", str(args.layers), "--single-layers", str(args.single_layers), "--heads", str(args.heads)]
    return measure.json_child(cmd, args.threads, f"phase {phase} ({precision})")


# ---------------------------------------------------------------- extrapolation and report

def extrapolate(weights: dict) -> dict:
    """Per precision: bytes of one double and one single block, FLUX.1-dev's 19 + 38 blocks, bytes per block
    parameter, and SD3.5-medium's 2.5 B parameters at that rate (GB = 1e9 bytes). A block's bytes = its matrix
    parameters at the precision's measured bytes per matrix parameter (the graph's bytes beyond 4 per
    non-matrix parameter, over all matrix parameters) + 4 bytes per other parameter (biases, norms stay float)."""
    params = weights["fp32"]["parameters"]
    matrix = sum(p["matrix"] for p in params.values())
    rest = sum(p["rest"] for p in params.values())
    out = {}
    for precision, w in weights.items():
        per_matrix = (w["total_bytes"] - 4 * rest) / matrix
        double, single = ((per_matrix * params[b]["matrix"] + 4 * params[b]["rest"]) for b in ("double.0", "single.0"))
        flux = FLUX1_DEV["double"] * double + FLUX1_DEV["single"] * single
        rate = (double + single) / sum(params[b]["matrix"] + params[b]["rest"] for b in ("double.0", "single.0"))
        out[precision] = {"double_block_bytes": double, "single_block_bytes": single,
                          "bytes_per_matrix_parameter": per_matrix, "graph_bytes": w["total_bytes"],
                          "ratio_to_fp32": rate / 4,
                          "bytes_per_parameter": rate, "flux1_dev_blocks_gb": flux / 1e9,
                          "sd35_medium_gb": rate * SD35_MEDIUM_PARAMETERS / 1e9}
    return out


def quality(work: Path, grids: list[int], precisions=PRECISIONS[1:]) -> dict:
    """Each precision's first velocity at each token count against fp32's: max relative error and cosine."""
    out = {}
    for precision in precisions:
        for side in grids:
            tokens = side * side
            ref, got = (np.load(work / f"velocity-{p.replace(':', '-')}-{tokens}.npy").ravel().astype(np.float64)
                        for p in ("fp32", precision))
            out[f"{precision}@{tokens}"] = {
                "max_rel_error": float(np.abs(got - ref).max() / np.abs(ref).max()),
                "cosine": float(ref @ got / (np.linalg.norm(ref) * np.linalg.norm(got)))}
    return out


def table(doc: dict) -> str:
    lines = [f"{'precision':9s} {'export s':>8s} {'exp RSS':>8s} {'open RSS':>8s} "
             + " ".join(f"{t + ' tok ms':>14s}" for t in doc["step"]["fp32"]["calls"])
             + f" {'run RSS':>8s} {'dbl MB':>7s} {'sgl MB':>7s} {'x fp32':>6s} {'FLUX.1-dev GB':>13s} {'SD3.5-M GB':>10s}",
             "-" * 140]
    for p in PRECISIONS:
        e, s, x = doc["export"][p], doc["step"][p], doc["extrapolated"][p]
        lines.append(f"{p:9s} {e['seconds']:8.0f} {e['peak_rss_mb']:8.0f} {s['peak_rss_mb_after_open']:8.0f} "
                     + " ".join(f"{c['median_ms']:14.0f}" for c in s["calls"].values())
                     + f" {s['peak_rss_mb']:8.0f} {x['double_block_bytes'] / 2**20:7.0f} "
                       f"{x['single_block_bytes'] / 2**20:7.0f} {x['ratio_to_fp32']:6.3f} "
                       f"{x['flux1_dev_blocks_gb']:13.2f} {x['sd35_medium_gb']:10.2f}")
    for run, precision in ZO_RUNS.items():
        s = doc["step"][run]
        lines.append(f"{precision} graph in personalization sessions ({run}, {s['session_config']}): "
                     + ", ".join(f"{t} tok {c['median_ms']:.0f} ms" for t, c in s["calls"].items())
                     + f", run RSS {s['peak_rss_mb']:.0f} MB")
    if UNFUSED in doc["step"]:
        e, s = doc["export"][UNFUSED], doc["step"][UNFUSED]
        lines.append(f"{'fp32, unfused attention':24s} export {e['seconds']:.0f} s, open RSS "
                     f"{s['peak_rss_mb_after_open']:.0f} MB, "
                     + ", ".join(f"{t} tok {c['median_ms']:.0f} ms (RSS {c['peak_rss_mb']:.0f} MB)"
                                 for t, c in s["calls"].items())
                     + f", run RSS {s['peak_rss_mb']:.0f} MB")
    lines.append(f"stable-diffusion.cpp FLUX.1-dev (published): q8_0 {SD_CPP_FLUX1_DEV_GB['q8_0']} GB, "
                 f"q4_0 {SD_CPP_FLUX1_DEV_GB['q4_0']} GB")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("/tmp/ralu-real-width"), help="folder for model and bundles")
    p.add_argument("--model", type=Path, help="pipeline folder (default WORK/model; built when missing)")
    p.add_argument("--bundle", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    p.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, default=128, help="bundle height = width (px) of the export")
    p.add_argument("--threads", type=int, default=1, help="ORT intra-op threads")
    p.add_argument("--calls", type=int, default=2, help="timed denoiser calls per token count after one warm-up")
    p.add_argument("--grids", type=int, nargs="+", default=[16, 32, 64],
                   help="token grid sides to time (16: 256² images, 32: 512², 64: 1024²); the first one is warmed up")
    p.add_argument("--layers", type=int, default=1, help="double-stream blocks")
    p.add_argument("--single-layers", type=int, default=1, help="single-stream blocks")
    p.add_argument("--heads", type=int, default=24, help="attention heads (x 128): 24 is FLUX.1's 3072")
    p.add_argument("--fresh", action="store_true", help="rerun phases whose results WORK/results/ holds")
    p.add_argument("--sweep", action="store_true",
                   help="also time MatMulNBits bits/block/accuracy settings at the first --grids side (SWEEP)")
    p.add_argument("--unfused", action="store_true",
                   help=f"also export the fp32 denoiser with --attention unfused and time it ({UNFUSED})")
    p.add_argument("--json", type=Path, default=RESULTS / "real_width.json")
    p.add_argument("--md", type=Path, default=RESULTS / "real_width.md")
    args = p.parse_args(argv)
    args.model = args.model or args.work / "model"
    if args.child:
        print(json.dumps(CHILDREN[args.child](args)))
        return 0
    args.work.mkdir(parents=True, exist_ok=True)
    doc = {"benchmark": "bench_real_width", "issue": 15,
           "environment": measure.environment(args.threads, ("onnxruntime", "numpy")),
           "model": {"heads": args.heads, "head_dim": 128, "hidden": args.heads * 128, "double_blocks": args.layers,
                     "single_blocks": args.single_layers, "export_size_px": args.size},
           "grids": args.grids, "calls": args.calls}
    if not (args.model / "model_index.json").is_file():
        doc["build"] = run_child("build", args)
    doc["export"], doc["weights"], doc["step"] = {}, {}, {}
    for precision in PRECISIONS:
        record = args.work / f"export-{precision}.json"
        if record.is_file():
            doc["export"][precision] = json.loads(record.read_text())
        else:
            doc["export"][precision] = run_child("export" if precision == "fp32" else "quantize", args, precision)
            record.write_text(json.dumps(doc["export"][precision]))
        doc["weights"][precision] = run_child("weights", args, precision)
    extra = (UNFUSED,) if args.unfused else ()
    if args.unfused:
        record = args.work / f"export-{UNFUSED}.json"
        if not record.is_file():
            record.write_text(json.dumps(run_child("export", args, UNFUSED)))
        doc["export"][UNFUSED] = json.loads(record.read_text())
    for precision in (*PRECISIONS, *ZO_RUNS, *extra):
        doc["step"][precision] = run_child("step", args, precision)
    if args.sweep:
        sweep_args = argparse.Namespace(**{**vars(args), "grids": args.grids[:1]})
        doc["sweep"] = {}
        for bits, block, level in SWEEP:
            key = f"{bits}:{block}:{level}"
            doc["sweep"][key] = run_child("sweep", sweep_args, key)
            doc["sweep"][key]["vs_fp32"] = quality(args.work, args.grids[:1], (key,))
            print(f"sweep {key}: {list(doc['sweep'][key]['calls'].values())[0]['median_ms']:.0f} ms", file=sys.stderr)
    doc["extrapolated"] = extrapolate(doc["weights"])
    doc["quality_vs_fp32"] = quality(args.work, args.grids, (*PRECISIONS[1:], *ZO_RUNS, *extra))
    doc["load_average_at_end"] = measure.load_average()
    text = table(doc)
    print(text)
    args.json.write_text(json.dumps(doc, indent=1) + "\n")
    env = doc["environment"]
    q = "; ".join(f"{k}: cosine {v['cosine']:.4f}, max rel {v['max_rel_error']:.3g}"
                  for k, v in doc["quality_vs_fp32"].items())
    args.md.write_text(
        "# Real-width FLUX blocks at fp32 / int8 / int4 (issue 15)\n\n"
        f"Random-weight FLUX, hidden {args.heads * 128} ({args.heads} heads x 128), MLP ratio 4, RoPE axes "
        f"(16, 56, 56), {args.layers} double + {args.single_layers} single blocks; desktop bundles exported at "
        f"{args.size} px. CPU {env['cpu']}, {env['cores']} cores (shared; load average at start "
        f"{', '.join(f'{x:.1f}' for x in env['load_average_at_start'])}, at end "
        f"{', '.join(f'{x:.1f}' for x in doc['load_average_at_end'])}), ORT {env['onnxruntime']}, "
        f"{args.threads} thread(s), each phase its own process (peak RSS = its VmHWM, MB = 2^20 bytes), "
        f"median of {args.calls} call(s) per token count, one warm-up call before the first count only (text "
        "tokens added: the tiny T5's length). "
        "Block MB: one double / single block's weight bytes as stored; FLUX.1-dev GB: 19 double + 38 single "
        "blocks at those bytes (1e9 bytes; the blocks are 99.5 % of its parameters); SD3.5-M GB: its 2.5 B "
        "parameters at the measured bytes per block parameter. stable-diffusion.cpp's published FLUX.1-dev "
        "files: q8_0 12.1 GB, q4_0 6.4 GB.\n\n"
        f"Output agreement with fp32 (first call, random inputs): {q}.\n\n"
        + "".join(f"MatMulNBits setting {k} (bits:block:accuracy level) at {list(v['calls'])[0]} image tokens: "
                  f"{list(v['calls'].values())[0]['median_ms']:.0f} ms per call (the int4 bundle's 4:32:1 above).\n\n"
                  for k, v in doc.get("sweep", {}).items())
        + "Phases run in separate processes and are cached in WORK/results/ (a rerun reuses them; --fresh redoes "
        "them), so the load average above is the assembling run's. Step rows are timed as the runtime's generation "
        "sessions open the graph (session_config + generation_session_config, or generation_file: MatMulNBits "
        "at accuracy level 4); the *-personalize rows as its personalization sessions do (level 1).\n\n"
        f"Reproduce: `nice -n 5 .venv/bin/python benchmarks/bench_real_width.py --work {args.work} "
        f"--threads {args.threads} --grids {' '.join(map(str, args.grids))}"
        f"{' --sweep' if args.sweep else ''}{' --unfused' if args.unfused else ''}`\n\n```\n{text}\n```\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
