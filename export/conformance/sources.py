"""What a vector folder records: the sampling runs (`RunSpec`, `DEFAULT_RUNS`), the tokenizer prompts, the
personalization case (`ZoCase`) and everything `write_vectors` needs to produce them (`VectorSources`: any
seam denoiser, the conditioning and noise for a run, the tokenizers, the personalization model). numpy,
ralu_edge and ralu_runtime.tokenization only."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ralu_edge.seam import Conditioning, Denoiser
from ralu_edge.zo import PutsConfig, StepDraw, TrainingPair, ZOConfig, draw_step, training_pair
from ralu_runtime.tokenization import TokenizerConfig

DEFAULT_PROMPTS = (
    "a small red circle in the top left",
    "Two BLUE squares   and a green triangle!",
    "a yellow star at the bottom right, on a checkered background",
    "it's a grey hexagon; 3 dotted stripes (light)",
    "café naïve — unknown 日本 ✓ chars",
    "",
    "   leading and trailing spaces   ",
    "a <shape-token> next to a purple diamond",
    "a large red <shape-token> in the centre",
    "a large red circle in the centre",
    "<shape-token>, <shape-token>s and a-<shape-token>-like circle",
    "a very long prompt " + "with many repeated words " * 8,
    "A <SHAPE-TOKEN>  beside\ta\nsquare",
    "special </s> and <|endoftext|> strings, <pad> too",
    "ΣΑΣ İstanbul Ⅻ ﬁne",
)
DEFAULT_ADDED_TOKENS = ("<shape-token>",)


@dataclass(frozen=True)
class RunSpec:
    """One recorded sampling run: a RALU preset name, or "baseline" with `baseline_steps` FLUX steps;
    guidance_scale: classifier-free guidance with the negative prompt "" (None: none)."""

    name: str
    mode: str
    seed: int
    prompt: str
    baseline_steps: int = 4
    guidance_scale: float | None = None


NEGATIVE_PROMPT = ""  # the negative prompt of guided runs, as the runtime and the Kotlin core encode it

DEFAULT_RUNS = (
    RunSpec("flux-4x-seed0", "flux-4x", 0, "a small red circle in the top left"),
    RunSpec("flux-7x-seed1", "flux-7x", 1, "a blue square at the bottom right"),
    RunSpec("baseline4-seed2", "baseline", 2, "a green triangle in the centre", baseline_steps=4),
    RunSpec("flux-7x-cfg-seed3", "flux-7x", 3, "a large yellow star on the left", guidance_scale=3.0),
)

QueryVelocity = Callable[[np.ndarray, np.ndarray, float], np.ndarray]
"""query_velocity(theta [D] float32, x_sigma [1, L, C] float32, sigma) -> velocity [1, L, C]: text-encode the
caption with θ injected at the placeholder (split across encoders by the caller), then run the denoiser."""


@dataclass(frozen=True)
class ZoCase:
    """A short personalization run to record (spec/ZO_PERSONALIZATION.md Algorithm Z1 on a flow model, §11).

    moments: [num_images, 2 (flip), 2·C, h, w] float32 cached VAE posterior (mean ‖ logvar) per image and flip;
    theta0: [D] float32 initializer rows (concatenated across encoders); image_pixels: training image size."""

    config: ZOConfig
    puts: PutsConfig
    seed: int
    steps: int
    moments: np.ndarray
    theta0: np.ndarray
    shift_factor: float
    scaling_factor: float
    image_pixels: int
    notes: dict[str, Any] = field(default_factory=dict)

    def training_step(self, step: int) -> tuple[StepDraw, TrainingPair]:
        """The draws of 1-based step `step` and their training pair (ralu_edge.zo.training_pair, a posterior
        sample: spec §10.1, §10.3, §11.1)."""
        channels = self.moments.shape[2] // 2
        draw = draw_step(self.seed, step, num_images=self.moments.shape[0],
                         latent_shape=(channels, *self.moments.shape[3:]), puts=self.puts,
                         image_pixels=self.image_pixels)
        return draw, training_pair(draw, self.moments[:, :, :channels], self.moments[:, :, channels:],
                                   shift_factor=self.shift_factor, scaling_factor=self.scaling_factor)


@dataclass(frozen=True)
class VectorSources:
    """What `write_vectors` runs: a seam denoiser, the conditioning for each run's prompt, the packed initial
    noise for a seed ([1, M, C] float32), the tokenizers (name -> (tokenizer.json, kind, the manifest's
    TokenizerConfig)), an optional personalization case with its query_velocity, and provenance (which
    denoiser, which model) for the index. Anything that implements the seam works: the torch reference, an ORT
    backend, a stub."""

    denoiser: Denoiser
    cond_for: Callable[[str], Conditioning]
    noise_for: Callable[[int], np.ndarray]
    grid: tuple[int, int]
    latent_channels: int
    tokenizer_files: dict[str, tuple[Path, str, TokenizerConfig]]
    provenance: dict[str, Any]
    runs: Sequence[RunSpec] = DEFAULT_RUNS
    prompts: Sequence[str] = DEFAULT_PROMPTS
    added_tokens: Sequence[str] = DEFAULT_ADDED_TOKENS
    zo_case: ZoCase | None = None
    query_velocity: QueryVelocity | None = None
    extra_files: Callable[[Path], dict[str, Any]] | None = None
