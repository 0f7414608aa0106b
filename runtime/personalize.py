"""`Personalizer`: forward-only zeroth-order Textual Inversion through a bundle (spec/ZO_PERSONALIZATION.md
§8, §10–11): no torch, no autograd, only ONNX Runtime forward passes through the bundle's text encoders (the
new token injected into every encoder as a placeholder embedding) and its full-resolution denoiser graph (int8
when the bundle is int8). The optimiser is ralu_edge.zo; this module supplies the loss and the bookkeeping:
VAE-encoder moments cached once per image and flip, the velocity-MSE loss of one step's draw evaluated for
all n + 1 queries, an atomically written checkpoint every K steps, resume, and the diffusers-layout output."""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Literal

import numpy as np
from safetensors.numpy import load_file, save_file

from ralu_edge.errors import UserError
from ralu_edge.tokens import grid_positions
from ralu_edge.zo.optimizer import ZOConfig, ZOState, init_state, zo_step
from ralu_edge.zo.timesteps import PutsConfig, draw_step, training_pair, velocity_mse
from ralu_runtime.backends import LearnedTokens, OrtTextEncoders, OrtVae, RunClock, open_denoiser
from ralu_runtime.bundle import Bundle, open_bundle
from ralu_runtime.embeddings import save_learned_embeds
from ralu_runtime.sessions import SessionConfig

log = logging.getLogger(__name__)
CHECKPOINT_FORMAT = "ralu-personalize-checkpoint"
WIDE_POSTERIOR_RATIO = 0.25  # "auto": use the posterior mean when its std exceeds this share of the latents' std
ThetaUnits = Literal["absolute", "table_rms"]
THETA_UNITS: tuple[str, ...] = ("absolute", "table_rms")


@dataclass(frozen=True)
class PersonalizeConfig:
    """steps: total ZO steps; checkpoint_every: K; captions: templates with `{}` for the token, cycled over the
    images; posterior: x0 from a per-step posterior sample (the spec), its mean, or "auto" (the mean when the
    VAE posterior is wide relative to the latents, as in the built-in model, whose DiT was trained on means).
    theta_units: the coordinates the optimiser works in. "absolute" (the spec's, one encoder in the reference):
    θ itself, so lr and μ are absolute embedding units. "table_rms": each encoder's part of θ divided by the RMS of
    that encoder's token-embedding table, so lr and μ are relative to the table's scale. Added because one lr
    cannot serve several encoders whose tables differ in scale (the built-in model: CLIP rows ~0.02 per
    coordinate, T5 rows ~1.0, so lr 1e-2 is half a CLIP coordinate per step but 1 % of a T5 one). Adam is
    invariant to the gradient's scale up to ε_Adam, so this amounts to a per-encoder lr and μ."""

    steps: int = 1000
    seed: int = 0
    checkpoint_every: int = 50
    zo: ZOConfig = field(default_factory=ZOConfig)
    puts: PutsConfig = field(default_factory=PutsConfig)
    captions: tuple[str, ...] = ("a {}",)
    posterior: Literal["auto", "sample", "mean"] = "auto"
    theta_units: ThetaUnits = "absolute"

    def __post_init__(self) -> None:
        if self.theta_units not in THETA_UNITS:
            raise UserError(f"theta_units {self.theta_units!r} is not one of {', '.join(THETA_UNITS)}.")
        if self.steps < 1 or self.checkpoint_every < 1:
            raise UserError(f"steps ({self.steps}) and checkpoint_every ({self.checkpoint_every}) must be >= 1.")
        if not self.captions or any(c.count("{}") != 1 for c in self.captions):
            raise UserError("every caption template must contain the token slot `{}` exactly once, e.g. 'a {}'.")

    def to_dict(self) -> dict:
        return {"steps": self.steps, "seed": self.seed, "checkpoint_every": self.checkpoint_every,
                "zo": self.zo.to_dict(), "puts": self.puts.to_dict(), "captions": list(self.captions),
                "posterior": self.posterior, "theta_units": self.theta_units}


@dataclass
class FitResult:
    token: str
    embeddings: dict[str, np.ndarray]  # {text_encoder_name: [hidden] float32}
    losses: list[float]
    seconds_per_step: float
    steps_done: int
    resumed_from: int = 0


