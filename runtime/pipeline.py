"""`Pipeline`: text -> image over a bundle, composed from parts (STYLE.md: no god-object): bundle -> ORT
backends -> sigma schedule or RALU preset -> a ralu_edge sampler over the denoiser seam -> VAE decode.

Modes: `baseline` (the source pipeline's Euler schedule with `steps`: FLUX's dynamic shift, SD3's static
one), or `ralu-<N>x` for each preset the bundle carries (`flux-4x` -> `ralu-4x` for the FLUX family,
`sd3-2x` -> `ralu-2x` for SD3). A bundle whose manifest has a `denoiser.guidance_scale` (SD3 always; a FLUX-family
model whose pipeline folder recorded one in sampling.json) runs classifier-free guidance in every mode:
[negative "", prompt] as one batch of 2 per step, at that scale unless told otherwise. Every mode takes a temporal
cache (`cache="teacache:0.3"`, `"taylorseer:1,2"`; ralu_edge.cache) wrapped around the (guided) denoiser; TeaCache
reads its rescale from the manifest's `cache` calibration."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ralu_edge import presets as ralu_presets
from ralu_edge.cache import CacheConfig, CachedDenoiser
from ralu_edge.errors import UserError
from ralu_edge.guidance import ClassifierFreeGuidance, stack_conditionings
from ralu_edge.rng import initial_noise, rng_for
from ralu_edge.sampler import (
    StageInfo, baseline_image_token_steps, image_token_steps, ralu_sample, sample_baseline,
)
from ralu_edge.schedules import flux_baseline_sigmas, sd3_baseline_sigmas
from ralu_edge.tokens import unpack_latents
from ralu_runtime.backends import LearnedTokens, OrtTextEncoders, OrtVae, RunClock, open_denoiser
from ralu_runtime.bundle import Bundle, open_bundle
from ralu_runtime.embeddings import load_learned_embeds
from ralu_runtime.images import latent_image_to_uint8
from ralu_runtime.sessions import SessionConfig


@dataclass
class GenerationStats:
    mode: str
    nfe: int
    image_token_steps: int
    seconds_total: float = 0.0
    seconds_text: float = 0.0
    seconds_denoise: float = 0.0
    seconds_decode: float = 0.0
    seconds_in_sessions_denoise: float = 0.0
    seconds_per_stage: list[float] = field(default_factory=list)
    selected_regions: list[int] = field(default_factory=list)
    cache: str = "none"  # the cache's label (CacheConfig.label); calls_made + calls_skipped = nfe
    calls_made: int = 0
    calls_skipped: int = 0

    @property
    def host_share_denoise(self) -> float:
        """Fraction of the denoising loop spent outside session.run (host bookkeeping)."""
        return 1.0 - self.seconds_in_sessions_denoise / self.seconds_denoise if self.seconds_denoise else 0.0

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["host_share_denoise"] = self.host_share_denoise
        return d


@dataclass(frozen=True)
class GenerationResult:
    image: np.ndarray  # [H, W, 3] uint8
    stats: GenerationStats


class Pipeline:
    """Generation over one bundle. Build with `Pipeline.from_bundle(path)`, call with a prompt."""

    def __init__(self, bundle: Bundle, config: SessionConfig, learned: LearnedTokens | None = None):
        self.bundle = bundle
        self.config = config
        self.loras: tuple = ()  # LoadedLora of load_lora (issue 17)
        self.clock = RunClock()
        started = time.perf_counter()
        self.text = OrtTextEncoders(bundle, config, self.clock, learned)
        self.denoiser = open_denoiser(bundle, config, self.clock)
        self.denoiser.open()  # session creation is load time, not the first denoising step's (issue 15)
        self.vae = OrtVae(bundle, config, self.clock)
        self.vae.open_decoder()
        self.seconds_load = time.perf_counter() - started  # opening every session (from_bundle adds verifying)
        res = bundle.manifest.resolutions[0]
        self.grid = (res.grid_height, res.grid_width)
        self.channels = bundle.manifest.denoiser.token_channels

    @classmethod
    def from_bundle(cls, path: str | Path, *, threads: int = 0, embeddings: str | Path | None = None,
                    verify: bool = True, loras: list = ()) -> "Pipeline":
        """The pipeline of the bundle at `path`; `loras` (LoraRequest each) are merged before any session opens,
        so each session opens once, with its overrides (load_lora later reopens the touched ones)."""
        started = time.perf_counter()
        bundle = open_bundle(path, verify=verify)
        learned = load_learned_embeds(Path(embeddings), bundle.manifest) if embeddings else None
        loaded, overrides = _merged_loras(bundle, loras)
        seconds_open = time.perf_counter() - started
        pipe = cls(bundle, SessionConfig(threads=threads, initializers=overrides), learned)
        pipe.loras = loaded
        pipe.seconds_load += seconds_open
        return pipe

    def load_lora(self, requests: list) -> None:
        """Apply the LoRAs `requests` (ralu_runtime.lora.LoraRequest: path and scale each, several at once) in
        place of any loaded before. Every file is checked against the bundle first; then the merged weights go
        to ONNX Runtime as initializer overrides and only the sessions of graphs they touch reopen (docs/lora.md)."""
        self._use_loras(*_merged_loras(self.bundle, requests))

    def unload_lora(self) -> None:
        """Back to the bundle's own weights: the sessions a LoRA touched reopen without overrides."""
        self._use_loras((), {})

    def _use_loras(self, loaded: tuple, overrides: dict) -> None:
        touched = set(self.config.initializers) | set(overrides)
        self.config = dataclasses.replace(self.config, initializers=overrides)
        self.text.reopen(self.config, touched)
        self.denoiser.reopen(self.config, touched)
        self.loras = loaded

    @property
    def modes(self) -> list[str]:
        """`baseline` plus `ralu-<N>x` for every preset in the bundle."""
        return ["baseline"] + [mode_for_preset(p.name) for p in self.bundle.manifest.presets]

    def check_size(self, height: int | None, width: int | None) -> None:
        """UserError unless (height, width) is the bundle's resolution (None means the bundle's)."""
        res = self.bundle.manifest.resolutions[0]
        if (height or res.height, width or res.width) != (res.height, res.width):
            raise UserError(f"this bundle generates {res.height}x{res.width} images, not {height or res.height}x"
                            f"{width or res.width}; re-export with --height/--width for another size.")

    def check_prompt(self, prompt: str) -> None:
        """UserError for an empty prompt or an angle-bracket token that no loaded embedding defines."""
        if not prompt.strip():
            raise UserError("the prompt is empty; describe the image, e.g. 'a large red circle on the left'.")
        import re

        known = set(self.text.tokenizers[next(iter(self.text.tokenizers))].placeholder_ids)
        for token in re.findall(r"<[^<>\s]+>", prompt):
            if token not in known:
                raise UserError(f"prompt uses {token!r}, which no loaded embedding defines; pass the "
                                "learned_embeds.safetensors that ralu-personalize wrote for it with --embeddings.")

    def preset_for_mode(self, mode: str) -> ralu_presets.RaluPreset:
        for entry in self.bundle.manifest.presets:
            if mode_for_preset(entry.name) == mode:
                return ralu_presets.RaluPreset.from_dict(entry.preset)
        raise UserError(f"mode {mode!r} is not in this bundle; choose one of: {', '.join(self.modes)}.")

    def __call__(self, prompt: str, *, mode: str = "baseline", steps: int = 28, seed: int = 0,
                 edge_proxy: str = "latent_grad", on_step=None, guidance_scale: float | None = None,
                 cache: CacheConfig | str | None = None) -> GenerationResult:
        """One image. guidance_scale: classifier-free guidance scale for bundles whose manifest records one
        (None = the manifest's `denoiser.guidance_scale`); a bundle without one rejects it. cache: a CacheConfig
        or its `--cache` text (None: no cache)."""
        cache_config = self.check_cache(cache)
        if mode not in self.modes:
            raise UserError(f"mode {mode!r} is not in this bundle; choose one of: {', '.join(self.modes)}.")
        self.check_prompt(prompt)
        if mode == "baseline" and steps < 1:
            raise UserError(f"--steps must be at least 1, got {steps}.")
        scale = self.check_guidance_scale(guidance_scale)
        started = time.perf_counter()
        cond = self.text.encode(prompt)
        denoiser = self.denoiser
        if scale is not None:  # diffusers SD3 and FluxPipeline(true_cfg_scale): negative "" first, then the prompt
            cond = stack_conditionings(self.text.encode(""), cond)
            denoiser = ClassifierFreeGuidance(self.denoiser, scale)
        calibration = self.bundle.manifest.cache  # outside guidance: a skipped step saves both CFG rows
        denoiser = CachedDenoiser(denoiser, cache_config, calibration.coefficients if calibration else ())
        t_text = time.perf_counter()
        session_before = self.clock.session_seconds
        gh, gw = self.grid
        noise = initial_noise(seed, gh * gw, self.channels)
        stats, tokens = self._denoise(denoiser, noise, cond, mode, steps, seed, edge_proxy, on_step)
        t_denoise = time.perf_counter()
        stats.seconds_in_sessions_denoise = self.clock.session_seconds - session_before
        cache_stats = denoiser.stats()
        stats.cache, stats.calls_made, stats.calls_skipped = (cache_config.label, cache_stats.calls_made,
                                                              cache_stats.calls_skipped)
        image = latent_image_to_uint8(self.vae.decode(unpack_latents(tokens, gh, gw)))[0]
        done = time.perf_counter()
        stats.seconds_text, stats.seconds_denoise = t_text - started, t_denoise - t_text
        stats.seconds_decode, stats.seconds_total = done - t_denoise, done - started
        return GenerationResult(image, stats)

    def check_cache(self, cache: CacheConfig | str | None) -> CacheConfig:
        """The cache a call will use; UserError for malformed text, or TeaCache on a bundle with no calibration."""
        config = cache if isinstance(cache, CacheConfig) else CacheConfig.parse(cache or "none")
        if config.method == "teacache" and self.bundle.manifest.cache is None:
            raise UserError("this bundle's manifest has no TeaCache calibration (it was exported before caching "
                            "existed, or for a target that is not calibrated); re-export it with ralu-export, or "
                            "use --cache taylorseer, which needs none.")
        return config

    def check_guidance_scale(self, requested: float | None) -> float | None:
        """The CFG scale a call will use: the request, else the manifest's `denoiser.guidance_scale` (None: no
        CFG). A bundle whose manifest records no scale was not made for CFG, so a request is refused."""
        default = self.bundle.manifest.denoiser.guidance_scale
        if requested is None:
            return default
        if default is None:
            raise UserError("this bundle's manifest records no classifier-free guidance scale, so its model is "
                            "not sampled with CFG; leave the guidance scale unset, or record one in the model "
                            "folder's sampling.json and export again.")
        if not requested >= 1.0:
            raise UserError(f"guidance scale {requested} is below 1; use e.g. {default}.")
        return float(requested)

    def baseline_sigmas(self, steps: int) -> np.ndarray:
        """The plain sampler's [steps + 1] sigmas, as the source pipeline's scheduler builds them."""
        spec = self.bundle.manifest.denoiser
        if spec.baseline_schedule == "sd3_static":
            return sd3_baseline_sigmas(steps, spec.baseline_shift)
        gh, gw = self.grid
        return flux_baseline_sigmas(steps, gh * gw)

    def _denoise(self, denoiser, noise, cond, mode, steps, seed, edge_proxy, on_step):
        gh, gw = self.grid
        if mode == "baseline":
            sigmas = self.baseline_sigmas(steps)
            t0 = time.perf_counter()
            tokens = sample_baseline(denoiser, noise, gh, gw, sigmas, cond, on_step=on_step)
            stats = GenerationStats(mode, steps, baseline_image_token_steps(steps, gh, gw),
                                    seconds_per_stage=[time.perf_counter() - t0])
            return stats, tokens
        preset = self.preset_for_mode(mode)
        stages: list[StageInfo] = []
        decode = (lambda z: self.vae.decode(z)) if edge_proxy == "canny" else None
        result = ralu_sample(denoiser, noise, gh, gw, preset, cond, rng=rng_for(seed, "ralu/select"),
                             latent_channels=self.channels // 4, edge_proxy=edge_proxy, decode=decode,
                             on_step=on_step, on_stage=stages.append)
        stats = GenerationStats(mode, preset.nfe, image_token_steps(preset, gh, gw),
                                seconds_per_stage=[s.seconds for s in stages],
                                selected_regions=[int(i) for i in np.asarray(result.selected).ravel()])
        return stats, result.tokens


def _merged_loras(bundle: Bundle, requests: list) -> tuple[tuple, dict]:
    """The loaded LoRAs of `requests` (each file checked against the bundle) and their merged initializer
    overrides ({graph: {initializer: array}}); nothing for no request."""
    if not requests:
        return (), {}
    from ralu_runtime.lora import load_lora, lora_overrides

    loaded = tuple(load_lora(bundle, request) for request in requests)
    return loaded, lora_overrides(bundle, list(loaded))


def mode_for_preset(preset_name: str) -> str:
    """`flux-4x` -> `ralu-4x`; presets with a suffix keep it (`sd3-2x-paper` -> `ralu-2x-paper`)."""
    return "ralu-" + preset_name.split("-", 1)[1]
