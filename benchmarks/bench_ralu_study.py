"""RALU quality/speed study on the built-in `shapes` model (issue 3).

Runs every configuration of `study_configs()` on the held-out prompts (prompt i uses seed + i in every
configuration; RALU's renoising draws come from rng_for(seed + i, "ralu_study/ralu"), common to all RALU configs)
through the torch reference backend, scores the images with the attribute classifier and against the 50-step
baseline (PSNR, SSIM), and reports analytic cost (image token-steps; a MAC model with attention and text tokens)
and the measured wall clock of the denoising loop (the sampler call only: no text encoding, no final decode).
Configurations are interleaved per prompt (rotating order) so that load on a shared machine hits all alike.

Writes <out>/ralu_study.json (environment + per-config numbers), <out>/ralu_study.md (tables, answers, analysis)
and the comparison grid (--grid); prints a fixed-width table on stdout and progress on stderr."""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

import measure
from ralu_edge import presets, sampler, schedules
from ralu_edge.edges import edge_scores
from ralu_edge.errors import UserError, run_cli
from ralu_edge.presets import RaluPreset
from ralu_edge.rng import rng_for
from ralu_edge.tokens import downsample_tokens

REFERENCE = "base-50"
SIZE = 128
TEXT_LENGTH = 32
GRID_COLUMNS = ("base-50", "steps-18", "ralu-4x", "steps-10", "ralu-7x", "ralu-4x-canny", "ralu-4x-c0",
                "ralu-4x-norenoise", "ralu-4x-fit1.65", "lowres-50")
BOOTSTRAP_SAMPLES = 2000
REAL_RENDERS_PER_PROMPT = 4  # real renders per prompt for the distribution metric (Fréchet distance)
FD_PAIRS = (("ralu-4x", "steps-18"), ("ralu-5x", "steps-15"), ("ralu-7x", "steps-10"))
WARMUP_INDEX = 10**6  # prompt index (seed offset) of the untimed warm-up image; far from any held-out index

Kind = Literal["baseline", "ralu", "lowres", "stage1_x0"]
Proxy = Literal["latent_grad", "canny", "random"]


@dataclass(frozen=True)
class StudyConfig:
    """One row of the study. baseline: `steps` Euler steps at full res (shift None = FLUX's dynamic shift, else a
    static shift); ralu: `preset` with the ablation knobs of ralu_sample; lowres: `steps` at the 8×8 low-res grid,
    decoded at 64 px and upsampled ×2 (diagnostic); stage1_x0: the stage-1 x̂₀ of config `source`, decoded the
    same way (diagnostic, no cost of its own)."""

    name: str
    group: str
    kind: Kind
    description: str
    steps: int = 0
    shift: float | None = None
    preset: RaluPreset | None = None
    edge_proxy: Proxy = "latent_grad"
    renoise: bool = True
    c_override: float | None = None
    r_override: float | None = None
    source: str | None = None


def study_configs(grid_h: int, grid_w: int) -> list[StudyConfig]:
    """Every configuration, fixed before looking at any held-out image (nothing here is tuned on them)."""
    p4, p5, p7 = presets.get("flux-4x"), presets.get("flux-5x"), presets.get("flux-7x")
    base_shift = math.exp(schedules.flux_calculate_shift(grid_h * grid_w))  # the model's own shift at this size
    fit4, fit7 = (presets.custom(p.N, p.e, p.r, h_ori=base_shift) for p in (p4, p7))

    def ralu(name: str, group: str, preset: RaluPreset, description: str, **knobs) -> StudyConfig:
        return StudyConfig(name, group, "ralu", description, preset=preset, **knobs)

    return [
        StudyConfig(REFERENCE, "reference", "baseline", "50 Euler steps, FLUX dynamic shift", steps=50),
        StudyConfig("steps-18", "main", "baseline", "18 steps (NFE of flux-4x)", steps=18),
        ralu("ralu-4x", "main", p4, "flux-4x, latent-gradient edges"),
        StudyConfig("steps-15", "main", "baseline", "15 steps (NFE of flux-5x)", steps=15),
        ralu("ralu-5x", "main", p5, "flux-5x, latent-gradient edges"),
        StudyConfig("steps-10", "main", "baseline", "10 steps (NFE of flux-7x)", steps=10),
        ralu("ralu-7x", "main", p7, "flux-7x, latent-gradient edges"),
        ralu("ralu-4x-canny", "edge proxy", p4, "flux-4x, VAE-decode + Canny edges", edge_proxy="canny"),
        ralu("ralu-5x-canny", "edge proxy", p5, "flux-5x, VAE-decode + Canny edges", edge_proxy="canny"),
        ralu("ralu-7x-canny", "edge proxy", p7, "flux-7x, VAE-decode + Canny edges", edge_proxy="canny"),
        ralu("ralu-4x-random", "edge proxy", p4, "flux-4x, random regions (control)", edge_proxy="random"),
        ralu("ralu-4x-c0", "renoise", p4, "flux-4x, i.i.d. renoise (c = 0)", c_override=0.0),
        ralu("ralu-7x-c0", "renoise", p7, "flux-7x, i.i.d. renoise (c = 0)", c_override=0.0),
        ralu("ralu-4x-norenoise", "renoise", p4, "flux-4x, no renoise/reschedule", renoise=False),
        ralu("ralu-7x-norenoise", "renoise", p7, "flux-7x, no renoise/reschedule", renoise=False),
        *(ralu(f"ralu-4x-r{r:g}", "r sweep", p4, f"flux-4x with r = {r:g}", r_override=r)
          for r in (0.0, 0.1, 0.2, 0.5, 1.0)),
        StudyConfig("steps-18-h3", "schedule", "baseline", "18 steps, static shift 3 (presets' h_ori)",
                    steps=18, shift=3.0),
        StudyConfig("steps-10-h3", "schedule", "baseline", "10 steps, static shift 3", steps=10, shift=3.0),
        ralu("ralu-4x-fit1.65", "schedule", fit4, f"flux-4x N, e refit to h_ori = {base_shift:.3g}"),
        ralu("ralu-7x-fit1.65", "schedule", fit7, f"flux-7x N, e refit to h_ori = {base_shift:.3g}"),
        StudyConfig("lowres-50", "resolution", "lowres", "50 steps on the 8×8 low-res grid, ×2 up", steps=50),
        StudyConfig("ralu-4x-stage1-x0", "resolution", "stage1_x0", "x̂₀ after flux-4x stage 1, ×2 up",
                    source="ralu-4x"),
        StudyConfig("ralu-7x-stage1-x0", "resolution", "stage1_x0", "x̂₀ after flux-7x stage 1, ×2 up",
                    source="ralu-7x"),
    ]


