"""Train a small real LoRA on the built-in `shapes` model with `peft` on the CPU (issue 17): red objects drawn
green. Captions keep saying "red" while the images show green, for 3 of 4 training scenes (the others are
ordinary scenes without red, so the rest of the palette stays put). The adapter covers the transformer's
attention projections and the CLIP text encoder's, and is saved in diffusers' format
(`FluxPipeline.save_lora_weights`: `transformer.<module>.lora_A.weight`, `text_encoder.<module>...`), the file
`FluxPipeline.load_lora_weights` and `ralu-run --lora` read.

    nice python scripts/train_lora.py --out tests/data/lora/shapes-red-to-green.safetensors

The loss is the one the base model was trained with (ralu_export.training.train.dit_loss); one thread, small
batches (the machine is shared). Deterministic for a fixed seed and thread count."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

log = logging.getLogger("train_lora")

SOURCE_COLOUR, TARGET_COLOUR = "red", "green"
TRANSFORMER_MODULES = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]
CLIP_MODULES = ["q_proj", "k_proj", "v_proj", "out_proj"]


def training_scenes(seed: int, count: int):
    """(images [N, 128, 128, 3] uint8, captions): 3 in 4 scenes hold a red object drawn green, the rest hold no
    red object and are drawn as captioned."""
    from ralu_edge.rng import rng_for
    from ralu_export.shapes_world import world

    images, captions = [], []
    for index in range(count):
        rng = rng_for(seed, "train_lora/scene", index)
        want_red = index % 4 != 3
        while True:
            scene = world.sample_scene(rng, backgrounds=world.PLAIN_BACKGROUNDS)
            has_red = any(o.colour == SOURCE_COLOUR for o in scene.objects)
            if has_red == want_red:
                break
        drawn = replace(scene, objects=tuple(replace(o, colour=TARGET_COLOUR) if o.colour == SOURCE_COLOUR else o
                                             for o in scene.objects))
        jitter = rng.uniform(-0.03, 0.03, size=(len(scene.objects), 2))
        images.append(world.render(drawn, 128, jitter=jitter, texture_seed=int(rng.integers(2**31))))
        captions.append(world.caption_for(scene))
    return np.stack(images), captions


def train(args: argparse.Namespace) -> dict:
    import torch
    from diffusers import FluxPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from ralu_export.models import load_flux_pipeline, resolve_model
    from ralu_export.training.data import tokenize_captions
    from ralu_export.training.train import dit_loss, encode_latents

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    pipe = load_flux_pipeline("shapes")
    images, captions = training_scenes(args.seed, args.images)
    vae = pipe.vae
    with torch.no_grad():
        raw = encode_latents(vae, torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), 128)
        latents = (raw - vae.config.shift_factor) * vae.config.scaling_factor
    clip_ids, t5_ids = (torch.from_numpy(a) for a in tokenize_captions(captions, resolve_model("shapes"), 32))

    for module in (pipe.transformer, pipe.text_encoder, pipe.text_encoder_2, vae):
        module.requires_grad_(False)
    pipe.transformer.add_adapter(LoraConfig(r=args.rank, lora_alpha=args.rank, init_lora_weights="gaussian",
                                            target_modules=TRANSFORMER_MODULES))
    pipe.text_encoder.add_adapter(LoraConfig(r=args.rank, lora_alpha=args.rank, init_lora_weights="gaussian",
                                             target_modules=CLIP_MODULES))
    params = [p for m in (pipe.transformer, pipe.text_encoder) for p in m.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    components = {"transformer": pipe.transformer, "text_encoder": pipe.text_encoder,
                  "text_encoder_2": pipe.text_encoder_2}
    g = torch.Generator().manual_seed(args.seed)
    losses, started = [], time.monotonic()
    for step in range(args.steps):
        idx = torch.randint(0, len(captions), (args.batch,), generator=g)
        loss = dit_loss(components, latents[idx], clip_ids[idx], t5_ids[idx], g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if (step + 1) % 25 == 0:
            log.info("step %d loss %.4f (%.0f s)", step + 1, np.mean(losses[-25:]), time.monotonic() - started)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.out.parent) as tmp:
        FluxPipeline.save_lora_weights(
            tmp, weight_name="lora.safetensors",
            transformer_lora_layers=get_peft_model_state_dict(pipe.transformer),
            text_encoder_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.text_encoder)))
        Path(tmp, "lora.safetensors").replace(args.out)
    report = {"steps": args.steps, "batch": args.batch, "rank": args.rank, "lr": args.lr, "images": args.images,
              "seed": args.seed, "threads": args.threads, "seconds": time.monotonic() - started,
              "loss_first_25": float(np.mean(losses[:25])), "loss_last_25": float(np.mean(losses[-25:])),
              "effect": f"{SOURCE_COLOUR} objects drawn {TARGET_COLOUR}", "out": str(args.out)}
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="the .safetensors LoRA to write (and a .json report)")
    p.add_argument("--steps", type=int, default=300, help="optimizer steps")
    p.add_argument("--batch", type=int, default=8, help="scenes per step")
    p.add_argument("--images", type=int, default=256, help="rendered training scenes")
    p.add_argument("--rank", type=int, default=4, help="LoRA rank (lora_alpha = rank)")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate")
    p.add_argument("--seed", type=int, default=0, help="scenes, noise and LoRA initialisation")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(message)s")
    print(json.dumps(train(build_parser().parse_args(argv))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
