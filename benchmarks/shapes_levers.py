"""Which training levers make the `shapes` model learn shape identity on 2 CPU cores (issue 12, item 1).

Each lever is a short CPU run of the real training code (`train_dit`: a FluxTransformer2DModel trained jointly
with both text encoders, rectified flow) that differs from the `control` run in one or two settings. To get
a learning curve in minutes the runs are scaled down the same way for every lever: 64 px images (an 8x8 grid
of packed tokens, RALU's low-res grid), a narrow transformer, the shipped VAE and tokenizers. Every
`--eval-every` steps the EMA model samples the 72 held-out prompts (20 Euler steps over FluxPipeline's sigmas;
with caption dropout also with true CFG), the shipped attribute classifier scores them after a bicubic
upsampling to 128 px (it reads 64 px renders upsampled that way as well as 128 px ones: docs/shapes-model.md,
"Scaled-down lever curves"), and one JSON line per point goes
to <work>/curves.jsonl.

  python benchmarks/shapes_levers.py run --lever plain --minutes 8 --threads 1 --work /tmp/levers
  python benchmarks/shapes_levers.py table --work /tmp/levers --json benchmarks/results/shapes_levers.json
  python benchmarks/shapes_levers.py probe --model shapes --json benchmarks/results/shapes_probe.json

`sweep` scores a model (a pipeline folder, or the EMA weights of a `ralu-train all` checkpoint over it) on the
72 held-out prompts at several true-CFG scales with the learning curve's batched sampler:

  python benchmarks/shapes_levers.py sweep --model shapes --checkpoint /tmp/main-run/work/dit/ckpt --scales 1,3,6,9

`probe` asks a trained model what it knows without sampling: the DiT as a diffusion classifier. For renders of
held-out single-object scenes it noises the latents at one sigma (3 draws), runs the transformer once per
candidate caption (the true one with its shape, or its colour, swapped for every other) and counts how
often the true caption gives the lowest velocity error. Far above chance while samples come out as blobs
means the condition is learned but too weakly to steer sampling (what guidance amplifies).

Two runs at --threads 1 can go side by side on this machine; `table` prints the curves (shape accuracy
against training samples seen) and writes them as JSON, negative results included."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import measure

SIZE = 64
BASE_MODEL = dict(transformer_heads=4, transformer_head_dim=32, double_layers=1, single_layers=3)
BASE_TRAIN = dict(dit_batch=32, dit_lr=5e-4, dit_warmup=50, resolutions={SIZE: 1.0}, eval_every=200,
                  checkpoint_every=10**9, num_images=20_000)
# name -> (what it tests, TrainConfig overrides, ShapesModelConfig overrides, guidance scales scored)
LEVERS = {
    "control": ("every background, no caption dropout, logit-normal(0, 1) sigmas", {}, {}, (1.0,)),
    "plain": ("plain light/dark backgrounds only (no stripes, checker, dots, noise)",
              {"backgrounds": "plain"}, {}, (1.0,)),
    "plain-cfg": ("plain + 10 % caption dropout, scored without and with true CFG 4",
                  {"backgrounds": "plain", "caption_dropout": 0.1}, {}, (1.0, 4.0)),
    "plain-noisy-sigma": ("plain + logit-normal(0.7, 1) sigmas (more weight on noisy steps)",
                          {"backgrounds": "plain", "sigma_location": 0.7}, {}, (1.0,)),
    "plain-lr": ("plain + 3x the learning rate (1.5e-3)", {"backgrounds": "plain", "dit_lr": 1.5e-3}, {}, (1.0,)),
    "plain-wide": ("plain + the shipped width (6 heads) and depth (2 double + 5 single)",
                   {"backgrounds": "plain"}, {"transformer_heads": 6, "double_layers": 2, "single_layers": 5},
                   (1.0,)),
    "noise-cfg": ("every background + 10 % caption dropout, scored without and with true CFG 4",
                  {"caption_dropout": 0.1}, {}, (1.0, 4.0)),
}


def _data(work: Path, backgrounds: str, count: int, vae, shift: float, scaling: float):
    """Rendered training set (seed 0) -> normalised 64 px latents + captions, cached per background set."""
    import torch

    from ralu_export.shapes_world.world import BACKGROUNDS, PLAIN_BACKGROUNDS
    from ralu_export.training.data import render_training_set
    from ralu_export.training.train import encode_latents

    path = work / f"data-{backgrounds}-{count}.pt"
    if path.is_file():
        return torch.load(path)
    bgs = PLAIN_BACKGROUNDS if backgrounds == "plain" else BACKGROUNDS
    data = render_training_set(0, count, 128, workers=1, backgrounds=bgs)
    images = torch.from_numpy(data.images).permute(0, 3, 1, 2).contiguous()
    latents = (encode_latents(vae, images, SIZE, batch=256) - shift) * scaling
    item = {"latents": latents, "captions": data.captions}
    tmp = path.with_suffix(".tmp")
    torch.save(item, tmp)
    os.replace(tmp, path)
    return item


def run(lever: str, minutes: float, threads: int, work: Path) -> None:
    import torch
    from safetensors.torch import load_file

    from ralu_export import builtin_file
    from ralu_export import shapes_model as sm
    from ralu_export.eval.scoring import load_classifier
    from ralu_export.training.data import tokenize_captions
    from ralu_export.training.monitor import LearningCurve
    from ralu_export.training.train import TrainConfig, train_dit

    torch.set_num_threads(threads)
    what, train_over, model_over, guidances = LEVERS[lever]
    shipped = builtin_file("shapes")
    report = json.loads((shipped / "training_report.json").read_text())
    shift, scaling = report["latent_shift_factor"], report["latent_scaling_factor"]
    model_cfg = sm.ShapesModelConfig(**{**BASE_MODEL, **model_over})
    cfg = TrainConfig(**{**BASE_TRAIN, **train_over, "dit_steps": 10**6, "dit_seconds": minutes * 60})
    clip_tok, t5_tok = sm.load_tokenizers(shipped)
    torch.manual_seed(0)
    comps = sm.build_components(model_cfg, len(clip_tok), len(t5_tok), sm.clip_special_ids(clip_tok))
    comps["vae"].load_state_dict(load_file(str(shipped / "vae" / "diffusion_pytorch_model.safetensors")))
    comps["vae"].eval()
    work.mkdir(parents=True, exist_ok=True)
    data = _data(work, cfg.backgrounds, cfg.num_images, comps["vae"], shift, scaling)

    def tokenize(captions):
        return tuple(torch.from_numpy(a) for a in tokenize_captions(captions, shipped, sm.TEXT_LENGTH))

    clip_ids, t5_ids = tokenize(data["captions"])
    names = ("transformer", "text_encoder", "text_encoder_2")
    ema = {n: copy.deepcopy(comps[n]).requires_grad_(False) for n in names}
    run_dir = work / f"run-{lever}"
    if run_dir.exists():
        raise SystemExit(f"error: {run_dir} exists; delete it to rerun lever {lever!r}.")
    curve = LearningCurve(work / "curves.jsonl", ema, comps["vae"], load_classifier(), tokenize, cfg.dit_batch,
                          SIZE, 20, guidances, scaling, shift, label=lever)
    started = time.monotonic()
    result = train_dit(comps, ema, {SIZE: data["latents"]}, clip_ids, t5_ids, cfg, run_dir, torch.device("cpu"),
                       empty_ids=tokenize([""]), monitor=curve)
    meta = {"label": lever, "what": what, "train_overrides": train_over, "model": dataclasses.asdict(model_cfg),
            "transformer_params": sum(p.numel() for p in comps["transformer"].parameters()),
            "threads": threads, "minutes": minutes, "result": result, "wall_seconds": time.monotonic() - started,
            "loadavg_end": measure.load_average(), **measure.versions("host")}
    with open(work / "runs.jsonl", "a") as f:
        f.write(json.dumps(meta) + "\n")


def probe(model: str, count: int, sigmas: tuple[float, ...], threads: int, out: Path | None) -> dict:
    import numpy as np
    import torch

    from ralu_export.models import load_flux_pipeline, resolve_model
    from ralu_export.shapes_world import COLOURS, SHAPES, Scene, SceneObject, caption_for, heldout_scenes
    from ralu_export.shapes_world.world import render
    from ralu_export.training.data import tokenize_captions
    from ralu_export.training.train import encode_latents, image_ids, pack_latents

    torch.set_num_threads(threads)
    folder = resolve_model(model)
    pipe = load_flux_pipeline(model)
    vae_cfg = pipe.vae.config
    scenes = [s for s in heldout_scenes() if len(s.objects) == 1][:count]
    rng = np.random.default_rng(0)
    images = np.stack([render(s, 128, jitter=rng.uniform(-0.03, 0.03, (1, 2)), angles_deg=rng.uniform(-12, 12, 1))
                       for s in scenes])
    result = {"model": model, "scenes": len(scenes), "draws": 3, "by_sigma": {},
              "text_separation": _text_separation(pipe, folder)}
    print("text encoders, mean pairwise distance between captions that differ only in the shape / colour word:")
    for name, row in result["text_separation"].items():
        print(f"  {name:12s} shape {row['shape']:.2f}  colour {row['colour']:.2f}")
    with torch.no_grad():
        latents = (encode_latents(pipe.vae, torch.from_numpy(images).permute(0, 3, 1, 2), 128)
                   - vae_cfg.shift_factor) * vae_cfg.scaling_factor
        x0 = pack_latents(latents)
        grid = latents.shape[-1] // 2
        img_ids, txt_ids = image_ids(grid, grid, torch.device("cpu")), torch.zeros(32, 3)
        for sigma in sigmas:
            right = {"shape": 0, "colour": 0}
            for i, scene in enumerate(scenes):
                o = scene.objects[0]
                for attr, values, truth in (("shape", SHAPES, o.shape), ("colour", list(COLOURS), o.colour)):
                    objs = [SceneObject(v, o.colour, o.position, o.size) if attr == "shape" else
                            SceneObject(o.shape, v, o.position, o.size) for v in values]
                    caps = [caption_for(Scene((ob,), scene.background)) for ob in objs]
                    clip, t5 = (torch.from_numpy(a) for a in tokenize_captions(caps, folder, 32))
                    pooled = pipe.text_encoder(clip).pooler_output
                    states = pipe.text_encoder_2(t5).last_hidden_state
                    g, err = torch.Generator().manual_seed(i), torch.zeros(len(values))
                    for _ in range(3):
                        noise = torch.randn(x0[i:i + 1].shape, generator=g)
                        xt = ((1 - sigma) * x0[i:i + 1] + sigma * noise).expand(len(values), -1, -1)
                        v = pipe.transformer(hidden_states=xt, encoder_hidden_states=states,
                                             pooled_projections=pooled, timestep=torch.full((len(values),), sigma),
                                             img_ids=img_ids, txt_ids=txt_ids, return_dict=False)[0]
                        err += ((v - (noise - x0[i:i + 1])) ** 2).mean((1, 2))
                    right[attr] += int(values[int(err.argmin())] == truth)
            row = {k: v / len(scenes) for k, v in right.items()}
            result["by_sigma"][str(sigma)] = row
            print(f"sigma {sigma:4.2f}: shape {row['shape']:.2f} (chance {1 / len(SHAPES):.2f})  "
                  f"colour {row['colour']:.2f} (chance {1 / len(COLOURS):.2f})", flush=True)
    if out is not None:
        out.write_text(json.dumps(result, indent=1) + "\n")
    return result


def _text_separation(pipe, folder: Path) -> dict:
    """How far apart the text encoders put captions that differ in one word (mean pairwise L2 distance of the
    pooled CLIP vector and of the whole T5 sequence): a collapsed shape vocabulary would show up here."""
    import torch

    from ralu_export.shapes_world import COLOURS, SHAPES
    from ralu_export.training.data import tokenize_captions

    template = "a large {colour} {shape} on the left"
    groups = {"shape": [template.format(colour="red", shape=s) for s in SHAPES],
              "colour": [template.format(colour=c, shape="circle") for c in COLOURS]}
    out: dict = {"clip_pooled": {}, "t5_sequence": {}}
    with torch.no_grad():
        for attr, caps in groups.items():
            clip, t5 = (torch.from_numpy(a) for a in tokenize_captions(caps, folder, 32))
            for name, x in (("clip_pooled", pipe.text_encoder(clip).pooler_output),
                            ("t5_sequence", pipe.text_encoder_2(t5).last_hidden_state.flatten(1))):
                n = x.shape[0]
                out[name][attr] = float(torch.cdist(x, x).sum() / (n * (n - 1)))
    return out


def sweep(model: str, checkpoint: Path | None, scales: tuple[float, ...], steps: int, threads: int,
          out: Path | None) -> list[dict]:
    import torch

    from ralu_export import shapes_model as sm
    from ralu_export.eval.scoring import load_classifier
    from ralu_export.models import load_flux_pipeline, resolve_model
    from ralu_export.training.checkpoint import load_checkpoint
    from ralu_export.training.data import tokenize_captions
    from ralu_export.training.monitor import LearningCurve

    torch.set_num_threads(threads)
    folder = resolve_model(model)
    pipe = load_flux_pipeline(model)
    comps = {"transformer": pipe.transformer, "text_encoder": pipe.text_encoder, "text_encoder_2": pipe.text_encoder_2}
    step = None
    if checkpoint is not None:  # the EMA copies are what would ship (the optimizer state is read and dropped)
        params = [p for m in comps.values() for p in m.parameters()]
        step, _ = load_checkpoint(checkpoint, {f"ema_{n}": m for n, m in comps.items()}, torch.optim.AdamW(params))
    vae = pipe.vae.eval()

    def tokenize(captions):
        return tuple(torch.from_numpy(a) for a in tokenize_captions(captions, folder, sm.TEXT_LENGTH))

    rows = []
    for scale in scales:
        curve = LearningCurve(Path(os.devnull), comps, vae, load_classifier(), tokenize, 0, 128, steps,
                              (scale,), vae.config.scaling_factor, vae.config.shift_factor,
                              label=f"{model} {checkpoint or ''} step {step}")
        point = curve(step or 0, float("nan"))
        row = {"scale": scale, "checkpoint_step": step, **point[f"cfg{scale:g}"]}
        rows.append(row)
        print(f"cfg {scale:4g}: single {row['attribute_accuracy_single']:.3f}  pair {row['attribute_accuracy_pair']:.3f}  "
              f"shape {row['shape_accuracy']:.3f}  colour {row['colour_accuracy']:.3f}", flush=True)
    if out is not None:
        out.write_text(json.dumps({"model": model, "checkpoint": str(checkpoint), "steps": steps, "rows": rows},
                                  indent=1) + "\n")
    return rows


def table(work: Path, out: Path | None) -> None:
    points = [json.loads(line) for line in (work / "curves.jsonl").read_text().splitlines() if line.strip()]
    runs = {}
    if (work / "runs.jsonl").is_file():
        runs = {m["label"]: m for m in map(json.loads, (work / "runs.jsonl").read_text().splitlines())}
    print(f"{'lever':20s} {'samples':>8s} {'loss':>6s}  shape/colour/single/pair (no CFG)   with CFG")
    for p in points:
        base = p["cfg1"]
        cfg = next((v for k, v in p.items() if k.startswith("cfg") and k != "cfg1"), None)
        row = (f"{p['label']:20s} {p['samples_seen']:8d} {p['loss']:6.3f}  {base['shape_accuracy']:.2f} "
               f"{base['colour_accuracy']:.2f} {base['attribute_accuracy_single']:.2f} "
               f"{base['attribute_accuracy_pair']:.2f}")
        if cfg:
            row += (f"            {cfg['shape_accuracy']:.2f} {cfg['colour_accuracy']:.2f} "
                    f"{cfg['attribute_accuracy_single']:.2f} {cfg['attribute_accuracy_pair']:.2f}")
        print(row)
    if out is not None:
        out.write_text(json.dumps({"levers": {k: v[0] for k, v in LEVERS.items()}, "base_model": BASE_MODEL,
                                   "base_train": {k: v for k, v in BASE_TRAIN.items() if k != "resolutions"},
                                   "size": SIZE, "runs": runs, "points": points}, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("--lever", choices=sorted(LEVERS), required=True)
    r.add_argument("--minutes", type=float, default=8.0)
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--work", type=Path, default=Path("/tmp/ralu-levers"))
    t = sub.add_parser("table")
    t.add_argument("--work", type=Path, default=Path("/tmp/ralu-levers"))
    t.add_argument("--json", type=Path, default=None)
    pr = sub.add_parser("probe")
    pr.add_argument("--model", default="shapes")
    pr.add_argument("--count", type=int, default=24, help="held-out single-object scenes")
    pr.add_argument("--sigmas", default="0.3,0.5,0.7,0.85,0.95")
    pr.add_argument("--threads", type=int, default=1)
    pr.add_argument("--json", type=Path, default=None)
    sw = sub.add_parser("sweep")
    sw.add_argument("--model", default="shapes")
    sw.add_argument("--checkpoint", type=Path, default=None, help="a ralu-train checkpoint (…/dit/ckpt) over --model")
    sw.add_argument("--scales", default="1,3,6,9")
    sw.add_argument("--steps", type=int, default=20)
    sw.add_argument("--threads", type=int, default=1)
    sw.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.command == "sweep":
        sweep(args.model, args.checkpoint, tuple(float(x) for x in args.scales.split(",")), args.steps,
              args.threads, args.json)
    elif args.command == "run":
        run(args.lever, args.minutes, args.threads, args.work)
    elif args.command == "probe":
        probe(args.model, args.count, tuple(float(x) for x in args.sigmas.split(",")), args.threads, args.json)
    else:
        table(args.work, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
