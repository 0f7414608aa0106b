"""Weights beyond 2 GB (issue 8, "Large weights" must-show): export a >= 2.5 GB random-weight FLUX pipeline to
the android target and load it through the runtime, each phase in its own process so that its peak RSS
(VmHWM) is its own. Prints a table and writes benchmarks/results/large_weights.json.

Phases (one subprocess each):
  build    ralu_export.tiny_models.build_large_flux (skipped when --model already holds the folder)
  export   `ralu-export --model M --target android` in-process: wall time, peak RSS / weight size
  load     ralu_runtime.Pipeline.from_bundle (sha256 check of every file + ORT sessions with the manifest's
           session_config), then one denoiser call at full resolution: peak RSS after load and after the
           call, RssAnon/RssFile, seconds per call
  session  the denoiser graph alone with ORT prepacking on and off (the manifest's choice for graphs that
           stay .onnx on android; export/ort_format.py cites this table)
  int8     (--int8) export and load of a weight-only int8 android bundle of the same model

Weight size is the transformer checkpoint's safetensors bytes (float32); MB in the table are 2^20 bytes.
Progress on stderr, results on stdout. Big artifacts live under --work (default /tmp/ralu-large-weights);
--clean removes them afterwards.

    python benchmarks/bench_large_weights.py --work /tmp/ralu-large --clean
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

import measure

RESULTS = Path(__file__).parent / "results"
PROMPT = "a large red circle on the left"
TARGETS = {"export_rss_ratio": 1.5, "load_rss_ratio": 1.3}


def weight_bytes(model: Path) -> int:
    return sum(p.stat().st_size for p in (model / "transformer").glob("*.safetensors"))


# ---------------------------------------------------------------- phase children (one process each)

def child_build(args) -> dict:
    from ralu_export.tiny_models import build_large_flux

    started = time.perf_counter()
    build_large_flux(args.model, layers=args.layers, single_layers=args.single_layers, heads=args.heads)
    return {"seconds": time.perf_counter() - started, "peak_rss_mb": measure.peak_rss_mb()}


def child_export(args) -> dict:
    from ralu_export import cli

    started = time.perf_counter()
    code = cli.main(["--model", str(args.model), "--target", "android", "--precision", args.precision, "--height",
                     str(args.size), "--width", str(args.size), "--out", str(args.bundle), "--force"])
    if code:
        raise SystemExit(code)
    return {"seconds": time.perf_counter() - started, "peak_rss_mb": measure.peak_rss_mb()}


def _denoiser_inputs(pipe):
    from ralu_edge.tokens import grid_positions

    gh, gw = pipe.grid
    cond = pipe.text.encode(PROMPT)
    x = np.random.default_rng(0).standard_normal((1, gh * gw, pipe.channels)).astype(np.float32)
    return x, grid_positions(gh, gw), np.asarray([0.5], np.float32), cond


def child_load(args) -> dict:
    from ralu_runtime.pipeline import Pipeline

    started = time.perf_counter()
    pipe = Pipeline.from_bundle(args.bundle, threads=args.threads)
    out = {"load_seconds": time.perf_counter() - started, "peak_rss_mb_after_load": measure.peak_rss_mb(),
           "after_load": measure.memory_mb()}
    x, positions, sigma, cond = _denoiser_inputs(pipe)
    times = []
    for _ in range(args.calls + 1):  # the first call is the warm-up (ORT plans memory per new shape)
        t0 = time.perf_counter()
        pipe.denoiser(x, positions, sigma, cond)
        times.append(time.perf_counter() - t0)
    graph = pipe.bundle.manifest.graph(pipe.bundle.manifest.denoiser.graph_for(x.shape[1]))
    out.update({"tokens": int(x.shape[1]), "step_seconds_median": float(np.median(times[1:])),
                "step_seconds": times, "peak_rss_mb": measure.peak_rss_mb(), "after_step": measure.memory_mb(),
                "denoiser_file": graph.file, "session_config": dict(graph.session_config)})
    return out


def child_session(args) -> dict:
    """The denoiser graph alone, prepacking on or off (otherwise the manifest's entries)."""
    import onnxruntime as ort

    from ralu_edge.rope import rope_tables
    from ralu_runtime.bundle import open_bundle
    from ralu_runtime.sessions import SessionConfig, session_options

    bundle = open_bundle(args.bundle)
    manifest = bundle.manifest
    graph = manifest.graph(manifest.denoiser.stage_graphs[0].graph)
    so = session_options(SessionConfig(threads=args.threads))
    for key, value in {**graph.session_config, "session.disable_prepacking": "0" if args.prepack == "on"
                       else "1"}.items():
        so.add_session_config_entry(key, value)
    started = time.perf_counter()
    session = ort.InferenceSession(str(bundle.path(graph.file)), so, providers=["CPUExecutionProvider"])
    out = {"prepack": args.prepack, "load_seconds": time.perf_counter() - started,
           "peak_rss_mb_after_load": measure.peak_rss_mb(), "after_load": measure.memory_mb()}
    res, spec = manifest.resolutions[0], manifest.denoiser
    tokens = res.grid_height * res.grid_width
    rng = np.random.default_rng(0)
    from ralu_edge.tokens import grid_positions

    text_ids = np.zeros((spec.text_length, len(manifest.rope.axes_dim)))
    cos, sin = rope_tables(np.concatenate([text_ids, grid_positions(res.grid_height, res.grid_width)]),
                           manifest.rope.axes_dim, manifest.rope.theta)
    feeds = {"hidden_states": rng.standard_normal((1, tokens, spec.token_channels), np.float32),
             "encoder_hidden_states": rng.standard_normal((1, spec.text_length, spec.text_dim), np.float32),
             "pooled_projections": rng.standard_normal((1, spec.pooled_dim), np.float32),
             "timestep": np.asarray([0.5], np.float32), "rope_cos": cos, "rope_sin": sin,
             "guidance": np.asarray([3.5], np.float32)}
    feeds = {k: v for k, v in feeds.items() if k in {i.name for i in session.get_inputs()}}
    times = []
    for _ in range(args.calls + 1):
        t0 = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - t0)
    out.update({"tokens": tokens, "step_seconds_median": float(np.median(times[1:])), "step_seconds": times,
                "peak_rss_mb": measure.peak_rss_mb(), "after_step": measure.memory_mb()})
    return out


