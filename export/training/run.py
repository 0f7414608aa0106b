"""The whole training run and its artifacts: `train_all` (phases with resume), `pack_weights` (the trained
tensors as a few safetensors shards + a JSON report) and `assemble_pipeline_folder` (those shards -> a
diffusers FluxPipeline folder via save_pretrained, plus the classifier weights)."""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ralu_edge.errors import UserError
from ralu_export import shapes_model as sm
from ralu_export.eval.classifier import AttributeClassifier
from ralu_export.eval.scoring import load_classifier
from ralu_export.training.data import render_training_set, tokenize_captions
from ralu_export.training.monitor import LearningCurve
from ralu_export.training.train import (
    TrainConfig, classifier_accuracy, encode_latents, train_classifier, train_dit, train_vae,
)

log = logging.getLogger(__name__)
SHARD_BYTES = 15 * 2**20  # the device tool brings back files of at most 16 MiB


def build_tokenizers(root: Path) -> Path:
    """Fresh tokenizers from the caption vocabulary. T5's is built token by token and is reproducible;
    the CLIP BPE comes from tokenizers' BpeTrainer, whose id order among equal-count merges is not
    stable across runs, so training uses the shipped tokenizers when present (`training_tokenizers`)."""
    sm.build_clip_tokenizer(root / "tokenizer")
    sm.build_t5_tokenizer(root / "tokenizer_2")
    return root


def training_tokenizers(root: Path) -> Path:
    """The tokenizers a training run uses: a copy of the shipped ones, else a fresh build (first ever run)."""
    from ralu_export import builtin_file

    shipped = builtin_file("shapes")
    if (shipped / "tokenizer" / "tokenizer.json").is_file() and (shipped / "tokenizer_2" / "tokenizer.json").is_file():
        for sub in ("tokenizer", "tokenizer_2"):
            shutil.copytree(shipped / sub, root / sub, dirs_exist_ok=True)
        return root
    return build_tokenizers(root)


def _fresh_components(model_cfg: sm.ShapesModelConfig, tokenizer_root: Path, seed: int) -> dict:
    clip_tok, t5_tok = sm.load_tokenizers(tokenizer_root)
    torch.manual_seed(seed)  # module initialisers draw from torch's global generator; seed it once here
    return sm.build_components(model_cfg, len(clip_tok), len(t5_tok), sm.clip_special_ids(clip_tok))


