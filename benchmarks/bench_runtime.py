"""Runtime speed and memory of RALU vs the 50-step baseline through `ralu_runtime` (issue 5, item 6 and the
"Speed" / "Memory" must-shows), per bundle: median denoising-loop seconds, loop speedup vs base-50, its
image-token-FLOP bound, end-to-end speedup, host share of the loop, per-call cost at each stage length, and
peak RSS of a baseline-only process vs a process running all three RALU stages (one subprocess each).
Optionally the ExecuTorch backend's loop time vs ORT on the same geometry.

Reads bundles (`--bundle NAME=DIR`, repeatable); `build-flux` writes a larger random-weight FluxPipeline
folder to export with `ralu-export --target desktop --height 512 --width 512`. Writes the table to stdout and
`--json` / `--md` files (default benchmarks/results/runtime.{json,md}). Progress goes to stderr.

Every mode runs the same prompts and seeds; modes are interleaved in a rotating order per (prompt, repeat)
so that load drift on a shared machine hits all modes alike. Only ratios from the same run are compared."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import measure

RESULTS = Path(__file__).parent / "results"
PROMPTS = ("a large red circle on the left", "a small blue square at the top right",
           "a green triangle in the middle")
RALU_MODES = ("ralu-4x", "ralu-5x", "ralu-7x")
MODES = ("baseline",) + RALU_MODES
BASE_STEPS = 50
TARGETS = {"ralu4_vs_bound": 0.9, "ralu4_speedup": 3.5, "ralu7_speedup": 6.0, "host_share": 0.05,
           "rss_ratio": 1.2}


# ---------------------------------------------------------------- a larger random-weight FLUX pipeline

def build_random_flux(out: Path, inner_heads: int, head_dim: int, layers: int, single_layers: int,
                      seed: int = 0) -> Path:
    """A FluxPipeline folder with a bigger random-weight transformer (inner = heads x head_dim), VAE factor 8,
    16 latent channels, and the tiny CLIP/T5 text encoders (ralu_export.tiny_models.build_random_flux)."""
    from ralu_export import tiny_models as tm

    params = tm.build_random_flux(out, inner_heads, head_dim, layers, single_layers, seed)["transformer"]
    print(f"random FLUX transformer: {params / 1e6:.1f} M parameters", file=sys.stderr)
    return out


# ---------------------------------------------------------------- environment

def environment(threads: int) -> dict:
    """measure.environment with the versions a runtime result depends on (bench_checkpoint and
    bench_large_weights record the same)."""
    return measure.environment(threads, ("onnxruntime", "numpy"))


def bundle_info(path: Path) -> dict:
    from ralu_edge.manifest import MANIFEST_NAME, file_sha256, read_manifest

    manifest = read_manifest(path)
    res = manifest.resolutions[0]
    return {"path": str(path), "manifest_sha256": file_sha256(path / MANIFEST_NAME),
            "bundle_id": file_sha256(path / MANIFEST_NAME)[:12], "target": manifest.target,
            "precision": manifest.precision, "height": res.height, "width": res.width,
            "grid": [res.grid_height, res.grid_width], "text_length": manifest.text_length,
            "packaging": manifest.denoiser.packaging,
            "denoiser_files": sorted({f.path: f.sha256 for f in manifest.files
                                      if f.path.startswith("transformer/")}.items())}


# ---------------------------------------------------------------- measurement

def _ms(seconds) -> dict:
    """median_ms, p90_ms and n of timings in seconds (runtime.json's timing fields)."""
    return measure.summary_ms(seconds, count=True)


def run_speed(path: Path, prompts, repeats: int, threads: int, baseline_steps: int = BASE_STEPS,
              modes: tuple[str, ...] | None = None) -> dict:
    """Interleaved timing of every mode (default MODES; those the bundle has) against a `baseline_steps` baseline;
    returns per-mode samples and summaries (benchmarks/bench_checkpoint.py passes the family's baseline)."""
    from ralu_edge.sampler import baseline_image_token_steps, image_token_steps
    from ralu_runtime.pipeline import Pipeline

    pipe = Pipeline.from_bundle(path, threads=threads)
    gh, gw = pipe.grid
    modes = [m for m in (modes or MODES) if m in pipe.modes]
    for mode in modes:  # warm-up: every token length once (ORT allocates per new shape)
        pipe(prompts[0], mode=mode, steps=3 if mode == "baseline" else baseline_steps, seed=12345)
    samples = {m: [] for m in modes}
    runs = 0
    for rep in range(repeats):
        for p_i, prompt in enumerate(prompts):
            seed = 1000 * rep + p_i
            for mode in measure.rotated(modes, runs):
                stats = pipe(prompt, mode=mode, steps=baseline_steps, seed=seed).stats
                samples[mode].append({"prompt": p_i, "seed": seed, **stats.to_dict()})
                print(f"  {mode:<9} p{p_i} s{seed} loop {stats.seconds_denoise * 1e3:8.1f} ms",
                      file=sys.stderr, flush=True)
            runs += 1
    base_steps = baseline_image_token_steps(baseline_steps, gh, gw)
    summary = {}
    base_loop = np.median([s["seconds_denoise"] for s in samples["baseline"]])
    base_total = np.median([s["seconds_total"] for s in samples["baseline"]])
    base_by_key = {(s["prompt"], s["seed"]): s for s in samples["baseline"]}
    for mode in modes:
        ss = samples[mode]
        loop = np.median([s["seconds_denoise"] for s in ss])
        total = np.median([s["seconds_total"] for s in ss])
        row = {"loop": _ms([s["seconds_denoise"] for s in ss]), "total": _ms([s["seconds_total"] for s in ss]),
               "text": _ms([s["seconds_text"] for s in ss]), "decode": _ms([s["seconds_decode"] for s in ss]),
               "host_share_median": float(np.median([s["host_share_denoise"] for s in ss])),
               "host_share_max": float(np.max([s["host_share_denoise"] for s in ss])),
               "nfe": ss[0]["nfe"], "image_token_steps": ss[0]["image_token_steps"]}
        if mode == "baseline":
            row["per_call_ms"] = {str(gh * gw): float(loop / baseline_steps * 1e3)}
        else:
            preset = pipe.preset_for_mode(mode)
            lengths = preset.stage_lengths(gh, gw)
            bound = base_steps / image_token_steps(preset, gh, gw)
            stage_s = np.median([s["seconds_per_stage"] for s in ss], axis=0)
            paired = [base_by_key[(s["prompt"], s["seed"])]["seconds_denoise"] / s["seconds_denoise"] for s in ss]
            row.update({
                "stage_lengths": list(lengths), "stage_steps": list(preset.N),
                "stage_ms_median": [float(x * 1e3) for x in stage_s],
                "per_call_ms": {str(L): float(t / n * 1e3) for L, n, t in zip(lengths, preset.N, stage_s)},
                "token_flop_bound": float(bound), "loop_speedup": float(base_loop / loop),
                "loop_speedup_paired_median": float(np.median(paired)),
                "speedup_over_bound": float(base_loop / loop / bound),
                "e2e_speedup": float(base_total / total)})
        summary[mode] = row
    return {"grid": [gh, gw], "samples": samples, "summary": summary}


def _pipeline(path: Path, threads: int, spinning: bool):
    """A Pipeline whose sessions run with ORT's intra-op spin-waiting on or off (the runtime leaves ORT's
    default, on; off is the candidate fix for a CPU shared with other processes)."""
    from ralu_runtime import sessions
    from ralu_runtime.pipeline import Pipeline

    if spinning:
        return Pipeline.from_bundle(path, threads=threads)
    original = sessions.session_options

    def no_spin(config):
        so = original(config)
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return so

    sessions.session_options = no_spin
    try:
        return Pipeline.from_bundle(path, threads=threads)
    finally:
        sessions.session_options = original


def run_per_call(path: Path, threads: int, lengths, calls: int = 8) -> dict:
    """Median ms of one denoiser call at each token length, interleaved over three session settings
    (`threads` with spinning, `threads` without spinning, 1 thread): separates the per-call fixed cost
    (small graphs, thread-pool barriers) from the per-token cost."""
    from ralu_edge.tokens import grid_positions

    variants = {f"threads{threads}": (threads, True), f"threads{threads}-nospin": (threads, False),
                "threads1": (1, True)}
    pipes = {name: _pipeline(path, t, spin) for name, (t, spin) in variants.items()}
    any_pipe = pipes[f"threads{threads}"]
    gh, gw = any_pipe.grid
    cond = any_pipe.text.encode(PROMPTS[0])
    rng = np.random.default_rng(0)
    inputs = {L: (rng.standard_normal((1, L, any_pipe.channels)).astype(np.float32), grid_positions(gh, gw)[:L])
              for L in lengths}
    sigma = np.asarray([0.5], np.float32)
    times = measure.interleaved_seconds(
        {(v, L): (lambda d=pipe.denoiser, x=x, pos=pos: d(x, pos, sigma, cond))
         for v, pipe in pipes.items() for L, (x, pos) in inputs.items()}, calls)
    out = {v: {str(L): _ms(times[(v, L)]) for L in lengths} for v in pipes}
    for v in pipes:
        Ls = np.asarray(lengths, dtype=np.float64)
        ms = np.asarray([out[v][str(L)]["median_ms"] for L in lengths])
        slope, intercept = np.polyfit(Ls, ms, 1)
        out[v]["linear_fit"] = {"fixed_ms": float(intercept), "us_per_token": float(slope * 1e3)}
    return out


def projected_speedups(r: dict) -> dict:
    """Loop speedup each RALU mode would have if the loop were exactly its denoiser calls at the isolated
    per-call costs: 50·c(M) / Σ N_k·c(L_k), per session setting."""
    out = {}
    full = str(r["speed"]["grid"][0] * r["speed"]["grid"][1])
    for variant, rows in r.get("per_call", {}).items():
        c = {L: v["median_ms"] for L, v in rows.items() if L != "linear_fit"}
        for mode, row in r["speed"]["summary"].items():
            if mode != "baseline" and all(str(L) in c for L in row["stage_lengths"]):
                cost = sum(n * c[str(L)] for n, L in zip(row["stage_steps"], row["stage_lengths"]))
                out.setdefault(variant, {})[mode] = BASE_STEPS * c[full] / cost
    return out


def run_op_profile(path: Path, threads: int, lengths, calls: int = 4) -> dict:
    """ORT profiler, per token length: ms per call in attention (activation x activation MatMuls + Softmax),
    in weight MatMul/Gemm, in all other nodes, and outside the nodes (session.run minus kernel time)."""
    import tempfile

    import onnx
    import onnxruntime as ort

    from ralu_edge.rope import rope_tables
    from ralu_edge.tokens import grid_positions
    from ralu_runtime.bundle import open_bundle
    from ralu_runtime.pipeline import Pipeline
    from ralu_runtime.sessions import SessionConfig, session_options

    bundle = open_bundle(path)
    pipe = Pipeline.from_bundle(path, threads=threads)
    cond = pipe.text.encode(PROMPTS[0])
    gh, gw = pipe.grid
    spec, rope = bundle.manifest.denoiser, bundle.manifest.rope
    out = {}
    for L in lengths:
        graph = bundle.manifest.graph(spec.graph_for(L))
        kind, nodes = {}, []
        if graph.format == "onnx":  # an .ort flatbuffer has no ONNX proto: classify by op type alone
            model = onnx.load(str(bundle.path(graph.file)), load_external_data=False)
            weights = {i.name for i in model.graph.initializer}
            nodes = model.graph.node
            for n in nodes:  # QDQ int8: a weight reaches its MatMul through DequantizeLinear (and Transpose)
                if n.op_type in ("DequantizeLinear", "Transpose", "Cast", "Constant") and all(
                        i in weights or not i for i in n.input):
                    weights.update(n.output)
        for n in nodes:
            if n.op_type == "Softmax" or (n.op_type == "MatMul" and not any(i in weights for i in n.input)):
                kind[n.name] = "attention"
            elif n.op_type in ("MatMul", "Gemm", "MatMulNBits", "DynamicQuantizeMatMul", "MatMulInteger"):
                kind[n.name] = "linear"
            else:
                kind[n.name] = "other"
        with tempfile.TemporaryDirectory() as tmp:
            so = session_options(SessionConfig(threads=threads))
            so.enable_profiling = True
            so.profile_file_prefix = str(Path(tmp) / "prof")
            for k, v in graph.session_config.items():
                so.add_session_config_entry(k, v)
            sess = ort.InferenceSession(str(bundle.path(graph.file)), sess_options=so,
                                        providers=["CPUExecutionProvider"])
            positions = grid_positions(gh, gw)[:L]
            cos, sin = rope_tables(np.concatenate([cond.positions_for_text(), positions]), rope.axes_dim, rope.theta)
            feeds = {"hidden_states": np.random.default_rng(0).standard_normal((1, L, pipe.channels), np.float32),
                     "encoder_hidden_states": cond.text_states.astype(np.float32),
                     "pooled_projections": cond.pooled.astype(np.float32),
                     "timestep": np.asarray([0.5], np.float32), "rope_cos": cos, "rope_sin": sin}
            if spec.guidance:
                feeds["guidance"] = np.asarray([3.5], np.float32)
            feeds = {k: v for k, v in feeds.items() if k in {i.name for i in sess.get_inputs()}}
            sess.run(None, feeds)
            t0 = time.perf_counter()
            for _ in range(calls):
                sess.run(None, feeds)
            wall = (time.perf_counter() - t0) / calls
            events = json.loads(Path(sess.end_profiling()).read_text())
        sums = {"attention": 0.0, "linear": 0.0, "other": 0.0}
        runs = [e for e in events if e.get("cat") == "Session" and e["name"] == "model_run"]
        by_op: dict[str, float] = {}
        for e in events:
            if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
                op = e.get("args", {}).get("op_name", "")
                by_op[op] = by_op.get(op, 0.0) + e["dur"]
                # ORT's optimizer renames fused nodes: fall back to the op type for those
                fallback = ("attention" if op in ("FusedMatMul", "Softmax", "Attention")
                            else "linear" if op in ("MatMul", "Gemm", "MatMulNBits", "DynamicQuantizeMatMul",
                                                    "MatMulIntegerToFloat") else "other")
                sums[kind.get(e["name"][:-len("_kernel_time")], fallback)] += e["dur"]
        n_runs = max(len(runs), 1)
        run_ms = sum(e["dur"] for e in runs) / n_runs / 1e3
        row = {k: v / n_runs / 1e3 for k, v in sums.items()}
        node_count = len(nodes) or len({e["name"] for e in events if e.get("cat") == "Node"})
        row.update({"nodes": node_count, "session_run_ms": run_ms, "wall_ms_unprofiled_est": wall * 1e3,
                    "outside_kernels": run_ms - sum(row.values()),
                    "top_ops_ms": {k: v / n_runs / 1e3 for k, v in sorted(by_op.items(), key=lambda kv: -kv[1])[:6]}})
        out[str(L)] = row
    return out


def child_peak_rss(path: Path, mode: str, threads: int) -> dict:
    """Peak RSS of a fresh process that loads the bundle and generates once in `mode` (its own subprocess)."""
    cmd = ["nice", "-n", "5", sys.executable, __file__, "rss-child", "--bundle", str(path), "--mode", mode,
           "--threads", str(threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def rss_child(path: Path, mode: str, threads: int) -> int:
    from ralu_runtime.pipeline import Pipeline

    pipe = Pipeline.from_bundle(path, threads=threads)
    after_load_kb = int(measure.peak_rss_mb() * 1024)  # VmHWM, so exactly the kB it reports
    modes = list(RALU_MODES) if mode == "ralu-all" else [mode]
    for m in modes:
        pipe(PROMPTS[0], mode=m, steps=BASE_STEPS, seed=0)
    peak_kb = int(measure.peak_rss_mb() * 1024)
    print(json.dumps({"mode": mode, "maxrss_kb_after_load": after_load_kb, "maxrss_kb": peak_kb, "source": "VmHWM"}))
    return 0


def run_memory(path: Path, threads: int, repeats: int = 2) -> dict:
    """Peak RSS, interleaved: baseline-only vs ralu-4x (all three stages) vs all three presets in one process."""
    rows = {m: [] for m in ("baseline", "ralu-4x", "ralu-all")}
    for _ in range(repeats):
        for mode in rows:
            rows[mode].append(child_peak_rss(path, mode, threads))
    out = {m: {"maxrss_mb": float(np.median([r["maxrss_kb"] for r in rs]) / 1024),
               "maxrss_mb_after_load": float(np.median([r["maxrss_kb_after_load"] for r in rs]) / 1024)}
           for m, rs in rows.items()}
    out["rss_ratio_ralu4"] = out["ralu-4x"]["maxrss_mb"] / out["baseline"]["maxrss_mb"]
    out["rss_ratio_ralu_all"] = out["ralu-all"]["maxrss_mb"] / out["baseline"]["maxrss_mb"]
    return out


def run_executorch_vs_ort(pte_bundle: Path, ort_bundle: Path, repeats: int, threads: int) -> dict:
    """Denoising-loop seconds of the ExecuTorch and ORT denoisers on the same geometry and conditioning
    (text from the ORT bundle's encoders), baseline-50 and ralu-4x, interleaved."""
    from ralu_edge.rng import initial_noise, rng_for
    from ralu_edge.sampler import ralu_sample, sample_baseline
    from ralu_edge.schedules import flux_baseline_sigmas
    from ralu_runtime.bundle import open_bundle
    from ralu_export.executorch_backend import ExecutorchDenoiser
    from ralu_runtime.pipeline import Pipeline

    pipe = Pipeline.from_bundle(ort_bundle, threads=threads)
    et = ExecutorchDenoiser(open_bundle(pte_bundle), threads=threads)
    gh, gw = pipe.grid
    cond = pipe.text.encode(PROMPTS[0])
    preset = pipe.preset_for_mode("ralu-4x")
    channels = pipe.channels
    noise = initial_noise(0, gh * gw, channels)

    def loop(denoiser, mode):
        if mode == "baseline":
            return sample_baseline(denoiser, noise, gh, gw, flux_baseline_sigmas(BASE_STEPS, gh * gw), cond)
        return ralu_sample(denoiser, noise, gh, gw, preset, cond, rng=rng_for(0, "ralu/select"),
                           latent_channels=channels // 4).tokens

    backends = {"ort": pipe.denoiser, "executorch": et}
    for d in backends.values():  # warm-up: every stage length once
        loop(d, "ralu-4x")
    finals = {}

    def timed(b: str, mode: str):
        def call():
            finals[(b, mode)] = loop(backends[b], mode)
        return call

    times = measure.interleaved_seconds({(b, m): timed(b, m) for b in backends for m in ("baseline", "ralu-4x")},
                                        repeats, warmup=0)
    res = {f"{b}/{m}": _ms(v) for (b, m), v in times.items()}
    for m in ("baseline", "ralu-4x"):
        a, b = finals[("ort", m)], finals[("executorch", m)]
        res[f"max_abs_diff_final_tokens/{m}"] = float(np.abs(a - b).max())
        res[f"executorch_over_ort/{m}"] = res[f"executorch/{m}"]["median_ms"] / res[f"ort/{m}"]["median_ms"]
    res["loop_speedup_ralu4/ort"] = res["ort/baseline"]["median_ms"] / res["ort/ralu-4x"]["median_ms"]
    res["loop_speedup_ralu4/executorch"] = (res["executorch/baseline"]["median_ms"]
                                            / res["executorch/ralu-4x"]["median_ms"])
    return res


# ---------------------------------------------------------------- reporting

def table(results: dict) -> str:
    head = (f"{'bundle':<26} {'mode':<9} {'loop ms':>9} {'p90':>8} {'speedup':>8} {'bound':>6} {'sp/bd':>6} "
            f"{'e2e':>5} {'host %':>7} {'RSS MB':>7} {'RSS x':>6}")
    lines = [head, "-" * len(head)]
    for name, r in results.items():
        mem = r.get("memory", {})
        for mode, row in r["speed"]["summary"].items():
            rss, ratio = "", ""
            if mode == "baseline" and mem:
                rss = f"{mem['baseline']['maxrss_mb']:.0f}"
            if mode == "ralu-4x" and mem:
                rss, ratio = f"{mem['ralu-4x']['maxrss_mb']:.0f}", f"{mem['rss_ratio_ralu4']:.2f}"
            if mode == "ralu-7x" and mem:
                rss, ratio = f"{mem['ralu-all']['maxrss_mb']:.0f}", f"{mem['rss_ratio_ralu_all']:.2f}"
            lines.append(
                f"{name:<26} {mode:<9} {row['loop']['median_ms']:9.1f} {row['loop']['p90_ms']:8.1f} "
                f"{row.get('loop_speedup', 1.0):7.2f}x {row.get('token_flop_bound', 1.0):6.2f} "
                f"{row.get('speedup_over_bound', 1.0):6.2f} {row.get('e2e_speedup', 1.0):5.2f} "
                f"{100 * row['host_share_median']:6.1f}% {rss:>7} {ratio:>6}")
    return "\n".join(lines)


def checks(r: dict) -> list[tuple[str, bool, str]]:
    s = r["speed"]["summary"]
    out = []
    if "ralu-4x" in s:
        out.append(("ralu-4x loop speedup >= 0.9 x bound", s["ralu-4x"]["speedup_over_bound"] >= 0.9,
                    f"{s['ralu-4x']['speedup_over_bound']:.3f} x bound ({s['ralu-4x']['loop_speedup']:.2f}x "
                    f"of {s['ralu-4x']['token_flop_bound']:.2f}x)"))
        out.append(("ralu-4x loop speedup >= 3.5x", s["ralu-4x"]["loop_speedup"] >= 3.5,
                    f"{s['ralu-4x']['loop_speedup']:.2f}x"))
    if "ralu-7x" in s:
        out.append(("ralu-7x loop speedup >= 6x", s["ralu-7x"]["loop_speedup"] >= 6.0,
                    f"{s['ralu-7x']['loop_speedup']:.2f}x (bound {s['ralu-7x']['token_flop_bound']:.2f}x)"))
    worst = max(row["host_share_median"] for row in s.values())
    out.append(("host overhead < 5 % of the loop (every mode, median)", worst < 0.05, f"worst {100 * worst:.1f} %"))
    if "memory" in r:
        m = r["memory"]
        out.append(("RSS(all three RALU stages) <= 1.2 x RSS(baseline)", m["rss_ratio_ralu_all"] <= 1.2,
                    f"ralu-4x {m['rss_ratio_ralu4']:.2f}x, all presets {m['rss_ratio_ralu_all']:.2f}x "
                    f"({m['baseline']['maxrss_mb']:.0f} MB baseline)"))
    return out


def per_call_profile(r: dict) -> str:
    """Per-call ms at each token length and the cost model it implies (why speedup < bound)."""
    s = r["speed"]["summary"]
    gh, gw = r["speed"]["grid"]
    full = gh * gw
    calls = {}
    for row in s.values():
        for L, ms in row["per_call_ms"].items():
            calls.setdefault(int(L), []).append(ms)
    calls = {L: float(np.median(v)) for L, v in sorted(calls.items())}
    text = r["bundle"]["text_length"]
    parts = [f"{L} tok: {ms:.2f} ms ({ms / calls[full]:.2f} of full-res cost for {L / full:.2f} of the image "
             f"tokens, {(L + text) / (full + text):.2f} of the attention sequence incl. {text} text tokens)"
             for L, ms in calls.items()]
    Ls = np.array(list(calls)), np.array(list(calls.values()))
    fixed = ""
    if len(Ls[0]) >= 2:
        slope, intercept = np.polyfit(Ls[0], Ls[1], 1)
        fixed = (f" A linear fit gives {intercept:.2f} ms fixed per call + {slope * 1e3:.2f} us per image token: "
                 f"the fixed part is {100 * intercept / calls[full]:.0f} % of a full-res call.")
    return "Per-call cost: " + "; ".join(parts) + "." + fixed


def markdown(doc: dict) -> str:
    env = doc["environment"]
    md = ["# Runtime benchmark: RALU vs 50-step baseline through `ralu_runtime`", "",
          f"CPU {env['cpu']}, {env['cores']} cores (shared, load average at start "
          f"{', '.join(f'{x:.1f}' for x in env['load_average_at_start'])}), ORT {env['onnxruntime']}, "
          f"{env['threads']} threads, nice 5. Fixed prompts and seeds (counts per bundle below), the same "
          f"seeds for every mode, modes interleaved in rotating order; one warm-up generation per mode. "
          "Speedups are ratios of medians of the same run. Token-FLOP bound = 50·M / Σ N_k·L_k image "
          "token-steps. Host % = share of the loop outside session.run. RSS: peak RSS (VmHWM) of a fresh "
          "process per mode (baseline-only; ralu-4x; all three presets in one process, shown on the ralu-7x "
          "row), median of 2.", "", "```", doc["table"], "```", ""]
    for name, r in doc["bundles"].items():
        b = r["bundle"]
        md.append(f"## {name}: {b['target']} {b['precision']}, {b['height']}x{b['width']} "
                  f"({b['grid'][0]}x{b['grid'][1]} tokens), bundle {b['bundle_id']}")
        md.append("")
        run = r.get("run", {"prompts": doc["prompts"], "repeats": doc["repeats"], "environment": env})
        md.append(f"{len(run['prompts'])} prompts x {run['repeats']} repeats; {run['environment']['threads']} ORT "
                  f"threads; load average at start {run['environment']['load_average_at_start'][0]:.1f} on "
                  f"{run['environment']['cores']} cores.")
        md.append("")
        for label, ok, detail in checks(r):
            md.append(f"- [{'x' if ok else ' '}] {label}: **{'met' if ok else 'MISSED'}** — {detail}")
        md.append("")
        md.append(per_call_profile(r))
        md.append("")
        proj = projected_speedups(r)
        if proj:
            md.append("- loop speedup projected from isolated per-call costs, 50·c(M) / Σ N_k·c(L_k): " + "; ".join(
                f"{v}: " + ", ".join(f"{m} {x:.2f}x" for m, x in modes.items()) for v, modes in proj.items()))
        if "per_call" in r:
            for t, rows in r["per_call"].items():
                fit = rows["linear_fit"]
                cells = ", ".join(f"{L} tok {v['median_ms']:.1f} ms" for L, v in rows.items() if L != "linear_fit")
                md.append(f"- isolated calls, {t}: {cells}; fit {fit['fixed_ms']:.1f} ms fixed + "
                          f"{fit['us_per_token']:.1f} us/token")
            md.append("")
        for L, p in r.get("op_profile", {}).items():
            if b.get("graph_format", "onnx") == "ort" or b["target"] == "android":
                tops = ", ".join(f"{k} {v:.1f}" for k, v in p["top_ops_ms"].items())
                md.append(f"- ORT profile at {L} tokens (.ort graph, by op type only; ms per call): {tops}; "
                          f"outside kernels {p['outside_kernels']:.1f} of {p['session_run_ms']:.1f} ms")
                continue
            md.append(f"- ORT profile at {L} tokens ({p['nodes']} nodes): attention {p['attention']:.1f} ms, "
                      f"weight MatMul/Gemm {p['linear']:.1f} ms, other nodes {p['other']:.1f} ms, outside kernels "
                      f"{p['outside_kernels']:.1f} ms of {p['session_run_ms']:.1f} ms per call")
        md.append("")
    if doc.get("executorch"):
        md.append("## ExecuTorch vs ORT denoiser (same geometry, same conditioning)")
        md.append("")
        e = doc["executorch"]
        md.append(f"Denoiser `.pte` of bundle {e['pte_bundle']['bundle_id']} (XNNPACK, one static method per stage "
                  f"length) vs the ORT dynamic-length session of bundle {e['ort_bundle']['bundle_id']}, same "
                  "text conditioning, noise and seed; loops interleaved; median of "
                  f"{e['ort/baseline']['n']}.")
        md.append("")
        md.append("| loop | ORT ms | ExecuTorch ms | ET / ORT | max abs diff of final tokens |")
        md.append("|---|---:|---:|---:|---:|")
        for m in ("baseline", "ralu-4x"):
            md.append(f"| {m} | {e[f'ort/{m}']['median_ms']:.0f} | {e[f'executorch/{m}']['median_ms']:.0f} | "
                      f"{e[f'executorch_over_ort/{m}']:.2f} | {e[f'max_abs_diff_final_tokens/{m}']:.1e} |")
        md.append(f"| ralu-4x loop speedup | {e['loop_speedup_ralu4/ort']:.2f}x | "
                  f"{e['loop_speedup_ralu4/executorch']:.2f}x | | |")
        md.append("")
    if doc.get("notes"):
        md += ["## Notes", ""] + [f"- {n}" for n in doc["notes"]] + [""]
    return "\n".join(md)


# ---------------------------------------------------------------- command line

def write_report(inputs: list[Path], notes: list[str], json_path: Path, md_path: Path) -> int:
    """One document from several runs: their bundles side by side, each run's environment kept per bundle."""
    doc = {"bundles": {}, "runs": [], "notes": list(notes)}
    for path in inputs:
        run = json.loads(path.read_text())
        if "op_profiles" in run:
            for name, extra in run["op_profiles"].items():
                doc["bundles"].setdefault(name, {}).update(extra)
            continue
        for name, r in run["bundles"].items():
            earlier = doc["bundles"].get(name, {})  # an op-profile file listed before this run
            if "op_profile" in earlier:
                r["op_profile"] = earlier["op_profile"]
            r["run"] = {"file": path.name, "environment": run["environment"], "prompts": run["prompts"],
                        "seeds": run["seeds"], "repeats": run["repeats"]}
            doc["bundles"][name] = r
        if run.get("executorch"):
            doc["executorch"] = run["executorch"]
        doc["runs"].append({k: run[k] for k in ("environment", "prompts", "seeds", "repeats", "warmup",
                                                "baseline_steps")} | {"file": path.name})
        for k in ("benchmark", "environment", "prompts", "seeds", "repeats", "warmup", "baseline_steps"):
            doc.setdefault(k, run[k])
    doc["table"] = table(doc["bundles"])
    doc["checks"] = {n: [{"check": c, "met": ok, "value": d} for c, ok, d in checks(r)]
                     for n, r in doc["bundles"].items()}
    print(doc["table"])
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(doc, indent=1, default=float) + "\n")
    md_path.write_text(markdown(doc))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="measure bundles, print the table, write JSON and Markdown")
    run.add_argument("--bundle", action="append", default=[], help="NAME=DIR, repeatable")
    run.add_argument("--prompts", type=int, default=3, help="how many of the fixed prompts")
    run.add_argument("--repeats", type=int, default=2, help="repeats per prompt (seed = 1000·repeat + prompt)")
    run.add_argument("--threads", type=int, default=2, help="ORT intra-op threads")
    run.add_argument("--memory-repeats", type=int, default=2, help="fresh processes per mode for peak RSS")
    run.add_argument("--no-memory", action="store_true", help="skip the per-mode subprocess RSS runs")
    run.add_argument("--executorch", help="PTE_BUNDLE=ORT_BUNDLE: compare the denoisers' loop times")
    run.add_argument("--merge", action="store_true", help="add to the existing JSON instead of replacing it")
    run.add_argument("--note", action="append", default=[], help="a note for the Markdown")
    run.add_argument("--json", type=Path, default=RESULTS / "runtime.json")
    run.add_argument("--md", type=Path, default=RESULTS / "runtime.md")
    child = sub.add_parser("rss-child", help="(internal) one generation, prints peak RSS as JSON")
    child.add_argument("--bundle", type=Path, required=True)
    child.add_argument("--mode", required=True)
    child.add_argument("--threads", type=int, default=2)
    prof = sub.add_parser("op-profile", help="ORT profile + isolated per-call times of bundles into a JSON")
    prof.add_argument("--bundle", action="append", required=True, help="NAME=DIR:L1,L2,... token lengths")
    prof.add_argument("--threads", type=int, default=2)
    prof.add_argument("--json", type=Path, required=True)
    rep = sub.add_parser("report", help="merge JSON files of earlier runs into one JSON + Markdown")
    rep.add_argument("inputs", nargs="+", type=Path)
    rep.add_argument("--note", action="append", default=[], help="a note for the Markdown")
    rep.add_argument("--json", type=Path, default=RESULTS / "runtime.json")
    rep.add_argument("--md", type=Path, default=RESULTS / "runtime.md")
    flux = sub.add_parser("build-flux", help="write a larger random-weight FluxPipeline folder")
    flux.add_argument("--out", type=Path, required=True)
    flux.add_argument("--heads", type=int, default=4)
    flux.add_argument("--head-dim", type=int, default=64)
    flux.add_argument("--layers", type=int, default=2)
    flux.add_argument("--single-layers", type=int, default=4)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.command == "rss-child":
        return rss_child(args.bundle, args.mode, args.threads)
    if args.command == "build-flux":
        print(build_random_flux(args.out, args.heads, args.head_dim, args.layers, args.single_layers))
        return 0
    if args.command == "op-profile":
        prof = {}
        for spec in args.bundle:
            name, rest = spec.split("=", 1)
            path, lengths = rest.rsplit(":", 1)
            lengths = [int(x) for x in lengths.split(",")]
            print(f"op profile {name} at {lengths}", file=sys.stderr, flush=True)
            prof[name] = {"op_profile": run_op_profile(Path(path), args.threads, lengths)}
        args.json.write_text(json.dumps({"op_profiles": prof}, indent=1) + "\n")
        return 0
    if args.command == "report":
        return write_report(args.inputs, args.note, args.json, args.md)
    prompts = PROMPTS[:args.prompts]
    doc = json.loads(args.json.read_text()) if args.merge and args.json.exists() else {}
    doc.update({"benchmark": "bench_runtime", "environment": environment(args.threads), "prompts": list(prompts),
                "seeds": [1000 * r + i for r in range(args.repeats) for i in range(len(prompts))],
                "repeats": args.repeats, "warmup": "one generation per mode (baseline: 3 steps)",
                "baseline_steps": BASE_STEPS})
    doc.setdefault("bundles", {})
    doc["notes"] = doc.get("notes", []) + args.note
    for spec in args.bundle:
        name, path = spec.split("=", 1)
        path = Path(path)
        print(f"bundle {name}: speed", file=sys.stderr, flush=True)
        r = {"bundle": bundle_info(path), "threads": args.threads,
             "run": {"prompts": list(prompts), "repeats": args.repeats, "environment": environment(args.threads)},
             "speed": run_speed(path, prompts, args.repeats, args.threads)}
        lengths = sorted({int(L) for row in r["speed"]["summary"].values() for L in row["per_call_ms"]})
        print(f"bundle {name}: per-call profile at {lengths} tokens", file=sys.stderr, flush=True)
        r["per_call"] = run_per_call(path, args.threads, lengths)
        r["op_profile"] = run_op_profile(path, args.threads, sorted({min(lengths), max(lengths)} | {
            L for L in lengths if 110 <= L <= 130 or L == lengths[len(lengths) // 2]}))
        if not args.no_memory:
            print(f"bundle {name}: memory", file=sys.stderr, flush=True)
            r["memory"] = run_memory(path, args.threads, args.memory_repeats)
        doc["bundles"][name] = r
    if args.executorch:
        pte, ort_b = args.executorch.split("=", 1)
        print("executorch vs ort", file=sys.stderr, flush=True)
        doc["executorch"] = {"pte_bundle": bundle_info(Path(pte)), "ort_bundle": bundle_info(Path(ort_b)),
                             **run_executorch_vs_ort(Path(pte), Path(ort_b), max(args.repeats, 2), args.threads)}
    doc["table"] = table(doc["bundles"])
    doc["checks"] = {n: [{"check": c, "met": ok, "value": d} for c, ok, d in checks(r)]
                     for n, r in doc["bundles"].items()}
    print(doc["table"])
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=1, default=float) + "\n")
    args.md.write_text(markdown(doc))
    print(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