CHILDREN = {"build": child_build, "export": child_export, "load": child_load, "session": child_session}


def run_child(phase: str, args, extra: list[str] | None = None) -> dict:
    cmd = ["nice", "-n", "10", sys.executable, __file__, "--child", phase, "--model", str(args.model), "--bundle",
           str(args.bundle), "--size", str(args.size), "--threads", str(args.threads), "--calls", str(args.calls),
           "--layers", str(args.layers), "--single-layers", str(args.single_layers), "--heads", str(args.heads),
           "--precision", args.precision, *(extra or [])]
    return measure.json_child(cmd, args.threads, f"phase {phase} {' '.join(extra or [])}".rstrip())


# ---------------------------------------------------------------- report

def table(doc: dict) -> str:
    w = doc["weights_mb"]
    e, ld = doc["export"], doc["load"]
    rows = [("weights (transformer, fp32)", f"{w:,.0f} MB", f"{doc['parameters_m']:.0f} M parameters"),
            ("export to android: wall", f"{e['seconds']:.0f} s", ""),
            ("export to android: peak RSS", f"{e['peak_rss_mb']:,.0f} MB",
             f"{e['peak_rss_mb'] / w:.2f}x weights (target <= {TARGETS['export_rss_ratio']})"),
            ("bundle denoiser", doc["bundle_denoiser"], f"{doc['bundle_data_mb']:,.0f} MB external data"),
            ("runtime load (Pipeline.from_bundle)", f"{ld['load_seconds']:.1f} s",
             f"session_config {ld['session_config'] or '{}'}"),
            ("runtime peak RSS after load", f"{ld['peak_rss_mb_after_load']:,.0f} MB",
             f"{ld['peak_rss_mb_after_load'] / w:.2f}x weights"),
            ("runtime peak RSS after 1 step", f"{ld['peak_rss_mb']:,.0f} MB",
             f"{ld['peak_rss_mb'] / w:.2f}x weights (target <= {TARGETS['load_rss_ratio']}); anon "
             f"{ld['after_step']['RssAnon_mb']:,.0f} MB, file {ld['after_step']['RssFile_mb']:,.0f} MB"),
            ("denoiser step", f"{ld['step_seconds_median']:.2f} s", f"{ld['tokens']} image tokens, "
             f"{doc['threads']} threads, median of {len(ld['step_seconds']) - 1}")]
    for s in doc.get("sessions", []):
        rows.append((f"denoiser session alone, prepacking {s['prepack']}",
                     f"{s['peak_rss_mb']:,.0f} MB",
                     f"{s['peak_rss_mb'] / w:.2f}x; load {s['load_seconds']:.1f} s; step "
                     f"{s['step_seconds_median']:.2f} s; anon {s['after_step']['RssAnon_mb']:,.0f} MB, file "
                     f"{s['after_step']['RssFile_mb']:,.0f} MB"))
    if "int8" in doc:
        e8, l8 = doc["int8"]["export"], doc["int8"]["load"]
        rows += [("int8 export to android: wall", f"{e8['seconds']:.0f} s", ""),
                 ("int8 export to android: peak RSS", f"{e8['peak_rss_mb']:,.0f} MB",
                  f"{e8['peak_rss_mb'] / w:.2f}x the fp32 weights"),
                 ("int8 bundle denoiser", l8["denoiser_file"].split("/")[-1],
                  f"{doc['int8']['bundle_files_mb']:,.0f} MB in transformer/"),
                 ("int8 runtime peak RSS after 1 step", f"{l8['peak_rss_mb']:,.0f} MB",
                  f"{l8['peak_rss_mb'] / w:.2f}x the fp32 weights; step {l8['step_seconds_median']:.2f} s")]
    width = max(len(r[0]) for r in rows)
    lines = [f"{'measure':<{width}}  {'value':>14}  notes", "-" * (width + 60)]
    lines += [f"{a:<{width}}  {b:>14}  {c}" for a, b, c in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("/tmp/ralu-large-weights"),
                   help="folder for the pipeline and the bundle (several GB of disk)")
    p.add_argument("--model", type=Path, help="pipeline folder (default WORK/flux-large; built when missing)")
    p.add_argument("--bundle", type=Path, help="bundle folder (default WORK/bundle-android)")
    p.add_argument("--size", type=int, default=128, help="bundle height = width in pixels (128: 64 tokens)")
    p.add_argument("--threads", type=int, default=2, help="ORT intra-op threads")
    p.add_argument("--calls", type=int, default=3, help="timed denoiser calls after one warm-up")
    p.add_argument("--layers", type=int, default=4, help="double-stream blocks of the built model")
    p.add_argument("--single-layers", type=int, default=9, help="single-stream blocks of the built model")
    p.add_argument("--heads", type=int, default=12, help="attention heads (x 128) of the built model")
    p.add_argument("--no-sessions", action="store_true", help="skip the prepacking on/off session phases")
    p.add_argument("--int8", action="store_true",
                   help="also export and load an int8 (weight-only) android bundle: rows 'int8 ...'")
    p.add_argument("--clean", action="store_true", help="delete the built pipeline and bundle at the end")
    p.add_argument("--json", type=Path, default=RESULTS / "large_weights.json")
    p.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    p.add_argument("--prepack", choices=("on", "off"), default="on", help=argparse.SUPPRESS)
    p.add_argument("--precision", choices=("fp32", "int8"), default="fp32", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.model = args.model or args.work / "flux-large"
    args.bundle = args.bundle or args.work / "bundle-android"
    if args.child:
        print(json.dumps(CHILDREN[args.child](args), default=float))
        return 0
    args.work.mkdir(parents=True, exist_ok=True)
    built = None
    if not (args.model / "model_index.json").is_file():
        built = run_child("build", args)
    weights = weight_bytes(args.model)
    config = json.loads((args.model / "transformer" / "config.json").read_text())
    environment = measure.environment(args.threads, ("onnxruntime", "numpy"))  # as bench_runtime records it
    doc = {"benchmark": "bench_large_weights", "environment": environment, "threads": args.threads,
           "model": str(args.model), "transformer_config": config, "weights_bytes": weights,
           "weights_mb": weights / 2**20, "parameters_m": weights / 4 / 1e6, "size": args.size, "build": built,
           "targets": TARGETS}
    doc["export"] = run_child("export", args)
    data = sorted((args.bundle / "transformer").glob("*.onnx_data"))
    doc["bundle_denoiser"] = next(p.name for p in sorted((args.bundle / "transformer").iterdir())
                                  if p.name.startswith("denoiser."))
    doc["bundle_data_mb"] = sum(p.stat().st_size for p in data) / 2**20
    doc["load"] = run_child("load", args)
    if not args.no_sessions:
        doc["sessions"] = [run_child("session", args, ["--prepack", mode]) for mode in ("on", "off")]
    if args.int8:
        fp32_bundle = args.bundle
        args.bundle, args.precision = args.bundle.with_name(args.bundle.name + "-int8"), "int8"
        doc["int8"] = {"export": run_child("export", args), "load": run_child("load", args)}
        doc["int8"]["bundle_files_mb"] = sum(p.stat().st_size for p in (args.bundle / "transformer").iterdir()) / 2**20
        if args.clean:
            shutil.rmtree(args.bundle, ignore_errors=True)
        args.bundle = fp32_bundle
    w = doc["weights_mb"]
    doc["ratios"] = {"export_peak_rss": doc["export"]["peak_rss_mb"] / w,
                     "load_peak_rss_after_load": doc["load"]["peak_rss_mb_after_load"] / w,
                     "load_peak_rss_after_step": doc["load"]["peak_rss_mb"] / w}
    doc["met"] = {"export": doc["ratios"]["export_peak_rss"] <= TARGETS["export_rss_ratio"],
                  "load": doc["ratios"]["load_peak_rss_after_step"] <= TARGETS["load_rss_ratio"]}
    doc["table"] = table(doc)
    print(doc["table"])
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=1, default=float) + "\n")
    print(args.json)
    if args.clean:
        shutil.rmtree(args.bundle, ignore_errors=True)
        if built is not None:
            shutil.rmtree(args.model, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
