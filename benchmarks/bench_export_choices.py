"""Measurements behind ralu-export's choices (export/int8_policy.py, export/targets/), on the built-in `shapes` model, ORT CPU EP.

1. packaging: one session over the dynamic-token denoiser vs one static session per RALU stage length
   (flux-4x at 128 px: 64 / 121 / 256 tokens) vs per-stage sessions pinned from the dynamic graph with
   free-dimension overrides (what NPU EPs need): RSS growth and latency per length. Each configuration
   runs in its own process (RSS from /proc/self/status).
2. int8 text encoders: dynamic (MatMulInteger), weight-only per-channel QDQ, static QDQ (MatMul/Gemm only,
   calibrated on captions): output cosine vs the torch fp32 encoder over held-out captions, size, latency.
3. int8 denoiser: the same three methods: cosine vs torch fp32 at each stage length, size, latency, and
   image-level PSNR of flux-4x RALU images (same noise, fp32 text encoders and VAE) vs the fp32 graph.

Prints fixed-width tables on stdout and writes benchmarks/results/export_choices.json (environment,
warm-up and repeat counts, median/p90 in *_ms fields). Progress goes to stderr."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

import measure
from ralu_edge import presets
from ralu_edge.rng import rng_for
from ralu_edge.rope import rope_tables
from ralu_edge.seam import Conditioning

LENGTHS = (64, 121, 256)
# Several sessions live in one process here; spinning intra-op threads of idle sessions would steal the
# 2 cores from the session being timed.
NO_SPIN = {"session.intra_op.allow_spinning": "0"}
TEXT = 32
CALIBRATION_CAPTIONS = [f"a {s} {c} {shape} on a {b} background" for s, c, shape, b in [
    ("small", "red", "circle", "white"), ("large", "blue", "square", "black"), ("small", "green", "triangle", "grey"),
    ("large", "yellow", "star", "white"), ("small", "purple", "circle", "black"), ("large", "orange", "square", "grey"),
    ("small", "blue", "triangle", "white"), ("large", "red", "star", "black")]]
HELD_OUT_CAPTIONS = ["a large green circle at the top left", "a small orange star on a grey background",
                     "a red square and a blue circle", "a large purple triangle at the bottom right",
                     "a small yellow circle on a black background", "a blue star"]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def interleaved_ms(runs: dict, repeats: int) -> dict[object, dict[str, float]]:
    """median_ms and p90_ms of each callable, timed in rotating rounds after 3 warm-up runs each."""
    return {name: measure.summary_ms(seconds)
            for name, seconds in measure.interleaved_seconds(runs, repeats, warmup=3).items()}


def finite_difference_cosine(run, reference, feeds: dict, key: str, mu: float, seed: int) -> float:
    """Mean over 4 random directions e of cos((f(x + mu e) - f(x)) / mu) between a graph and the torch
    reference, perturbing input `key`: how well the graph serves a zeroth-order gradient estimate
    (spec/ZO_PERSONALIZATION.md §4: mu = 1e-3, e ~ N(0, I)); activation quantization makes it noisy."""
    rng = rng_for(seed, "bench-export-fd")
    cosines = []
    base_graph, base_ref = run(feeds), reference(feeds)
    for _ in range(4):
        moved = dict(feeds)
        moved[key] = (feeds[key] + mu * rng.standard_normal(feeds[key].shape)).astype(np.float32)
        fd_graph = np.concatenate([(a - b).ravel() for a, b in zip(run(moved), base_graph)])
        fd_ref = np.concatenate([(a - b).ravel() for a, b in zip(reference(moved), base_ref)])
        norm = np.linalg.norm(fd_graph) * np.linalg.norm(fd_ref)
        cosines.append(float(fd_graph @ fd_ref / norm) if norm > 0 else 0.0)
    return float(np.mean(cosines))


def torch_reference(module):
    """feeds -> list of float64 numpy outputs of the torch module."""
    import torch

    def run(feeds: dict) -> list[np.ndarray]:
        with torch.no_grad():
            out = module(**{k: torch.from_numpy(v) for k, v in feeds.items()})
        return [o.double().numpy() for o in (out if isinstance(out, tuple) else (out,))]

    return run


def denoiser_feeds(length: int, seed: int) -> dict[str, np.ndarray]:
    rng = rng_for(seed, "bench-export-feeds", length)
    ids = np.stack([np.zeros(length), rng.integers(0, 32, length) / 2, rng.integers(0, 32, length) / 2], 1)
    cos, sin = rope_tables(np.concatenate([np.zeros((TEXT, 3)), ids]), (8, 12, 12), 10000.0)
    return {"hidden_states": rng.standard_normal((1, length, 16)).astype(np.float32),
            "encoder_hidden_states": rng.standard_normal((1, TEXT, 128)).astype(np.float32),
            "pooled_projections": rng.standard_normal((1, 128)).astype(np.float32),
            "timestep": np.array([0.6], np.float32), "rope_cos": cos, "rope_sin": sin}


# ----------------------------------------------------------------------------------------------- worker
def packaging_worker(spec: dict) -> dict:
    """One packaging configuration in a fresh process: RSS growth of creating its sessions and running every
    length, and latency per length."""
    import onnxruntime as ort

    base = measure.rss_mb()
    sessions = {}
    for length in LENGTHS:
        options = ort.SessionOptions()
        options.intra_op_num_threads = spec["threads"]
        options.log_severity_level = 3
        for key, value in spec["config"].items():
            options.add_session_config_entry(key, value)
        if spec["kind"] == "dynamic":
            if not sessions:
                shared = ort.InferenceSession(spec["graphs"]["dynamic"], options)
            sessions[length] = shared
            continue
        if spec["kind"] == "overrides":
            options.add_free_dimension_override_by_name("num_image_tokens", length)
            options.add_free_dimension_override_by_name("num_rope_tokens", length + TEXT)
            path = spec["graphs"]["dynamic"]
        else:
            path = spec["graphs"][str(length)]
        sessions[length] = ort.InferenceSession(path, options)
    feeds = {length: denoiser_feeds(length, 0) for length in LENGTHS}
    latency = interleaved_ms({str(length): (lambda n=length: sessions[n].run(None, feeds[n])) for length in LENGTHS},
                             spec["repeats"])
    return {"rss_growth_bytes": round((measure.rss_mb() - base) * 2**20), "latency": latency}


# ----------------------------------------------------------------------------------------------- export
def export_graphs(work: Path) -> dict:
    """fp32 ONNX graphs of the shapes model (denoiser, both text encoders, VAE decoder) and the torch modules."""
    from ralu_export import examples, onnx_export
    from ralu_export.families import FLUX, boundary_module
    from ralu_export.examples import EXAMPLE_PROMPT
    from ralu_export.models import load_flux_pipeline, resolve_model
    from ralu_export.onnx_files import save_sharing_weights

    pipe = load_flux_pipeline("shapes")
    geometry = FLUX.geometry(resolve_model("shapes"), 128, 128)
    ids = {"text_encoder": pipe.tokenizer([EXAMPLE_PROMPT], padding="max_length", max_length=TEXT,
                                          truncation=True, return_tensors="np").input_ids,
           "text_encoder_2": pipe.tokenizer_2([EXAMPLE_PROMPT], padding="max_length", max_length=TEXT,
                                              truncation=True, return_tensors="np").input_ids}
    out = {"pipe": pipe, "protos": {}, "modules": {}}
    for name in ("denoiser", "text_encoder", "text_encoder_2", "vae_decoder"):
        log(f"export {name}")
        spec = FLUX.graph(name)
        module = boundary_module(spec, pipe)
        example = examples.example_inputs(spec, geometry, examples.trace_case(geometry), rng_for(0, name), ids)
        out["protos"][name] = onnx_export.export_graph(spec, FLUX, module, example, geometry.sizes())
        out["modules"][name] = module
        (work / name).mkdir()
        save_sharing_weights([(out["protos"][name], work / name / "fp32.onnx")], work / name / "fp32.onnx_data")
    return out


def save_variant(proto, folder: Path, stem: str) -> Path:
    from ralu_export.onnx_files import save_sharing_weights

    save_sharing_weights([(proto, folder / f"{stem}.onnx")], folder / f"{stem}.onnx_data")
    return folder / f"{stem}.onnx"


def size_bytes(path: Path) -> int:
    return path.stat().st_size + path.with_suffix(".onnx_data").stat().st_size


def variants(name: str, proto, folder: Path, calibration) -> dict[str, tuple[Path, dict[str, str]]]:
    """{label: (graph path, session config)}: fp32, each int8 method with its session config, and
    "weight_qdq@acc4", the weight_qdq graph in a default session (ORT fuses it into int8-compute MatMulNBits)."""
    from ralu_export.quantize import QUANT_METHODS, SESSION_CONFIG, quantize

    out = {"fp32": (folder / "fp32.onnx", dict(NO_SPIN))}
    for method in QUANT_METHODS:
        log(f"quantize {name} {method}")
        path = save_variant(quantize(proto, method, calibration), folder, method)
        out[method] = (path, {**NO_SPIN, **SESSION_CONFIG[method]})
    out["weight_qdq@acc4"] = (out["weight_qdq"][0], dict(NO_SPIN))
    return out


# ----------------------------------------------------------------------------------------------- sections
def bench_text_encoders(exported: dict, work: Path, repeats: int, threads: int) -> list[dict]:
    from ralu_export.onnx_files import ort_runner
    from ralu_export.parity import compare_outputs

    pipe, rows = exported["pipe"], []
    for name, tokenizer in (("text_encoder", pipe.tokenizer), ("text_encoder_2", pipe.tokenizer_2)):
        def ids(caption: str) -> np.ndarray:
            return tokenizer([caption], padding="max_length", max_length=TEXT, truncation=True,
                             return_tensors="np").input_ids.astype(np.int64)

        calibration = [{"input_ids": ids(c)} for c in CALIBRATION_CAPTIONS]
        reference = torch_reference(exported["modules"][name])
        table = exported["modules"][name].state_dict()
        table = next(v for k, v in table.items() if k.endswith(("token_embedding.weight", "shared.weight")))
        runs, found = {}, {}
        for method, (path, config) in variants(name, exported["protos"][name], work / name, calibration).items():
            run = ort_runner(path, threads, config)
            pairs = []
            for caption in HELD_OUT_CAPTIONS:
                feeds = {"input_ids": ids(caption), "placeholder_ids": np.zeros(0, np.int64),
                         "placeholder_embeds": np.zeros((0, 128), np.float32)}
                pairs += list(zip(run(feeds), reference(feeds)))
            token_ids = ids(HELD_OUT_CAPTIONS[0])
            learned = {"input_ids": token_ids, "placeholder_ids": token_ids[0, 2:3].copy(),
                       "placeholder_embeds": table[int(token_ids[0, 2])].numpy()[None].astype(np.float32)}
            found[method] = {"graph": name, "method": method, "cosine_min": compare_outputs(pairs).cosine,
                             "max_rel_error": compare_outputs(pairs).max_rel_error, "size_bytes": size_bytes(path),
                             "zo_fd_cosine": finite_difference_cosine(run, reference, learned,
                                                                      "placeholder_embeds", 1e-3, 0)}
            runs[method] = (lambda r=run, f=learned: r(f))
        for method, latency in interleaved_ms(runs, repeats).items():
            rows.append({**found[method], **latency})
    return rows


class OrtDenoiser:
    """The seam over one ORT session of the RALU denoiser graph (host RoPE from positions)."""

    def __init__(self, path: Path, threads: int, config: dict[str, str]):
        from ralu_export.onnx_files import ort_session

        self.session = ort_session(path, threads, config)

    def __call__(self, tokens, positions, sigmas, cond: Conditioning):
        cos, sin = rope_tables(np.concatenate([cond.positions_for_text(), positions]), (8, 12, 12), 10000.0)
        return self.session.run(None, {"hidden_states": tokens.astype(np.float32),
                                       "encoder_hidden_states": cond.text_states, "pooled_projections": cond.pooled,
                                       "timestep": sigmas.astype(np.float32), "rope_cos": cos,
                                       "rope_sin": sin})[0]


def sample_images(denoiser, pipe, prompts: list[str], kind: str) -> np.ndarray:
    """uint8-valued float64 images [P, 128, 128, 3]: 18-step FLUX baseline or flux-4x RALU, prompt i with the
    initial noise of seed i (same noise and renoising draws for every denoiser variant)."""
    from ralu_edge import sampler, schedules
    from ralu_export.torch_backend import decode_tokens, encode_prompt, initial_noise

    images = []
    for index, prompt in enumerate(prompts):
        cond = encode_prompt(pipe, [prompt], max_sequence_length=TEXT)
        noise = initial_noise(pipe, index, 128, 128)
        if kind == "ralu-4x":
            tokens = sampler.ralu_sample(denoiser, noise, 16, 16, presets.get("flux-4x"), cond,
                                         rng=rng_for(index, "bench-export-ralu"), latent_channels=4).tokens
        else:
            tokens = sampler.sample_baseline(denoiser, noise, 16, 16, schedules.flux_baseline_sigmas(18, 256), cond)
        images.append(decode_tokens(pipe, tokens, 16, 16)[0])
    return np.stack(images).astype(np.float64)


def bench_denoiser(exported: dict, work: Path, repeats: int, threads: int) -> tuple[list[dict], dict]:
    from ralu_export.onnx_files import ort_runner
    from ralu_export.parity import compare_outputs

    reference = torch_reference(exported["modules"]["denoiser"])
    calibration = [denoiser_feeds(length, seed) for length in LENGTHS for seed in (1, 2)]
    paths = variants("denoiser", exported["protos"]["denoiser"], work / "denoiser", calibration)
    rows, runs, references = {}, {}, {}
    for method, (path, config) in paths.items():
        run = ort_runner(path, threads, config)
        row = {"method": method, "size_bytes": size_bytes(path)}
        for length in LENGTHS:
            feeds = denoiser_feeds(length, 7)
            row[f"cosine_{length}"] = compare_outputs([(run(feeds)[0], reference(feeds)[0])]).cosine
            runs[(method, length)] = (lambda r=run, f=feeds: r(f))
        row["zo_fd_cosine"] = finite_difference_cosine(run, reference, denoiser_feeds(256, 8),
                                                       "encoder_hidden_states", 1e-3, 1)
        for kind in ("baseline-18", "ralu-4x"):
            log(f"{kind} images with the {method} denoiser")
            images = sample_images(OrtDenoiser(path, threads, config), exported["pipe"], HELD_OUT_CAPTIONS, kind)
            references.setdefault(kind, images)
            # one PSNR over the whole set (the MSE of all its pixels), not a median of per-image values
            row[f"psnr_db_{kind}"] = float(measure.psnr(np.concatenate(images), np.concatenate(references[kind])))
        rows[method] = row
    for (method, length), latency in interleaved_ms(runs, repeats).items():
        rows[method][f"latency_{length}"] = latency
    return list(rows.values()), paths


def static_graphs(dynamic: Path) -> dict[str, str]:
    """Per-length static copies of the dynamic denoiser graph, sharing its external data file."""
    import onnx
    from onnxruntime.tools.onnx_model_utils import make_dim_param_fixed

    out = {"dynamic": str(dynamic)}
    for length in LENGTHS:
        model = onnx.load(str(dynamic), load_external_data=False)
        make_dim_param_fixed(model.graph, "num_image_tokens", length)
        make_dim_param_fixed(model.graph, "num_rope_tokens", length + TEXT)  # inputs, outputs and value_info
        path = dynamic.with_name(f"{dynamic.stem}_static{length}.onnx")
        onnx.save(model, str(path))
        out[str(length)] = str(path)
    return out


def bench_packaging(paths: dict, repeats: int, threads: int) -> list[dict]:
    rows = []
    for precision in ("fp32", "weight_qdq"):
        path, config = paths[precision]
        graphs = static_graphs(path)
        for kind in ("dynamic", "static", "overrides"):
            log(f"packaging {precision} {kind}")
            spec = {"kind": kind, "graphs": graphs, "repeats": repeats, "threads": threads, "config": config}
            done = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True,
                                  text=True, check=True)
            rows.append({"precision": precision, "kind": kind, **json.loads(done.stdout)})
    return rows


# ----------------------------------------------------------------------------------------------- report
def print_tables(results: dict) -> None:
    print("packaging (denoiser, flux-4x stage lengths 64/121/256; RSS growth of sessions + one run each)")
    print(f"{'precision':<11} {'sessions':<10} {'RSS MB':>8} " + " ".join(f"{f'L={n} ms':>10}" for n in LENGTHS))
    for row in results["packaging"]:
        lat = " ".join(f"{row['latency'][str(n)]['median_ms']:>10.2f}" for n in LENGTHS)
        print(f"{row['precision']:<11} {row['kind']:<10} {row['rss_growth_bytes'] / 1e6:>8.1f} {lat}")
    print("\nint8 text encoders (cosine: worst over held-out captions and outputs, vs torch fp32)")
    print("zo fd cos: direction of (f(theta + 1e-3 e) - f(theta)) / 1e-3 vs torch fp32, e on a learned-token row")
    print(f"{'graph':<16} {'method':<15} {'cosine':>9} {'max rel':>9} {'zo fd cos':>10} {'MB':>7} {'median ms':>10} "
          f"{'p90 ms':>8}")
    for row in results["text_encoders"]:
        print(f"{row['graph']:<16} {row['method']:<15} {row['cosine_min']:>9.6f} {row['max_rel_error']:>9.4f} "
              f"{row['zo_fd_cosine']:>10.4f} {row['size_bytes'] / 1e6:>7.2f} {row['median_ms']:>10.3f} "
              f"{row['p90_ms']:>8.3f}")
    print("\nint8 denoiser (cosine vs torch fp32 per length; zo fd cos with e on the text states; PSNR of 6 images vs"
          " the fp32 graph's, same noise)")
    print(f"{'method':<15} {'MB':>6} " + " ".join(f"{f'cos L={n}':>10} {f'ms L={n}':>9}" for n in LENGTHS)
          + f" {'zo fd cos':>10} {'PSNR base18':>12} {'PSNR ralu4x':>12}")
    for row in results["denoiser"]:
        cells = " ".join(f"{row[f'cosine_{n}']:>10.6f} {row[f'latency_{n}']['median_ms']:>9.2f}" for n in LENGTHS)
        print(f"{row['method']:<15} {row['size_bytes'] / 1e6:>6.2f} {cells} {row['zo_fd_cosine']:>10.4f} "
              f"{row['psnr_db_baseline-18']:>12.2f} {row['psnr_db_ralu-4x']:>12.2f}")


def environment(threads: int, repeats: int) -> dict:
    """The run's machine and settings (this file's own keys: the 1-minute load average only)."""
    return {"cpu": measure.cpu_name(), "cores": os.cpu_count(), "threads": threads,
            **measure.versions("onnxruntime", "python"), "model": "shapes", "resolution": "128x128",
            "preset": "flux-4x", "warmup": 3, "repeats": repeats, "load_average_at_start": measure.load_average()[0]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results",
                        help="folder for export_choices.json")
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per measurement (after 3 warm-ups)")
    parser.add_argument("--threads", type=int, default=2, help="ORT intra-op threads")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(packaging_worker(json.loads(args.worker))))
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        work = Path(tmp)
        exported = export_graphs(work)
        results = {"environment": environment(args.threads, args.repeats)}
        results["text_encoders"] = bench_text_encoders(exported, work, args.repeats, args.threads)
        results["denoiser"], paths = bench_denoiser(exported, work, args.repeats, args.threads)
        results["packaging"] = bench_packaging(paths, args.repeats, args.threads)
    print_tables(results)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "export_choices.json").write_text(json.dumps(results, indent=1) + "\n")
    log(f"wrote {args.out / 'export_choices.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
