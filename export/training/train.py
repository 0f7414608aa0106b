"""Training the built-in `shapes` model from a seed: tokenizers -> data -> VAE -> latents -> transformer (with
both text encoders, jointly) -> attribute classifier -> packed weights. Every phase checkpoints into a work
folder and resumes from it; the same code runs on the CPU (slowly) or on a GPU (docs/shapes-model.md)."""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ralu_export import shapes_model as sm
from ralu_export.eval.classifier import AttributeClassifier, images_to_tensor, scene_labels
from ralu_export.shapes_world.world import MAX_ROTATION, POSITION_JITTER, SHAPE_WEIGHTS, TWO_OBJECT_FRACTION
from ralu_export.training.checkpoint import has_checkpoint, load_checkpoint, save_checkpoint
from ralu_export.training.data import render_classifier_set, render_training_set, tokenize_captions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines the shipped weights (with the model config and the seed)."""

    seed: int = 0
    num_images: int = 80_000
    vae_steps: int = 2500
    vae_batch: int = 64
    vae_lr: float = 1e-3
    dit_steps: int = 4500
    dit_batch: int = 256
    dit_lr: float = 4e-4
    dit_warmup: int = 300
    ema_decay: float = 0.999
    resolutions: dict = field(default_factory=lambda: {128: 0.6, 64: 0.3, 96: 0.1})
    # The data and objective levers of docs/shapes-model.md's learning curves (issue 12). The defaults are the
    # recipe of the first two rounds: every background, no caption dropout, logit-normal(0, 1) sigmas.
    backgrounds: str = "all"  # "all" (shapes_world.BACKGROUNDS) or "plain" (PLAIN_BACKGROUNDS)
    caption_dropout: float = 0.0  # fraction of samples trained on the empty caption (for true CFG)
    sigma_location: float = 0.0  # mean of the logit-normal sigma density (> 0 favours noisier sigmas)
    sigma_uniform: float = 0.2  # fraction of sigmas drawn uniformly instead
    object_weight: float = 0.0  # extra loss weight on object tokens (0 = plain MSE; see dit_loss)
    max_rotation: float = MAX_ROTATION  # training renders turn each object by up to this many degrees
    position_jitter: float = POSITION_JITTER  # ... and move its centre by up to this fraction of the side
    two_object_fraction: float = TWO_OBJECT_FRACTION  # share of two-object training scenes
    shape_weights: str = SHAPE_WEIGHTS  # relative shape frequencies, e.g. "circle:2,hexagon:2" ("" = uniform)
    eval_every: int = 0  # steps between learning-curve points (held-out prompts, sampled and classified)
    eval_steps: int = 20  # Euler steps of those samples
    eval_guidance: float = 0.0  # also score them with true CFG at this scale (0 = only without)
    clf_images: int = 30_000
    clf_steps: int = 2500
    clf_batch: int = 256
    clf_lr: float = 2e-3
    checkpoint_every: int = 500
    # Wall-clock budgets per phase (0 = none). With a budget, the phase times its first 30 steps and lowers
    # its step count to fit, before the LR schedule needs it; the report records the steps actually run, and
    # passing them as --*-steps with no budget reproduces the run.
    vae_seconds: float = 0.0
    dit_seconds: float = 0.0
    clf_seconds: float = 0.0
    workers: int = 0  # rendering processes; 0 = all cores

    def to_dict(self) -> dict:
        d = asdict(self)
        d["resolutions"] = {str(k): v for k, v in self.resolutions.items()}
        return d


def _generator(device: torch.device, seed: int, purpose: str) -> torch.Generator:
    import zlib

    g = torch.Generator(device=device)
    g.manual_seed((seed * 1_000_003 + zlib.crc32(purpose.encode())) % (2**63))
    return g


def _lr_at(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


class _StepPlan:
    """Total steps of a phase, lowered once (after 30 timed steps) to fit a wall-clock budget."""

    probe_steps = 30

    def __init__(self, steps: int, budget_seconds: float, done: int, resumed: dict | None = None):
        self.total, self.budget, self.start, self.first = steps, budget_seconds, time.monotonic(), done
        self.fixed = budget_seconds <= 0
        if budget_seconds > 0 and resumed and "total_steps" in resumed:  # a budgeted phase keeps its plan
            self.total, self.fixed = int(resumed["total_steps"]), True

    def done(self, step: int) -> bool:
        self.update(step)
        return step >= self.total

    def extra(self) -> dict:
        return {"total_steps": self.total} if self.fixed else {}

    def update(self, step: int) -> None:
        if not self.fixed and step - self.first >= self.probe_steps:
            elapsed = time.monotonic() - self.start
            rate = elapsed / (step - self.first)
            self.total = min(self.total, step + int(max(0.0, self.budget - elapsed) / rate))
            self.fixed = True
            log.info("step plan: %.1f ms/step -> %d steps", rate * 1e3, self.total)

    def seconds(self) -> float:
        return time.monotonic() - self.start


# ---------------------------------------------------------------------------------------------- VAE

def train_vae(vae, images: torch.Tensor, cfg: TrainConfig, work: Path, device: torch.device) -> dict:
    """Reconstruction (L1 + MSE) plus a tiny KL, on uint8 images [N, 3, H, W] held on `device`."""
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    ckpt, step, resumed = work / "vae" / "ckpt", 0, {}
    if has_checkpoint(ckpt):
        step, resumed = load_checkpoint(ckpt, {"vae": vae}, opt)
    g = _generator(device, cfg.seed, "vae/batches")
    plan, losses = _StepPlan(cfg.vae_steps, cfg.vae_seconds, step, resumed), []
    vae.train()
    while not plan.done(step):
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, plan.total, cfg.vae_lr, 100)
        idx = torch.randint(0, images.shape[0], (cfg.vae_batch,), device=device, generator=g)
        x = images[idx].float() / 127.5 - 1.0
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, device=device, generator=g)
        rec = vae.decode(z).sample
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + 1e-6 * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        step += 1
        losses.append(loss.item())
        if step % cfg.checkpoint_every == 0:
            save_checkpoint(ckpt, {"vae": vae}, opt, step, plan.extra())
            log.info("vae step %d loss %.4f", step, np.mean(losses[-100:]))
    save_checkpoint(ckpt, {"vae": vae}, opt, step, plan.extra())
    vae.eval()
    return {"steps": step, "final_loss": float(np.mean(losses[-100:])) if losses else None,
            "seconds": plan.seconds()}


@torch.no_grad()
def encode_latents(vae, images: torch.Tensor, size: int, batch: int = 32) -> torch.Tensor:
    """Posterior means of uint8 images [N, 3, H, W] resized (antialiased) to `size`: [N, C, size/f, size/f].
    Small batches: at 128 px each image's encoder activations take megabytes per layer, and 512 at once thrash
    memory."""
    out = []
    for i in range(0, images.shape[0], batch):
        x = images[i:i + batch].float() / 127.5 - 1.0
        if x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out.append(vae.encode(x).latent_dist.mean)
    return torch.cat(out)


# ---------------------------------------------------------------------------------------------- transformer

def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, (H/2)(W/2), 4C] in FLUX's (c, dy, dx) order (= FluxPipeline._pack_latents)."""
    b, c, h, w = latents.shape
    x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def image_ids(grid_h: int, grid_w: int, device: torch.device) -> torch.Tensor:
    """FLUX position ids (0, row, col) of a packed grid: [grid_h * grid_w, 3] float32."""
    ids = torch.zeros(grid_h, grid_w, 3, device=device)
    ids[..., 1] = torch.arange(grid_h, device=device)[:, None]
    ids[..., 2] = torch.arange(grid_w, device=device)[None, :]
    return ids.view(-1, 3)