# ------------------------------------------------------------------------------------------------ cost model

def step_macs(num_image_tokens: int, num_text_tokens: int, transformer_config) -> int:
    """Multiply-accumulates of one FLUX transformer call: per block 12·D² per token (double blocks: qkv 3D², out
    D², MLP 8D², per stream; single blocks: qkv+MLP-in 7D², out 5D²) plus attention 2·S²·D (QKᵀ and AV), with
    S = image + text tokens; embedders and modulation ignored (a small part of a call, not measured here)."""
    d = transformer_config.num_attention_heads * transformer_config.attention_head_dim
    blocks = transformer_config.num_layers + transformer_config.num_single_layers
    s = num_image_tokens + num_text_tokens
    return blocks * (12 * d * d * s + 2 * s * s * d)


def config_costs(config: StudyConfig, grid_h: int, grid_w: int, transformer_config) -> dict:
    """NFE, image token-steps and MACs (attention and text tokens included) of one image."""
    if config.kind == "stage1_x0":
        return {"nfe": None, "image_token_steps": None, "macs": None}
    if config.kind == "ralu":
        p = config.preset
        r = p.r if config.r_override is None else config.r_override
        p = RaluPreset(p.name, p.N, p.e, p.h, p.Z, r)
        lengths = p.stage_lengths(grid_h, grid_w)
        macs = sum(n * step_macs(length, TEXT_LENGTH, transformer_config) for n, length in zip(p.N, lengths))
        return {"nfe": p.nfe, "image_token_steps": sampler.image_token_steps(p, grid_h, grid_w), "macs": macs}
    tokens = grid_h * grid_w // (4 if config.kind == "lowres" else 1)
    return {"nfe": config.steps, "image_token_steps": config.steps * tokens,
            "macs": config.steps * step_macs(tokens, TEXT_LENGTH, transformer_config)}


# ------------------------------------------------------------------------------------------------ sampling

@dataclass
class StudyContext:
    pipe: object
    denoiser: object
    decode: object
    grid_h: int
    grid_w: int
    seed: int
    sampling: object = None  # ralu_export.models.RecordedSampling: the model's recorded CFG, if any
    captured_x0: dict = field(default_factory=dict)  # config name -> stage-1 x̂₀ tokens of the current prompt


def _sigmas(config: StudyConfig, num_tokens: int) -> np.ndarray:
    if config.shift is None:
        return schedules.flux_baseline_sigmas(config.steps, num_tokens)
    return schedules.static_shift_sigmas(config.steps, config.shift)


