"""Learning curves while training: the EMA model samples the held-out ShapesWorld prompts with a batched Euler
loop (the sigmas FluxPipeline uses, true CFG optional), the VAE decodes, and the shipped attribute classifier
scores the images. Cheaper than `ralu-eval` (one batch instead of 72 pipeline calls) and close to it; the
numbers that ship are always re-measured with `ralu-eval`."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ralu_edge.schedules import flux_baseline_sigmas
from ralu_export.eval.scoring import attribute_report, classify
from ralu_export.shapes_world import caption_for, heldout_scenes
from ralu_export.training.train import image_ids


@torch.no_grad()
def sample_images(comps: dict, clip_ids: torch.Tensor, t5_ids: torch.Tensor, size: int, steps: int,
                  seed: int, guidance: float = 0.0, empty_ids: tuple[torch.Tensor, torch.Tensor] | None = None,
                  scaling: float = 1.0, shift: float = 0.0, batch: int = 24) -> np.ndarray:
    """uint8 images [B, size, size, 3] of the captions (ids), Euler over FluxPipeline's sigmas; with
    guidance > 1, true CFG against the empty caption: v = v_u + g (v_c - v_u)."""
    device = clip_ids.device
    lat = size // 2 ** (len(comps["vae"].config.block_out_channels) - 1)
    grid = lat // 2
    channels = comps["transformer"].config.in_channels
    sigmas = flux_baseline_sigmas(steps, grid * grid)  # FluxPipeline's own list (dynamic shift)
    g = torch.Generator(device="cpu").manual_seed(seed)
    out = []
    for start in range(0, clip_ids.shape[0], batch):
        c_ids, t_ids = clip_ids[start:start + batch], t5_ids[start:start + batch]
        n = c_ids.shape[0]
        if guidance > 1:
            c_ids = torch.cat([c_ids, empty_ids[0].expand(n, -1)])
            t_ids = torch.cat([t_ids, empty_ids[1].expand(n, -1)])
        pooled = comps["text_encoder"](c_ids).pooler_output
        states = comps["text_encoder_2"](t_ids).last_hidden_state
        x = torch.randn((n, grid * grid, channels), generator=g).to(device)
        img_ids, txt_ids = image_ids(grid, grid, device), torch.zeros(t_ids.shape[1], 3, device=device)
        for s, s_next in zip(sigmas[:-1], sigmas[1:]):
            inp = torch.cat([x, x]) if guidance > 1 else x
            v = comps["transformer"](hidden_states=inp, encoder_hidden_states=states, pooled_projections=pooled,
                                     timestep=torch.full((inp.shape[0],), float(s), device=device),
                                     img_ids=img_ids, txt_ids=txt_ids, return_dict=False)[0]
            if guidance > 1:
                v = v[n:] + guidance * (v[:n] - v[n:])
            x = x + float(s_next - s) * v
        latents = x.view(n, grid, grid, channels // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(n, -1, lat, lat)
        images = comps["vae"].decode(latents / scaling + shift).sample
        out.append(((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy())
    return np.concatenate(out)


class LearningCurve:
    """A `train_dit` monitor: scores the EMA components on the held-out prompts and appends one JSON line per
    point to `path` (steps, samples seen, loss, seconds, the attribute report per guidance scale)."""

    def __init__(self, path: Path, ema: dict, vae, clf, tokenize, batch: int, size: int, steps: int,
                 guidances: tuple[float, ...], scaling: float, shift: float, label: str = "",
                 samples_before: int = 0):
        self.path, self.ema, self.vae, self.clf = path, ema, vae, clf
        self.scenes = heldout_scenes()
        self.clip_ids, self.t5_ids = tokenize([caption_for(s) for s in self.scenes])
        self.empty_ids = tokenize([""])
        self.batch, self.size, self.steps, self.guidances = batch, size, steps, guidances
        self.scaling, self.shift, self.label = scaling, shift, label
        self.samples_before, self.started = samples_before, time.monotonic()

    def __call__(self, step: int, loss: float) -> dict:
        comps = {**self.ema, "vae": self.vae}
        point = {"label": self.label, "step": step, "samples_seen": self.samples_before + step * self.batch,
                 "loss": loss, "seconds": time.monotonic() - self.started}
        for guidance in self.guidances:
            t = time.monotonic()
            images = sample_images(comps, self.clip_ids, self.t5_ids, self.size, self.steps, seed=0,
                                   guidance=guidance, empty_ids=self.empty_ids, scaling=self.scaling,
                                   shift=self.shift)
            if self.size != 128:  # the classifier reads 128 px, and 64 px renders upsampled like this as well
                # (docs/shapes-model.md, "Scaled-down lever curves")
                images = F.interpolate(torch.from_numpy(images).permute(0, 3, 1, 2).float(), size=(128, 128),
                                       mode="bicubic", align_corners=False).clamp(0, 255).round()
                images = images.to(torch.uint8).permute(0, 2, 3, 1).numpy()
            report = attribute_report(classify(self.clf, images), self.scenes)
            point[f"cfg{guidance:g}"] = {k: v for k, v in report.items() if k != "n_prompts"}
            point[f"cfg{guidance:g}"]["eval_seconds"] = time.monotonic() - t
        with open(self.path, "a") as f:
            f.write(json.dumps(point) + "\n")
        return point