def sample_sigmas(batch: int, device: torch.device, g: torch.Generator, location: float = 0.0,
                  uniform_fraction: float = 0.2) -> torch.Tensor:
    """Training noise levels: logit-normal(location, 1) (SD3) for most, uniform for `uniform_fraction` so
    sigma near 0 and 1 (where RALU's stages start and end) are covered."""
    logit = torch.sigmoid(torch.randn(batch, device=device, generator=g) + location)
    uniform = torch.rand(batch, device=device, generator=g)
    pick = torch.rand(batch, device=device, generator=g) < 1.0 - uniform_fraction
    return torch.where(pick, logit, uniform).clamp(1e-4, 1.0)


def drop_captions(clip_ids: torch.Tensor, t5_ids: torch.Tensor, empty: tuple[torch.Tensor, torch.Tensor],
                  fraction: float, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace a random `fraction` of the captions by the empty caption, tokenised as FluxPipeline tokenises
    `negative_prompt=""`, so the model learns the unconditional velocity that true CFG subtracts."""
    if fraction <= 0:
        return clip_ids, t5_ids
    drop = (torch.rand(clip_ids.shape[0], device=clip_ids.device, generator=g) < fraction)[:, None]
    return torch.where(drop, empty[0], clip_ids), torch.where(drop, empty[1], t5_ids)


def dit_loss(components: dict, latents: torch.Tensor, clip_ids: torch.Tensor, t5_ids: torch.Tensor,
             g: torch.Generator, sigma_location: float = 0.0, sigma_uniform: float = 0.2,
             object_weight: float = 0.0) -> torch.Tensor:
    """Rectified-flow velocity MSE: x = (1 - s) x0 + s n, target n - x0 (the FLUX convention).

    object_weight > 0 weights each token's error by 1 + object_weight * (its clean latent's distance from the
    image's median token, over the largest such distance in the image), normalised to mean 1: on plain
    backgrounds the median token is the background, so the tokens that carry the outline get the gradient
    that the (shape-free) background would otherwise take (docs/shapes-model.md, issue 12)."""
    x0 = pack_latents(latents)
    b, _, h, w = latents.shape
    sigma = sample_sigmas(b, latents.device, g, sigma_location, sigma_uniform)
    noise = torch.randn(x0.shape, device=latents.device, generator=g)
    xt = (1 - sigma[:, None, None]) * x0 + sigma[:, None, None] * noise
    pooled = components["text_encoder"](clip_ids).pooler_output
    states = components["text_encoder_2"](t5_ids).last_hidden_state
    pred = components["transformer"](
        hidden_states=xt, encoder_hidden_states=states, pooled_projections=pooled, timestep=sigma,
        img_ids=image_ids(h // 2, w // 2, latents.device), txt_ids=torch.zeros(t5_ids.shape[1], 3, device=latents.device),
        return_dict=False)[0]
    if object_weight <= 0:
        return F.mse_loss(pred, noise - x0)
    weight = 1.0 + object_weight * object_saliency(x0)
    per_token = ((pred - (noise - x0)) ** 2).mean(dim=2)
    return (weight * per_token).sum() / weight.sum()


def object_saliency(x0: torch.Tensor) -> torch.Tensor:
    """[B, N, C] packed clean latents -> [B, N] in [0, 1]: each token's distance from the image's median token
    (the background on plain backgrounds) over the image's largest such distance."""
    dist = (x0 - x0.median(dim=1, keepdim=True).values).norm(dim=2)
    return dist / dist.amax(dim=1, keepdim=True).clamp_min(1e-6)


def train_dit(components: dict, ema: dict, latents: dict[int, torch.Tensor], clip_ids: torch.Tensor,
              t5_ids: torch.Tensor, cfg: TrainConfig, work: Path, device: torch.device,
              empty_ids: tuple[torch.Tensor, torch.Tensor] | None = None, monitor=None) -> dict:
    """The transformer and both text encoders, jointly, on mixed resolutions; EMA copies are what ships.

    empty_ids: the empty caption's (clip, t5) ids, needed when cfg.caption_dropout > 0. monitor: called as
    monitor(step, mean recent loss) every cfg.eval_every steps and at the end (the learning curve)."""
    if cfg.caption_dropout > 0 and empty_ids is None:
        raise ValueError("caption dropout needs the empty caption's token ids")
    names = ("transformer", "text_encoder", "text_encoder_2")
    params = [p for n in names for p in components[n].parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.dit_lr, betas=(0.9, 0.99), weight_decay=0.0)
    modules = {**{n: components[n] for n in names}, **{f"ema_{n}": ema[n] for n in names}}
    ckpt, step, resumed = work / "dit" / "ckpt", 0, {}
    if has_checkpoint(ckpt):
        step, resumed = load_checkpoint(ckpt, modules, opt)
    g = _generator(device, cfg.seed, "dit/batches")
    sizes = sorted(cfg.resolutions)
    probs = torch.tensor([cfg.resolutions[s] for s in sizes], device=device)
    ema_params = [p for n in names for p in ema[n].parameters()]
    plan, losses = _StepPlan(cfg.dit_steps, cfg.dit_seconds, step, resumed), []
    while not plan.done(step):
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, plan.total, cfg.dit_lr, cfg.dit_warmup)
        size = sizes[int(torch.multinomial(probs, 1, generator=g))]
        idx = torch.randint(0, clip_ids.shape[0], (cfg.dit_batch,), device=device, generator=g)
        clip_b, t5_b = drop_captions(clip_ids[idx], t5_ids[idx], empty_ids, cfg.caption_dropout, g)
        loss = dit_loss(components, latents[size][idx], clip_b, t5_b, g, cfg.sigma_location, cfg.sigma_uniform,
                        cfg.object_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            decay = min(cfg.ema_decay, (1 + step) / (10 + step))
            torch._foreach_mul_(ema_params, decay)
            torch._foreach_add_(ema_params, params, alpha=1 - decay)
        step += 1
        losses.append(loss.item())
        if step % cfg.checkpoint_every == 0:
            save_checkpoint(ckpt, modules, opt, step, plan.extra())
            log.info("dit step %d loss %.4f (%.0f s)", step, np.mean(losses[-100:]), plan.seconds())
        if monitor is not None and cfg.eval_every and step % cfg.eval_every == 0:
            monitor(step, float(np.mean(losses[-cfg.eval_every:])))
    save_checkpoint(ckpt, modules, opt, step, plan.extra())
    if monitor is not None and cfg.eval_every and step % cfg.eval_every:
        monitor(step, float(np.mean(losses[-cfg.eval_every:])) if losses else float("nan"))
    return {"steps": step, "final_loss": float(np.mean(losses[-200:])) if losses else None,
            "seconds": plan.seconds()}


# ---------------------------------------------------------------------------------------------- classifier

def train_classifier(clf: AttributeClassifier, vae, cfg: TrainConfig, work: Path, device: torch.device) -> dict:
    """Cross-entropy over the five slots; half of each batch goes through the VAE (reconstructions look like
    generated images), plus small noise and brightness jitter."""
    images, scenes = render_classifier_set(cfg.seed, cfg.clf_images, workers=cfg.workers or None)
    x_all = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(device)
    y_all = torch.from_numpy(scene_labels(scenes)).to(device)
    opt = torch.optim.AdamW(clf.parameters(), lr=cfg.clf_lr, weight_decay=1e-4)
    ckpt, step, resumed = work / "classifier" / "ckpt", 0, {}
    if has_checkpoint(ckpt):
        step, resumed = load_checkpoint(ckpt, {"classifier": clf}, opt)
    g = _generator(device, cfg.seed, "classifier/batches")
    plan, losses = _StepPlan(cfg.clf_steps, cfg.clf_seconds, step, resumed), []
    clf.train()
    while not plan.done(step):
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, plan.total, cfg.clf_lr, 100)
        idx = torch.randint(0, x_all.shape[0], (cfg.clf_batch,), device=device, generator=g)
        x, y = x_all[idx].float() / 127.5 - 1.0, y_all[idx]
        half = cfg.clf_batch // 2
        with torch.no_grad():
            x[:half] = vae.decode(vae.encode(x[:half]).latent_dist.mean).sample.clamp(-1, 1)
            x = x + 0.03 * torch.randn(x.shape, device=device, generator=g)
            x = x + 0.1 * (torch.rand(x.shape[0], 1, 1, 1, device=device, generator=g) - 0.5)
        shape_l, colour_l, size_l, _ = clf(x)
        loss = (F.cross_entropy(shape_l.flatten(0, 1), y[..., 0].flatten())
                + F.cross_entropy(colour_l.flatten(0, 1), y[..., 1].flatten())
                + 0.5 * F.cross_entropy(size_l.flatten(0, 1), y[..., 2].flatten()))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        losses.append(loss.item())
        if step % cfg.checkpoint_every == 0:
            save_checkpoint(ckpt, {"classifier": clf}, opt, step, plan.extra())
    save_checkpoint(ckpt, {"classifier": clf}, opt, step, plan.extra())
    clf.eval()
    return {"steps": step, "final_loss": float(np.mean(losses[-100:])) if losses else None,
            "seconds": plan.seconds()}


@torch.no_grad()
def classifier_accuracy(clf: AttributeClassifier, seed: int, count: int, device: torch.device) -> float:
    """Fraction of clean renders (a seed never trained on) whose five slots are all predicted right."""
    images, scenes = render_classifier_set(seed + 7919, count, workers=1)
    labels = torch.from_numpy(scene_labels(scenes)).to(device)
    correct = 0
    for i in range(0, count, 256):
        s, c, z, _ = clf(images_to_tensor(images[i:i + 256]).to(device))
        pred = torch.stack([s.argmax(-1), c.argmax(-1), z.argmax(-1)], -1)
        correct += int((pred == labels[i:i + 256]).all(-1).all(-1).sum())
    return correct / count