def sample_image(config: StudyConfig, ctx: StudyContext, index: int, cond, noise: np.ndarray):
    """(uint8 image [128, 128, 3], seconds in the sampler call, host transition seconds) for one prompt."""
    from ralu_export import torch_backend as tb

    gh, gw = ctx.grid_h, ctx.grid_w
    if config.kind == "stage1_x0":
        return _upsampled(tb.decode_tokens(ctx.pipe, ctx.captured_x0[config.source], gh // 2, gw // 2))[0], None, None
    started = time.perf_counter()
    transition = 0.0
    if config.kind == "baseline":
        tokens = sampler.sample_baseline(ctx.denoiser, noise, gh, gw, _sigmas(config, gh * gw), cond)
    elif config.kind == "lowres":
        low = downsample_tokens(noise, gh, gw)
        tokens = sampler.sample_baseline(ctx.denoiser, low, gh // 2, gw // 2, _sigmas(config, low.shape[1]), cond)
    else:
        stages = []

        def proxy(x0, low_h, low_w):
            ctx.captured_x0[config.name] = x0
            if config.edge_proxy == "random":  # all ties: the sampler's seeded jitter picks k random regions
                return np.zeros((x0.shape[0], low_h * low_w))
            return edge_scores(x0, low_h, low_w, config.edge_proxy, ctx.decode)

        tokens = sampler.ralu_sample(
            ctx.denoiser, noise, gh, gw, config.preset, cond, rng=rng_for(ctx.seed + index, "ralu_study/ralu"),
            latent_channels=noise.shape[2] // 4, edge_proxy=proxy, renoise=config.renoise,
            c_override=config.c_override, r_override=config.r_override, on_stage=stages.append).tokens
        transition = sum(s.transition_seconds for s in stages)
    seconds = time.perf_counter() - started
    if config.kind == "lowres":
        return _upsampled(tb.decode_tokens(ctx.pipe, tokens, gh // 2, gw // 2))[0], seconds, None
    return tb.decode_tokens(ctx.pipe, tokens, gh, gw)[0], seconds, transition if config.kind == "ralu" else None


def _upsampled(images: np.ndarray) -> np.ndarray:
    """uint8 [B, 2H, 2W, 3] bilinear ×2 of uint8 [B, H, W, 3], so the 128-px classifier can judge low-res images."""
    import torch

    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    x = torch.nn.functional.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def run_study(configs: list[StudyConfig], prompts: list[str], ctx: StudyContext) -> dict[str, dict]:
    """Images [P, 128, 128, 3] uint8, sampler seconds [P] and transition seconds [P] per config name."""
    from ralu_export import torch_backend as tb

    runs = {c.name: {"images": [], "seconds": [], "transition_seconds": []} for c in configs}
    sampling = [c for c in configs if c.kind != "stage1_x0"]
    derived = [c for c in configs if c.kind == "stage1_x0"]
    warmup_cond = tb.conditioning_as_recorded(ctx.pipe, "a small red circle in the middle", TEXT_LENGTH, ctx.sampling)
    for c in sampling:  # untimed warm-up at every sequence length; not a held-out prompt
        sample_image(c, ctx, WARMUP_INDEX, warmup_cond, tb.initial_noise(ctx.pipe, WARMUP_INDEX, SIZE, SIZE))
    started = time.perf_counter()
    for i, prompt in enumerate(prompts):
        cond = tb.conditioning_as_recorded(ctx.pipe, prompt, TEXT_LENGTH, ctx.sampling)
        noise = tb.initial_noise(ctx.pipe, ctx.seed + i, SIZE, SIZE)
        for c in measure.rotated(sampling, i) + derived:
            image, seconds, transition = sample_image(c, ctx, i, cond, noise)
            runs[c.name]["images"].append(image)
            runs[c.name]["seconds"].append(seconds)
            runs[c.name]["transition_seconds"].append(transition)
        elapsed = time.perf_counter() - started
        eta = elapsed / (i + 1) * (len(prompts) - i - 1)
        print(f"prompt {i + 1}/{len(prompts)}  {elapsed:7.1f} s  eta {eta:7.1f} s"
              f"  load {measure.load_average()[0]:.2f}", file=sys.stderr, flush=True)
    return {name: {k: (np.stack(v) if k == "images" else v) for k, v in run.items()} for name, run in runs.items()}


# ------------------------------------------------------------------------------------------------ metrics

def paired_difference(correct: np.ndarray, reference: np.ndarray, rng: np.random.Generator) -> dict:
    """Accuracy difference (config − reference) over paired prompts with a 95 % percentile bootstrap interval,
    the discordant counts (McNemar's b, c) and the fraction of prompts with the same verdict."""
    diff = correct.astype(float) - reference.astype(float)
    samples = diff[rng.integers(0, len(diff), size=(BOOTSTRAP_SAMPLES, len(diff)))].mean(axis=1)
    return {"delta": float(diff.mean()),
            "ci95": [float(np.percentile(samples, 2.5)), float(np.percentile(samples, 97.5))],
            "only_config_right": int((diff > 0).sum()), "only_reference_right": int((diff < 0).sum()),
            "agreement": float((diff == 0).mean())}


def summarize(configs, runs, scenes, costs, seed: int, backgrounds: tuple[str, ...]) -> list[dict]:
    """Per-config numbers: attribute accuracies, fidelity to base-50, the distribution metric, cost, wall clock
    (see the module docstring). backgrounds: what the model was trained on, for the real renders."""
    from ralu_export.eval.metrics import frechet_distance, paired_frechet_difference
    from ralu_export.eval.scoring import (
        attribute_report, classify, load_classifier, object_checks, reference_renders,
    )

    clf = load_classifier()
    reference_images = runs[REFERENCE]["images"]
    real = reference_renders(scenes, REAL_RENDERS_PER_PROMPT, seed, backgrounds)
    real_features = classify(clf, real.reshape(-1, *real.shape[2:])).features.reshape(*real.shape[:2], -1)
    real_flat = real_features.reshape(-1, real_features.shape[-1])
    correct, features, rows = {}, {}, []
    for c in configs:
        pred = classify(clf, runs[c.name]["images"])
        correct[c.name] = np.array([object_checks(pred, i, s)["all"] for i, s in enumerate(scenes)])
        features[c.name] = pred.features
        row = {"name": c.name, "group": c.group, "kind": c.kind, "description": c.description,
               **_settings(c), **costs[c.name], **attribute_report(pred, scenes),
               "frechet_distance": frechet_distance(pred.features, real_flat)}
        if c.name != REFERENCE:
            row["fd_vs_reference"] = paired_frechet_difference(
                pred.features, features[REFERENCE], real_features, rng_for(seed, f"ralu_study/fd/{c.name}"))
        if c.name != REFERENCE:
            p = measure.psnr(runs[c.name]["images"], reference_images)
            s = measure.ssim(runs[c.name]["images"], reference_images)
            row.update(psnr_median_db=float(np.median(p)), psnr_mean_db=float(np.mean(np.minimum(p, 100.0))),
                       ssim_median=float(np.median(s)), ssim_mean=float(np.mean(s)))
            row["vs_reference"] = paired_difference(correct[c.name], correct[REFERENCE], rng_for(seed, c.name))
        row.update(_timing(runs[c.name]))
        row["per_prompt_correct"] = [int(x) for x in correct[c.name]]
        rows.append(row)
    _add_ratios(rows, costs)
    for name, other in FD_PAIRS:  # RALU against step reduction at equal NFE, on the distribution metric
        if name in features and other in features:
            row = _get(rows, name)
            row[f"fd_vs_{other}"] = paired_frechet_difference(features[name], features[other], real_features,
                                                              rng_for(seed, f"ralu_study/fd/{name}-vs-{other}"))
    # The floor a perfect sampler would reach at this sample size: one real render per prompt against the rest.
    rows[0]["frechet_distance_real_split"] = frechet_distance(real_features[:, 0], real_features[:, 1:].reshape(
        -1, real_features.shape[-1]))
    return rows


def _settings(c: StudyConfig) -> dict:
    out = {"steps": c.steps or None, "shift": c.shift, "edge_proxy": c.edge_proxy if c.kind == "ralu" else None}
    if c.preset is not None:
        out["preset"] = {**c.preset.to_dict(), "r_used": c.preset.r if c.r_override is None else c.r_override,
                         "c_used": c.preset.c if c.c_override is None else c.c_override, "renoise": c.renoise}
    return out


def _timing(run: dict) -> dict:
    seconds = [s for s in run["seconds"] if s is not None]
    if not seconds:
        return {}
    loop = measure.summary_ms(seconds)
    out = {"loop_median_ms": loop["median_ms"], "loop_p90_ms": loop["p90_ms"],
           "loop_mean_ms": float((np.asarray(seconds) * 1000.0).mean())}
    transitions = [t for t in run["transition_seconds"] if t is not None]
    if transitions:
        out["transition_median_ms"] = float(np.median(transitions) * 1000.0)
    return out


def _add_ratios(rows: list[dict], costs: dict) -> None:
    """Speedups against base-50: token-FLOP (image token-steps), MAC model, wall clock (median per image)."""
    ref = next(r for r in rows if r["name"] == REFERENCE)
    for r in rows:
        if r["image_token_steps"]:
            r["token_flop_speedup"] = ref["image_token_steps"] / r["image_token_steps"]
            r["mac_speedup"] = ref["macs"] / r["macs"]
        if "loop_median_ms" in r:
            r["wall_clock_speedup"] = ref["loop_median_ms"] / r["loop_median_ms"]


# ------------------------------------------------------------------------------------------------ reporting

def _get(rows: list[dict], name: str) -> dict:
    return next(r for r in rows if r["name"] == name)


def _num(value, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


TABLE_COLUMNS = (  # header, width, row -> text
    ("config", 20, lambda r: r["name"]),
    ("NFE", 4, lambda r: _num(r["nfe"], "d")),
    ("tokFLOP×", 8, lambda r: _num(r.get("token_flop_speedup"), ".2f")),
    ("MAC×", 6, lambda r: _num(r.get("mac_speedup"), ".2f")),
    ("wall×", 6, lambda r: _num(r.get("wall_clock_speedup"), ".2f")),
    ("attr", 5, lambda r: _num(r["attribute_accuracy"], ".3f")),
    ("single", 6, lambda r: _num(r["attribute_accuracy_single"], ".3f")),
    ("pair", 5, lambda r: _num(r["attribute_accuracy_pair"], ".3f")),
    ("Δattr [95% CI]", 22, lambda r: _delta_text(r)),
    ("shape", 5, lambda r: _num(r["shape_accuracy"], ".3f")),
    ("colour", 6, lambda r: _num(r["colour_accuracy"], ".3f")),
    ("pos", 5, lambda r: _num(r["position_accuracy"], ".3f")),
    ("FD", 6, lambda r: _num(r.get("frechet_distance"), ".1f")),
    ("ΔFD [95% CI]", 20, lambda r: _fd_delta_text(r)),
    ("PSNR md", 7, lambda r: _num(r.get("psnr_median_db"), ".2f")),
    ("PSNR mn", 7, lambda r: _num(r.get("psnr_mean_db"), ".2f")),
    ("SSIM md", 7, lambda r: _num(r.get("ssim_median"), ".3f")),
    ("SSIM mn", 7, lambda r: _num(r.get("ssim_mean"), ".3f")),
    ("loop ms", 7, lambda r: _num(r.get("loop_median_ms"), ".0f")),
)


def _delta_text(row: dict) -> str:
    v = row.get("vs_reference")
    return "–" if v is None else f"{v['delta']:+.3f} [{v['ci95'][0]:+.3f},{v['ci95'][1]:+.3f}]"


def _fd_delta_text(row: dict) -> str:
    v = row.get("fd_vs_reference")
    return "–" if v is None else f"{v['delta']:+.1f} [{v['ci95'][0]:+.1f},{v['ci95'][1]:+.1f}]"


def format_table(rows: list[dict]) -> str:
    """The fixed-width table printed on stdout."""
    lines = ["  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w, _) in enumerate(TABLE_COLUMNS))]
    for r in rows:
        lines.append("  ".join(f(r).rjust(w) if i else f(r).ljust(w) for i, (_, w, f) in enumerate(TABLE_COLUMNS)))
    return "\n".join(lines)


def markdown_table(rows: list[dict]) -> str:
    header = ["config", "group", "description"] + [h for h, _, _ in TABLE_COLUMNS[1:]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [f"`{r['name']}`", r["group"], r["description"]] + [f(r) for _, _, f in TABLE_COLUMNS[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _paired(rows: list[dict], name: str, reference: str) -> dict:
    """paired_difference of two configs' per-prompt verdicts (fixed bootstrap seed, for the report)."""
    a, b = (np.array(_get(rows, n)["per_prompt_correct"]) for n in (name, reference))
    return paired_difference(a, b, rng_for(0, f"ralu_study/{name}-vs-{reference}"))


def _ci(paired: dict) -> str:
    return f"Δ {paired['delta']:+.3f}, 95 % CI [{paired['ci95'][0]:+.3f}, {paired['ci95'][1]:+.3f}]"


def answers(rows: list[dict]) -> list[str]:
    """The two questions of issue 3, answered from the numbers."""
    base, r4, r7, s10 = (_get(rows, n) for n in (REFERENCE, "ralu-4x", "ralu-7x", "steps-10"))
    acc_gap = base["attribute_accuracy"] - r4["attribute_accuracy"]
    d7 = _paired(rows, "ralu-7x", "steps-10")
    psnr_win, ssim_win = (r7[k] > s10[k] for k in ("psnr_median_db", "ssim_median"))
    ci = r4["vs_reference"]["ci95"]
    fd_parts = []
    for name, other in FD_PAIRS:
        d = _get(rows, name).get(f"fd_vs_{other}")
        if d is not None:
            verdict = "better" if d["ci95"][1] < 0 else "worse" if d["ci95"][0] > 0 else "no measurable difference"
            fd_parts.append(f"`{name}` {_get(rows, name)['frechet_distance']:.1f} vs `{other}` "
                            f"{_get(rows, other)['frechet_distance']:.1f} (Δ {d['delta']:+.1f}, 95 % CI "
                            f"[{d['ci95'][0]:+.1f}, {d['ci95'][1]:+.1f}]: {verdict})")
    fd_answer = (f"**Distribution metric** (Fréchet distance between the classifier's features of the generated "
                 f"images and of {REAL_RENDERS_PER_PROMPT} real renders per prompt; lower is better; base-50 "
                 f"{base['frechet_distance']:.1f}, one real render per prompt against the rest "
                 f"{base.get('frechet_distance_real_split', float('nan')):.1f}): " + "; ".join(fd_parts) + ".")
    return [
        f"**Does RALU-7x beat 10-step reduction?** Attribute accuracy: {'yes' if d7['delta'] > 0 else 'no'} "
        f"({r7['attribute_accuracy']:.3f} vs {s10['attribute_accuracy']:.3f}; paired {_ci(d7)}; with the Canny proxy "
        f"{_get(rows, 'ralu-7x-canny')['attribute_accuracy']:.3f}). Fidelity to the "
        f"50-step image: {'yes' if psnr_win and ssim_win else 'no'} (PSNR median {r7['psnr_median_db']:.2f} vs "
        f"{s10['psnr_median_db']:.2f} dB, SSIM median {r7['ssim_median']:.3f} vs {s10['ssim_median']:.3f}). Both use "
        f"10 NFE; token-FLOP speedup {r7['token_flop_speedup']:.2f}× vs {s10['token_flop_speedup']:.2f}×, measured "
        f"wall clock {r7['wall_clock_speedup']:.2f}× vs {s10['wall_clock_speedup']:.2f}×.",
        f"**Is RALU-4x within 0.03 attribute accuracy of the 50-step baseline?** "
        f"{'Yes, nominally' if acc_gap <= 0.03 else 'No'}: {r4['attribute_accuracy']:.3f} vs "
        f"{base['attribute_accuracy']:.3f} (gap {acc_gap:+.3f}). But the paired 95 % interval of RALU-4x − base-50 "
        f"is [{ci[0]:+.3f}, {ci[1]:+.3f}] over {base['n_prompts']} prompts: this prompt set cannot resolve a 0.03 "
        f"difference, in either direction. Plain 18-step reduction scores "
        f"{_get(rows, 'steps-18')['attribute_accuracy']:.3f}.",
        fd_answer,
    ]


def _largest_change(rows: list[dict], pairs: list[tuple[str, str]]) -> str:
    """The (config, its default) pair with the largest paired accuracy change, with its 95 % interval."""
    diffs = [(name, default, _paired(rows, name, default)) for name, default in pairs]
    name, default, paired = max(diffs, key=lambda d: abs(d[2]["delta"]))
    significant = paired["ci95"][0] > 0 or paired["ci95"][1] < 0
    return (f"largest change: `{name}` vs `{default}` {_ci(paired)}, "
            f"{'significant' if significant else 'not significant'}")


FACTOR_PAIRS = {  # (variant, its default) pairs whose paired accuracy change the analysis reports per factor
    "schedule": [("steps-18-h3", "steps-18"), ("steps-10-h3", "steps-10"), ("ralu-4x-fit1.65", "ralu-4x"),
                 ("ralu-7x-fit1.65", "ralu-7x")],
    "edge proxy": [("ralu-4x-canny", "ralu-4x"), ("ralu-5x-canny", "ralu-5x"), ("ralu-7x-canny", "ralu-7x"),
                   ("ralu-4x-random", "ralu-4x")],
    "r": [(f"ralu-4x-r{r:g}", "ralu-4x") for r in (0.0, 0.1, 0.2, 0.5, 1.0)],
    "renoise": [("ralu-4x-c0", "ralu-4x"), ("ralu-4x-norenoise", "ralu-4x"), ("ralu-7x-c0", "ralu-7x"),
                ("ralu-7x-norenoise", "ralu-7x")],
}


def analysis(rows: list[dict], env: dict) -> list[str]:
    """Factor-by-factor evidence (what limits accuracy, resolution, schedule, edge proxy, r, renoising, fidelity,
    cost), read off the diagnostic rows; each factor reports its largest paired change with a 95 % interval."""

    def g(name: str, key: str = "attribute_accuracy") -> float:
        return _get(rows, name)[key]

    change = {factor: _largest_change(rows, pairs) for factor, pairs in FACTOR_PAIRS.items()}
    s10, s4 = _get(rows, "steps-10")["vs_reference"], _get(rows, "ralu-4x")["vs_reference"]
    low = _get(rows, "lowres-50")
    sweep = ", ".join(f"r={_get(rows, n)['preset']['r_used']:g}: {g(n):.3f}" for n, _ in FACTOR_PAIRS["r"])
    shift_text = "without a measurable mean shift" if s4["ci95"][0] <= 0 <= s4["ci95"][1] else "and shifts the mean"
    low_cost = ("does not measurably cost attributes" if low["vs_reference"]["ci95"][1] >= 0
                else "costs attributes measurably")
    return [
        f"**What limits accuracy.** Attribute accuracy is shape accuracy here (at 50 steps colour "
        f"{g(REFERENCE, 'colour_accuracy'):.3f}, position {g(REFERENCE, 'position_accuracy'):.3f}, shape "
        f"{g(REFERENCE, 'shape_accuracy'):.3f}; chance {env['chance_attribute_accuracy']:.3f}). Step reduction barely "
        f"changes the sample: 10 steps keep {s10['agreement']:.0%} of the per-prompt verdicts of base-50 (PSNR median "
        f"{g('steps-10', 'psnr_median_db'):.1f} dB), so there is almost no quality loss for RALU to win back on this "
        f"model, unlike FLUX.1-dev in the paper (FLUX-10 loses 0.11 ImageReward to FLUX-50, spec/RALU.md §11.2). "
        f"RALU draws a different sample and keeps only {s4['agreement']:.0%} of the verdicts: it adds variance "
        f"{shift_text}.",
        f"**Resolution.** Stage 1 runs on an 8×8 token grid (64 px); the model saw 64 px in "
        f"{env['training_share_64px']:.0%} of its training steps. 50 steps at that grid alone, upsampled, score "
        f"{g('lowres-50'):.3f} (paired vs base-50 {_ci(low['vs_reference'])}); the stage-1 x̂₀ scores "
        f"{g('ralu-4x-stage1-x0'):.3f} (flux-4x) and {g('ralu-7x-stage1-x0'):.3f} (flux-7x). The low-res stage "
        f"{low_cost}.",
        f"**Schedule.** The presets were fitted against h_ori = 3 (FLUX.1-dev at 1024²); this model's own shift at "
        f"256 tokens is e^0.5 ≈ 1.65. Static shift 3 vs 1.65: 18 steps {g('steps-18-h3'):.3f} vs "
        f"{g('steps-18'):.3f}, 10 steps {g('steps-10-h3'):.3f} vs {g('steps-10'):.3f}. RALU refitted to h_ori = 1.65 "
        f"(same N, e, r; the fit uses no images): 4x {g('ralu-4x-fit1.65'):.3f} vs {g('ralu-4x'):.3f}, 7x "
        f"{g('ralu-7x-fit1.65'):.3f} vs {g('ralu-7x'):.3f} ({change['schedule']}).",
        f"**Edge proxy.** Latent gradient / Canny: flux-4x {g('ralu-4x'):.3f} / {g('ralu-4x-canny'):.3f}, flux-5x "
        f"{g('ralu-5x'):.3f} / {g('ralu-5x-canny'):.3f}, flux-7x {g('ralu-7x'):.3f} / {g('ralu-7x-canny'):.3f}; random "
        f"regions (flux-4x) {g('ralu-4x-random'):.3f} ({change['edge proxy']}).",
        f"**Up-ratio r** (flux-4x; reported, not selected): r=0.3 (preset): {g('ralu-4x'):.3f}, {sweep} "
        f"({change['r']}).",
        f"**Renoising.** c = 0 / no renoise at all: flux-4x {g('ralu-4x-c0'):.3f} / {g('ralu-4x-norenoise'):.3f}, "
        f"flux-7x {g('ralu-7x-c0'):.3f} / {g('ralu-7x-norenoise'):.3f} ({change['renoise']}).",
        f"**Fidelity.** Stage 1 starts from the 2× subsampled initial noise, which on its own grid is a different "
        f"sample: `lowres-50`, with no transitions at all, is already only {low['psnr_median_db']:.2f} dB / SSIM "
        f"{low['ssim_median']:.3f} (medians) from base-50, and RALU's transitions then replace ~97 % of the noise "
        f"variance with fresh draws. PSNR/SSIM to the 50-step image measure whether the same sample is reproduced, "
        f"which step reduction does by construction and RALU cannot; on this model they say nothing about quality.",
        f"**Cost.** A 64-token call is not 4× cheaper than a 256-token one: `lowres-50` takes "
        f"{low['loop_median_ms'] / g(REFERENCE, 'loop_median_ms'):.2f} of base-50's loop time for 0.25 of its image "
        f"tokens ({1 / low['mac_speedup']:.2f} of its MACs), since per-call work that does not shrink with the image "
        f"(32 text tokens, modulation, Python and operator dispatch) weighs heavily in a 7-block, 192-wide "
        f"transformer. Hence RALU's wall-clock speedups ({g('ralu-4x', 'wall_clock_speedup'):.2f}×, "
        f"{g('ralu-5x', 'wall_clock_speedup'):.2f}×, {g('ralu-7x', 'wall_clock_speedup'):.2f}×) trail the token-FLOP "
        f"ratios ({g('ralu-4x', 'token_flop_speedup'):.2f}×, {g('ralu-5x', 'token_flop_speedup'):.2f}×, "
        f"{g('ralu-7x', 'token_flop_speedup'):.2f}×).",
    ]


def write_report(out: Path, rows: list[dict], environment: dict) -> None:
    """ralu_study.json and ralu_study.md in `out`, each written to a temporary name and renamed."""
    out.mkdir(parents=True, exist_ok=True)
    _atomic_write(out / "ralu_study.json", json.dumps({"environment": environment, "configs": rows}, indent=1))
    env = environment
    md = [
        "# RALU study on the built-in `shapes` model",
        "",
        f"{env['n_prompts']} held-out prompts (seed {env['seed']} + i per prompt in every config), 128 px, 16×16 "
        f"packed grid, torch reference backend, {env['torch_threads']} torch thread(s) on {env['cpu']}. Written by "
        "`benchmarks/bench_ralu_study.py`; raw numbers in `ralu_study.json`.",
        "",
        "Columns: *tokFLOP×* = image token-steps of base-50 ÷ config (counts image tokens only, as the paper's "
        "speedups); *MAC×* = the same with a MAC model that adds attention (quadratic) and the 32 text tokens; "
        "*wall×* = median sampler-call time of base-50 ÷ config (denoising loop incl. RALU's host transitions, "
        "no text encoding or final decode; measured interleaved on a shared machine, load average "
        f"{env['load_average_start']:.1f}→{env['load_average_end']:.1f}); *Δattr* = paired accuracy difference vs "
        "base-50 with a 95 % bootstrap interval; PSNR/SSIM against the base-50 image of the same prompt and seed. "
        "Diagnostic rows (`lowres-50`, `*-stage1-x0`) are 64-px images upsampled ×2 for the classifier.",
        "",
        markdown_table(rows),
        "",
        "## Answers",
        "",
        *[f"- {a}" for a in answers(rows)],
        "",
        "## Analysis",
        "",
        *[f"- {a}" for a in analysis(rows, env)],
        "",
        "![grid](../../docs/images/ralu_study_grid.png)",
        "",
    ]
    _atomic_write(out / "ralu_study.md", "\n".join(md))


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_grid(path: Path, runs: dict, names: list[str], num_rows: int = 8) -> None:
    """PNG grid: one column per config (labelled), rows = up to `num_rows` prompts spread over the prompt set."""
    from PIL import Image, ImageDraw

    from ralu_export.eval.generate import image_grid

    count = len(runs[names[0]]["images"])
    picks = np.unique(np.linspace(0, count - 1, min(num_rows, count)).round().astype(int))
    cells = np.stack([runs[n]["images"][i] for i in picks for n in names])
    body = image_grid(cells, columns=len(names))
    canvas = Image.new("RGB", (body.shape[1], body.shape[0] + 16), "white")
    canvas.paste(Image.fromarray(body), (0, 16))
    draw = ImageDraw.Draw(canvas)
    for j, n in enumerate(names):
        draw.text((j * SIZE + 3, 2), n, fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    canvas.save(tmp, format="PNG")
    os.replace(tmp, path)


def environment_info(args, scenes, model_path: Path, load_start: float) -> dict:
    """Machine, versions, model hash, prompt set (with its chance-level attribute accuracy: colour and position
    right, shapes guessed) and the model's share of 64-px training steps, for the report."""
    import torch

    from ralu_export.models import recorded_sampling
    from ralu_export.shapes_world import SHAPES

    weights = model_path / "transformer" / "diffusion_pytorch_model.safetensors"
    training = json.loads((model_path / "training_report.json").read_text())["train_config"]
    return {
        "cpu": measure.cpu_name(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        **measure.versions("torch", "diffusers", "numpy", "python", "platform"),
        "model": "shapes", "transformer_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "n_prompts": len(scenes), "seed": args.seed,
        "true_cfg_scale": recorded_sampling(model_path).true_cfg_scale,
        "chance_attribute_accuracy": float(np.mean([len(SHAPES) ** -len(sc.objects) for sc in scenes])),
        "training_share_64px": float(training["resolutions"].get("64", 0.0)),
        "image_size": SIZE, "text_tokens": TEXT_LENGTH,
        "warmup_images_per_config": 1, "bootstrap_samples": BOOTSTRAP_SAMPLES,
        "load_average_start": load_start, "load_average_end": measure.load_average()[0],
    }


# ------------------------------------------------------------------------------------------------ command line

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] + " Reads the built-in model; writes OUT/ralu_study.json, "
        "OUT/ralu_study.md and the grid PNG.", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--limit", type=int, default=0,
                   help="use only the first N >= 2 held-out prompts (0 = all 72; the Fréchet distance needs 2)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="folder for the JSON and Markdown")
    p.add_argument("--grid", type=Path, default=Path("docs/images/ralu_study_grid.png"), help="comparison grid PNG")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads; on a shared 2-core machine 2 threads can run much slower than 1")
    p.add_argument("--seed", type=int, default=0, help="prompt i uses seed + i (as ralu-eval)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(lambda: study(args))


def study(args) -> int:
    if args.limit < 0 or args.limit == 1 or args.threads < 1:  # a covariance (Fréchet distance) needs 2 prompts
        raise UserError("--limit must be 0 (all) or ≥ 2 and --threads ≥ 1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from ralu_export import torch_backend as tb
    from ralu_export.eval.scoring import model_backgrounds
    from ralu_export.models import load_flux_pipeline, recorded_sampling, resolve_model
    from ralu_export.shapes_world import caption_for, heldout_scenes

    torch.set_num_threads(args.threads)
    load_start = measure.load_average()[0]
    pipe = load_flux_pipeline("shapes")
    grid_h, grid_w = tb.packed_grid(pipe, SIZE, SIZE)
    scenes = heldout_scenes()[: args.limit or None]
    configs = study_configs(grid_h, grid_w)
    sampling = recorded_sampling(resolve_model("shapes"))  # every config samples with the model's own CFG
    ctx = StudyContext(pipe, tb.denoiser_as_recorded(tb.TorchFluxDenoiser(pipe.transformer), sampling),
                       tb.vae_decode_callable(pipe), grid_h, grid_w, args.seed, sampling)
    runs = run_study(configs, [caption_for(s) for s in scenes], ctx)
    costs = {c.name: config_costs(c, grid_h, grid_w, pipe.transformer.config) for c in configs}
    rows = summarize(configs, runs, scenes, costs, args.seed, model_backgrounds(resolve_model("shapes")))
    print(format_table(rows))
    write_report(args.out, rows, environment_info(args, scenes, resolve_model("shapes"), load_start))
    write_grid(args.grid, runs, [n for n in GRID_COLUMNS if n in runs])
    print(args.out / "ralu_study.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