class Personalizer:
    """ZO Textual Inversion over one bundle; build with `Personalizer.from_bundle(path)`."""

    def __init__(self, bundle: Bundle, config: SessionConfig):
        config = replace(config, purpose="personalize")  # float-activation kernels: ZO's differences survive
        self.bundle, self.session_config = bundle, config
        self.clock = RunClock()
        if not any(g.role == "vae_encoder" for g in bundle.manifest.graphs):
            raise UserError(f"{bundle.root.name}: this {bundle.manifest.target} bundle has no VAE encoder graph, which "
                            "personalization needs to encode the photos; personalize on a desktop or android bundle "
                            "(ralu-export writes vae_encoder/ there) and load its learned embeddings here.")
        self.vae = OrtVae(bundle, config, self.clock, encoder=True)
        self.denoiser = open_denoiser(bundle, config, self.clock)
        res = bundle.manifest.resolutions[0]
        self.resolution = res
        self.channels = bundle.manifest.vae.latent_channels

    @classmethod
    def from_bundle(cls, path: str | Path, *, threads: int = 0) -> "Personalizer":
        return cls(open_bundle(path), SessionConfig(threads=threads))

    def load(self) -> None:
        """Open the full-resolution denoiser session now rather than at the first step (ORT sessions open lazily),
        e.g. to measure memory after model load. The text encoders open in `fit`."""
        res = self.resolution
        self.denoiser._session(res.grid_height * res.grid_width)

    # ------------------------------------------------------------------------------------------ setup

    def init_embeddings(self, init_word: str) -> dict[str, np.ndarray]:
        """Each encoder's embedding row of `init_word`, which must be one token for every tokenizer."""
        from ralu_runtime.tokenization import PromptTokenizer, TokenizerConfig

        out = {}
        for e in self.bundle.manifest.text_encoders:
            if not e.token_embeddings:
                raise UserError(f"this bundle's {e.name} ships no token-embedding table (manifest field "
                                "token_embeddings); re-export it with this version of ralu-export.")
            spec = self.bundle.manifest.tokenizer(e.tokenizer)
            tok = PromptTokenizer(self.bundle.path(spec.file), TokenizerConfig.from_spec(spec))
            ids = [i for i in tok.encode(init_word)[0] if i not in (spec.pad_token_id, spec.eos_token_id,
                                                                  spec.bos_token_id)]
            if len(ids) != 1:
                raise UserError(f"init word {init_word!r} is {len(ids)} tokens for {e.tokenizer} "
                                f"({tok.tokens(init_word)}); pick a word the model knows as one token.")
            table = load_file(str(self.bundle.path(e.token_embeddings)))["weight"]
            out[e.name] = np.asarray(table[ids[0]], dtype=np.float32)
        return out

    def theta_scale(self, units: ThetaUnits) -> np.ndarray:
        """[Σ hidden] float32: per coordinate of the concatenated θ, the unit the optimiser works in (see
        PersonalizeConfig.theta_units): ones, or each encoder's token-table RMS repeated over its coordinates."""
        parts = []
        for e in self.bundle.manifest.text_encoders:
            scale = 1.0
            if units == "table_rms":
                table = load_file(str(self.bundle.path(e.token_embeddings)))["weight"].astype(np.float64)
                scale = float(np.sqrt(np.mean(table ** 2)))
            parts.append(np.full(e.hidden_size, scale, np.float32))
        return np.concatenate(parts)

    def encode_images(self, images_u8: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """VAE-encoder moments of every image and its horizontal flip, raw (unnormalised):
        (means, logvars), each [N, 2, C, h, w] float32 (spec §10.1: computed once, reused every step)."""
        res = self.resolution
        if images_u8.ndim != 4 or images_u8.shape[1:] != (res.height, res.width, 3):
            raise UserError(f"images must be {res.height}x{res.width} RGB for this bundle, got "
                            f"{images_u8.shape[1:]}; load them with ralu_runtime.images.load_rgb(path, size).")
        name = self.vae._encoder_graph.inputs[0].name  # one graph, fixed by the manifest
        means, logvars = [], []
        for img in images_u8:
            pair = []
            for flipped in (img, img[:, ::-1]):
                x = (np.ascontiguousarray(flipped).astype(np.float32) / 127.5 - 1.0).transpose(2, 0, 1)[None]
                params = self.clock.run(self.vae._encoder, ["latent_parameters"], {name: x})[0][0]
                pair.append(np.split(params, 2, axis=0))
            means.append(np.stack([p[0] for p in pair]))
            logvars.append(np.stack([p[1] for p in pair]))
        return np.stack(means).astype(np.float32), np.stack(logvars).astype(np.float32)

    # ------------------------------------------------------------------------------------------ the loop

    def fit(self, images_u8: np.ndarray, token: str, init_word: str, config: PersonalizeConfig, *,
            checkpoint: Path | None = None, resume: bool = False,
            on_step: Callable[[int, float], None] | None = None) -> FitResult:
        """Learn `token` from the images; returns its per-encoder embeddings (see the module docstring)."""
        encoders = self.bundle.manifest.text_encoders
        theta0 = self.init_embeddings(init_word)
        splits = np.cumsum([e.hidden_size for e in encoders])[:-1]
        text = OrtTextEncoders(self.bundle, self.session_config, self.clock,
                               LearnedTokens({token: theta0}))
        means, logvars = self.encode_images(images_u8)
        use_mean = _use_posterior_mean(config.posterior, means, logvars)
        scale = self.theta_scale(config.theta_units)  # the optimiser's θ is θ / scale (exactly θ when absolute)
        state = init_state(np.concatenate([theta0[e.name] for e in encoders]) / scale, config.zo, config.seed)
        meta = {"format": CHECKPOINT_FORMAT, "bundle": self.bundle.bundle_id, "token": token, "init_word": init_word,
                "num_images": int(len(images_u8)), "config": config.to_dict()}
        losses: list[float] = []
        resumed_from = 0
        if resume and checkpoint is not None and (checkpoint / "state.json").is_file():
            state, losses = _load_checkpoint(checkpoint, meta)
            resumed_from = state.step
        res, vae = self.resolution, self.bundle.manifest.vae
        positions = grid_positions(res.grid_height, res.grid_width)
        started, first = time.perf_counter(), state.step
        while state.step < config.steps:
            draw = draw_step(config.seed, state.step + 1, num_images=len(images_u8),
                             latent_shape=means.shape[2:], puts=config.puts, image_pixels=res.height * res.width)
            pair = training_pair(draw, means, logvars, shift_factor=vae.shift_factor,
                                 scaling_factor=vae.scaling_factor, sample_posterior=not use_mean)
            caption = config.captions[int(draw.image_indices[0]) % len(config.captions)].format(token)

            def loss_fn(queries: np.ndarray) -> np.ndarray:
                out = np.empty(len(queries), dtype=np.float64)
                for q, vec in enumerate(queries):
                    parts = dict(zip([e.name for e in encoders], np.split(vec * scale, splits)))
                    cond = text.encode(caption, overrides={k: v[None] for k, v in parts.items()})
                    v = self.denoiser(pair.x_sigma, positions, draw.sigmas.astype(np.float32), cond)
                    out[q] = velocity_mse(v, pair.target)
                return out

            state, info = zo_step(state, loss_fn, config.zo)
            losses.append(info.loss)
            if on_step is not None:
                on_step(state.step, info.loss)
            if checkpoint is not None and (state.step % config.checkpoint_every == 0 or state.step == config.steps):
                _save_checkpoint(checkpoint, state, meta, losses)
        done = state.step - first
        embeds = dict(zip([e.name for e in encoders], np.split(np.asarray(state.theta, np.float32) * scale, splits)))
        return FitResult(token, embeds, losses, (time.perf_counter() - started) / max(1, done), state.step,
                         resumed_from)

    def save(self, result: FitResult, path: Path, init_word: str) -> Path:
        """learned_embeds.safetensors (diffusers layout: clip_l / t5 entries), written atomically."""
        return save_learned_embeds(path, result.token, result.embeddings, self.bundle.manifest,
                                   {"init_word": init_word, "steps": str(result.steps_done),
                                    "bundle": self.bundle.bundle_id})


def _use_posterior_mean(mode: str, means: np.ndarray, logvars: np.ndarray) -> bool:
    if mode != "auto":
        return mode == "mean"
    posterior_std = float(np.exp(0.5 * np.clip(logvars, -30, 20)).mean())
    ratio = posterior_std / max(float(means.std()), 1e-8)
    log.info("VAE posterior std / latent std = %.2f -> %s", ratio,
             "posterior mean" if ratio > WIDE_POSTERIOR_RATIO else "posterior samples")
    return ratio > WIDE_POSTERIOR_RATIO


def _save_checkpoint(folder: Path, state: ZOState, meta: dict, losses: list[float]) -> None:
    """state.safetensors then state.json (the JSON names the step, so a checkpoint is complete exactly when
    its JSON is), each via a temporary name and os.replace."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays, state_meta = state.to_arrays()
    arrays = {**arrays, "losses": np.asarray(losses, dtype=np.float64)}
    tmp = folder / "state.safetensors.tmp"
    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp))
    os.replace(tmp, folder / "state.safetensors")
    tmp_json = folder / "state.json.tmp"
    tmp_json.write_text(json.dumps({**meta, "state": state_meta}, default=str))
    os.replace(tmp_json, folder / "state.json")


def _load_checkpoint(folder: Path, meta: dict) -> tuple[ZOState, list[float]]:
    try:
        saved = json.loads((folder / "state.json").read_text())
        arrays = load_file(str(folder / "state.safetensors"))
    except (OSError, json.JSONDecodeError, Exception) as e:
        raise UserError(f"{folder}: the checkpoint cannot be read ({e.__class__.__name__}); delete it to start "
                        "over.") from None
    expected = json.loads(json.dumps(meta, default=str))
    for key in ("format", "bundle", "token", "init_word", "num_images"):
        if saved.get(key) != expected[key]:
            raise UserError(f"{folder}: the checkpoint was made with a different {key} "
                            f"({saved.get(key)!r}); resume with the same arguments or delete it to start over.")
    for key, value in expected["config"].items():  # more --steps may be asked for; nothing else may change
        if key != "steps" and saved.get("config", {}).get(key) != value:
            raise UserError(f"{folder}: the checkpoint was made with a different {key} setting "
                            f"({saved.get('config', {}).get(key)!r}, now {value!r}); resume with the same "
                            "arguments or delete the checkpoint to start over.")
    losses = [float(x) for x in arrays.pop("losses")]
    return ZOState.from_arrays(arrays, saved["state"]), losses