def train_all(cfg: TrainConfig, model_cfg: sm.ShapesModelConfig, work: Path, weights_out: Path,
              device: torch.device, init_weights: Path | None = None) -> dict:
    """Run every phase (resuming from `work`), then write the packed weights to `weights_out`.

    With `init_weights` (packed weights of an earlier run) training continues from them: the VAE, its latent
    normalisation and the classifier are taken as they are, and the transformer + text encoders go on
    training (the shipped model is such a second round, docs/shapes-model.md)."""
    started = time.monotonic()
    tokenizer_root = training_tokenizers(work / "tokenizers")
    # With a fixed VAE (init_weights) the latents depend only on the data settings: a resumed run reads them
    # back instead of rendering and encoding again (tens of CPU minutes).
    data_key = {"seed": cfg.seed, "num_images": cfg.num_images, "size": model_cfg.image_size,
                "backgrounds": cfg.backgrounds, "resolutions": sorted(cfg.resolutions), "vae": str(init_weights),
                "max_rotation": cfg.max_rotation, "position_jitter": cfg.position_jitter,
                "two_object_fraction": cfg.two_object_fraction}
    if cfg.shape_weights:  # only a weighted stream adds the key, so earlier rounds' caches stay valid
        data_key["shape_weights"] = cfg.shape_weights
    cache = work / "latents.pt"
    cached = None
    if init_weights is not None and cache.is_file():
        cached = torch.load(cache)
        cached = cached if cached.get("key") == data_key else None
    if cached is None:
        data = render_training_set(cfg.seed, cfg.num_images, model_cfg.image_size, workers=cfg.workers or None,
                                   backgrounds=training_backgrounds(cfg.backgrounds),
                                   max_rotation=cfg.max_rotation, position_jitter=cfg.position_jitter,
                                   two_object_fraction=cfg.two_object_fraction, shape_weights=cfg.shape_weights)
    report: dict = {"train_config": cfg.to_dict(), "model_config": model_cfg.to_dict(), "device": str(device),
                    "torch": torch.__version__, "render_seconds": time.monotonic() - started}
    comps = _fresh_components(model_cfg, tokenizer_root, cfg.seed)
    clf = AttributeClassifier(model_cfg.image_size)
    if init_weights is not None:
        earlier = load_packed_weights(init_weights, comps, clf)
        report["init_weights"] = {"from": str(init_weights), "earlier_report": earlier}
    comps = {k: v.to(device) for k, v in comps.items()}
    clf = clf.to(device)
    if cached is not None:
        shift, scale = _keep_vae(comps["vae"], earlier, report)
        latents = {s: t.to(device) for s, t in cached["latents"].items()}
        captions = cached["captions"]
        del cached
    else:
        latents, captions, shift, scale = _latents(comps, data, cfg, model_cfg, work, device, report,
                                                   earlier if init_weights is not None else None)
        if init_weights is not None:
            tmp = cache.with_suffix(".tmp")
            torch.save({"key": data_key, "latents": {s: t.cpu() for s, t in latents.items()}, "captions": captions},
                       tmp)
            os.replace(tmp, cache)
        del data

    def tokenize(captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return tuple(torch.from_numpy(a).to(device) for a in tokenize_captions(captions, tokenizer_root, sm.TEXT_LENGTH))

    clip_ids, t5_ids = tokenize(captions)
    ema = {n: copy.deepcopy(comps[n]).requires_grad_(False) for n in ("transformer", "text_encoder", "text_encoder_2")}
    monitor = None
    if cfg.eval_every:  # the learning curve: held-out prompts sampled by the EMA model and classified
        earlier_samples = samples_seen_in(report.get("init_weights", {}).get("earlier_report", {}))
        guidances = (1.0, cfg.eval_guidance) if cfg.eval_guidance > 1 else (1.0,)
        judge = load_classifier()  # the shipped judge, the one ralu-eval scores with (on the CPU, as classify feeds it)
        monitor = LearningCurve(work / "learning_curve.jsonl", ema, comps["vae"], judge, tokenize, cfg.dit_batch,
                                model_cfg.image_size, cfg.eval_steps, guidances, scale, shift,
                                label=f"seed {cfg.seed}", samples_before=earlier_samples)
        if not (work / "learning_curve.jsonl").is_file():  # where this round starts from
            monitor(0, float("nan"))
    report["dit"] = train_dit(comps, ema, latents, clip_ids, t5_ids, cfg, work, device, empty_ids=tokenize([""]),
                              monitor=monitor)
    report["samples_seen"] = samples_seen_in(report)
    if monitor is not None:
        report["learning_curve"] = [json.loads(line) for line in
                                    (work / "learning_curve.jsonl").read_text().splitlines() if line.strip()]
    del latents
    if init_weights is None:
        report["classifier"] = train_classifier(clf, comps["vae"], cfg, work, device)
    clf.eval()
    report["classifier_accuracy_clean"] = classifier_accuracy(clf, cfg.seed, 1000, device)
    report["total_seconds"] = time.monotonic() - started
    pack_weights(weights_out, {**ema, "vae": comps["vae"]}, clf, report)
    return report


def _latents(comps: dict, data, cfg: TrainConfig, model_cfg: sm.ShapesModelConfig, work: Path,
             device: torch.device, report: dict, earlier: dict | None):
    """Train the VAE (fresh runs) or take the earlier one, then encode the rendered set at every training
    resolution: (latents {size: [N, C, h, w]} normalised, captions, shift, scale)."""
    images = torch.from_numpy(data.images).permute(0, 3, 1, 2).contiguous().to(device)
    if earlier is None:
        report["vae"] = train_vae(comps["vae"], images, cfg, work, device)
        full = encode_latents(comps["vae"], images, model_cfg.image_size)
        shift, scale = float(full.mean()), float(1.0 / full.std())
        del full
        comps["vae"].register_to_config(scaling_factor=scale, shift_factor=shift)
        report["latent_shift_factor"], report["latent_scaling_factor"] = shift, scale
    else:
        shift, scale = _keep_vae(comps["vae"], earlier, report)
    latents = {s: (encode_latents(comps["vae"], images, s) - shift) * scale for s in cfg.resolutions}
    return latents, data.captions, shift, scale


def _keep_vae(vae, earlier: dict, report: dict) -> tuple[float, float]:
    """The earlier run's VAE and latent normalisation, as they are: (shift, scale)."""
    vae.eval()
    shift, scale = earlier["latent_shift_factor"], earlier["latent_scaling_factor"]
    vae.register_to_config(scaling_factor=scale, shift_factor=shift)
    report["latent_shift_factor"], report["latent_scaling_factor"] = shift, scale
    return shift, scale


def training_backgrounds(name: str) -> tuple[str, ...]:
    """TrainConfig.backgrounds -> the background kinds the training sampler draws."""
    from ralu_export.shapes_world.world import BACKGROUNDS, PLAIN_BACKGROUNDS

    choices = {"all": BACKGROUNDS, "plain": PLAIN_BACKGROUNDS}
    if name not in choices:
        raise UserError(f"--backgrounds must be one of {', '.join(choices)}, got {name!r}.")
    return choices[name]


def samples_seen_in(report: dict) -> int:
    """Transformer training samples behind a report, earlier rounds included."""
    if "samples_seen" in report:
        return int(report["samples_seen"])
    own = report.get("dit", {}).get("steps", 0) * report.get("train_config", {}).get("dit_batch", 0)
    earlier = report.get("init_weights", {}).get("earlier_report")
    return int(own) + (samples_seen_in(earlier) if earlier else 0)


def _cpu_state(module: torch.nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    return {prefix + k: v.detach().float().cpu().clone() for k, v in module.state_dict().items()}  # clone: T5 ties keys


def pack_weights(out: Path, components: dict, clf: AttributeClassifier, report: dict) -> None:
    """transformer shards, vae, text encoders and classifier as safetensors (each <= 15 MiB) + report JSON."""
    out.mkdir(parents=True, exist_ok=True)
    shard, size, index = {}, 0, 0
    for key, value in _cpu_state(components["transformer"]).items():
        nbytes = value.numel() * value.element_size()
        if shard and size + nbytes > SHARD_BYTES:
            save_file(shard, str(out / f"transformer-{index}.safetensors"))
            shard, size, index = {}, 0, index + 1
        shard[key], size = value, size + nbytes
    save_file(shard, str(out / f"transformer-{index}.safetensors"))
    save_file(_cpu_state(components["vae"]), str(out / "vae.safetensors"))
    save_file({**_cpu_state(components["text_encoder"], "text_encoder."),
               **_cpu_state(components["text_encoder_2"], "text_encoder_2.")}, str(out / "text_encoders.safetensors"))
    save_file(_cpu_state(clf), str(out / "classifier.safetensors"))
    (out / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")


PIPELINE_WEIGHTS = {"transformer": "transformer/diffusion_pytorch_model.safetensors",
                    "vae": "vae/diffusion_pytorch_model.safetensors",
                    "text_encoder": "text_encoder/model.safetensors",
                    "text_encoder_2": "text_encoder_2/model.safetensors"}


def _load_pipeline_folder(folder: Path, comps: dict, clf: AttributeClassifier | None) -> dict:
    """An assembled FluxPipeline folder (e.g. the shipped export/builtin/shapes) as `init_weights`, so that
    a later session continues training from what ships without the packed shards of the run that made it.
    The classifier comes from `classifier.safetensors` beside the folder (where `assemble` writes it)."""
    report = json.loads((folder / "training_report.json").read_text())
    for name, rel in PIPELINE_WEIGHTS.items():
        path = folder / rel
        if not path.is_file():
            raise UserError(f"{folder} has no {rel}; pass packed weights or a complete shapes pipeline folder.")
        result = comps[name].load_state_dict(load_file(str(path)), strict=False)
        tied = {"encoder.embed_tokens.weight", "shared.weight"}  # T5 ties these; save_pretrained stores one
        if result.unexpected_keys or set(result.missing_keys) - tied or len(result.missing_keys) > 1:
            raise UserError(f"{path} does not match the shapes {name} (missing {result.missing_keys[:3]}, "
                            f"unexpected {result.unexpected_keys[:3]}).")
    comps["vae"].register_to_config(scaling_factor=report["latent_scaling_factor"],
                                    shift_factor=report["latent_shift_factor"])
    if clf is not None:
        clf_path = folder.parent / "classifier.safetensors"
        if not clf_path.is_file():
            raise UserError(f"no classifier weights at {clf_path} beside the pipeline folder {folder}.")
        clf.load_state_dict(load_file(str(clf_path)))
    return report


def load_packed_weights(weights: Path, comps: dict, clf: AttributeClassifier | None) -> dict:
    """Load what `pack_weights` wrote (or an assembled pipeline folder: `_load_pipeline_folder`) into freshly
    built components (and classifier); returns the training report."""
    if (weights / "model_index.json").is_file():
        return _load_pipeline_folder(weights, comps, clf)
    report = json.loads((weights / "training_report.json").read_text())
    transformer_state: dict = {}
    for shard in sorted(weights.glob("transformer-*.safetensors")):
        transformer_state.update(load_file(str(shard)))
    comps["transformer"].load_state_dict(transformer_state)
    comps["vae"].load_state_dict(load_file(str(weights / "vae.safetensors")))
    comps["vae"].register_to_config(scaling_factor=report["latent_scaling_factor"],
                                    shift_factor=report["latent_shift_factor"])
    text = load_file(str(weights / "text_encoders.safetensors"))
    for name in ("text_encoder", "text_encoder_2"):
        prefix = name + "."
        comps[name].load_state_dict({k[len(prefix):]: v for k, v in text.items() if k.startswith(prefix)})
    if clf is not None:
        clf.load_state_dict(load_file(str(weights / "classifier.safetensors")))
    return report


def assemble_pipeline_folder(weights: Path, tokenizer_root: Path, out: Path, classifier_out: Path) -> Path:
    """Packed weights -> a FluxPipeline folder at `out` (written to a temporary name, then moved)."""
    report = json.loads((weights / "training_report.json").read_text())
    mc = report["model_config"]
    model_cfg = sm.ShapesModelConfig(**{**mc, "axes_dims_rope": tuple(mc["axes_dims_rope"]),
                                        "vae_channels": tuple(mc["vae_channels"])})
    comps = _fresh_components(model_cfg, tokenizer_root, 0)
    load_packed_weights(weights, comps, None)
    pipe = sm.assemble_pipeline(comps, tokenizer_root)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(str(tmp), safe_serialization=True)
    (tmp / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    # CLIPTokenizer (slow) saves vocab.json + merges.txt only; the torch-free runtime reads tokenizer.json.
    shutil.copyfile(tokenizer_root / "tokenizer" / "tokenizer.json", tmp / "tokenizer" / "tokenizer.json")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    shutil.copyfile(weights / "classifier.safetensors", classifier_out)
    return out
