"""What one personalization step feeds the denoiser, for flow-matching DiTs (spec/ZO_PERSONALIZATION.md §7,
§10.3, §11.1–11.2): Partial Uniform Timestep Sampling (PUTS) as a high-noise σ range, the step's training
sample (image, flip) from per-epoch permutations, its noise draws, the rectified-flow noising with the
velocity target (`training_pair`: the whole composition, written once) and the loss. Shared by the
zeroth-order trainer (ralu_runtime.personalize), the first-order baseline (ralu_export.textual_inversion) and
the conformance vectors, so all of them see the same data.

Every draw comes from `rng_for(seed, purpose, step)` with one purpose per quantity (STYLE.md "Randomness").
Deviation: spec §10.3 draws everything from one generator per step in a fixed order; separate purposes give the
same guarantees (a step's draws depend on (seed, step) only, so resuming needs no RNG state) and let the
first-order baseline, which draws a batch per step, share the streams. Depends on numpy only."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from ralu_edge.errors import UserError
from ralu_edge.rng import rng_for
from ralu_edge.tokens import pack_latents

SigmaSampling = Literal["uniform", "ddpm_equivalent"]
SIGMA_SAMPLINGS: tuple[str, ...] = ("uniform", "ddpm_equivalent")
DDPM_TRAIN_TIMESTEPS = 1000
REFERENCE_PIXELS = 512 * 512  # SD1.5's training size, the reference point of the resolution shift (§11.2)

PURPOSE_EPOCH = "zo/epoch-permutation"
PURPOSE_FLIP = "zo/flip"
PURPOSE_SIGMA = "zo/sigma"
PURPOSE_NOISE = "zo/noise"
PURPOSE_POSTERIOR = "zo/vae-posterior"


# ---------------------------------------------------------------------------------------------- PUTS (§7, §11.2)

def ddpm_alphas_cumprod(num_train_timesteps: int = DDPM_TRAIN_TIMESTEPS, beta_start: float = 0.00085,
                        beta_end: float = 0.012) -> np.ndarray:
    """ᾱ_t of SD1.5's `scaled_linear` DDPM schedule: [num_train_timesteps] float32 (spec §2, §10.1):
    β = linspace(√β_start, √β_end, T)², ᾱ = cumprod(1 − β), in float32 as diffusers does."""
    betas = np.linspace(math.sqrt(beta_start), math.sqrt(beta_end), num_train_timesteps).astype(np.float32) ** 2
    return np.cumprod(np.float32(1.0) - betas, dtype=np.float32)


def sigmas_for_ddpm_timesteps(timesteps: np.ndarray, alphas_cumprod: np.ndarray | None = None) -> np.ndarray:
    """Rectified-flow σ with the same signal-to-noise ratio as DDPM timestep t: σ = 1/(1 + √(ᾱ_t/(1 − ᾱ_t))),
    float64, same shape as `timesteps` (spec §11.2 step 1). Non-integer t interpolates ᾱ linearly.

    SD1.5: t = 500 → 0.618, t = 900 → 0.893, t = 700 → 0.769."""
    alphas = ddpm_alphas_cumprod() if alphas_cumprod is None else np.asarray(alphas_cumprod)
    alphas = np.asarray(alphas, dtype=np.float64)
    a = np.interp(np.asarray(timesteps, dtype=np.float64), np.arange(len(alphas)), alphas)
    return 1.0 / (1.0 + np.sqrt(a / (1.0 - a)))


def shift_sigmas(sigmas: np.ndarray, shift: float) -> np.ndarray:
    """Resolution-shifted noise levels σ′ = h·σ/(1 + (h − 1)·σ): float64, same shape (spec §11.2 step 2;
    the same map as diffusers' FlowMatchEulerDiscreteScheduler shift)."""
    sigmas = np.asarray(sigmas, dtype=np.float64)
    return shift * sigmas / (1.0 + (shift - 1.0) * sigmas)


def default_sigma_shift(image_pixels: int) -> float:
    """h = √(pixels / 512²), the resolution shift relative to SD1.5's training size (spec §11.2)."""
    return math.sqrt(image_pixels / REFERENCE_PIXELS)


@dataclass(frozen=True)
class PutsConfig:
    """The PUTS σ range of a flow-matching model (spec §7, §11.2, §12).

    sigma_min / sigma_max: the range [sigma_min, sigma_max) directly; they override everything (both or neither).
    Otherwise the range is the DDPM range t_range = [T_L, T_U) mapped by SNR matching, then shifted by
    sigma_shift (None: √(pixels / 512²) of the training images). sampling: "uniform" (σ uniform in the range,
    the default) or "ddpm_equivalent" (continuous t ~ U[T_L, T_U) mapped, which keeps PUTS's density)."""

    t_range: tuple[float, float] = (500.0, 900.0)
    sigma_shift: float | None = None
    sigma_min: float | None = None
    sigma_max: float | None = None
    sampling: SigmaSampling = "uniform"

    def __post_init__(self) -> None:
        object.__setattr__(self, "t_range", tuple(float(t) for t in self.t_range))
        low, high = self.t_range if len(self.t_range) == 2 else (math.nan, math.nan)
        if not 0.0 <= low < high <= DDPM_TRAIN_TIMESTEPS:
            raise UserError(f"PUTS t_range {list(self.t_range)} must be [T_L, T_U) with 0 ≤ T_L < T_U ≤ "
                            f"{DDPM_TRAIN_TIMESTEPS}; the spec's default is [500, 900)")
        if self.sampling not in SIGMA_SAMPLINGS:
            raise UserError(f"unknown sigma sampling {self.sampling!r}; choose one of {', '.join(SIGMA_SAMPLINGS)}")
        if self.sigma_shift is not None and not (math.isfinite(self.sigma_shift) and self.sigma_shift > 0):
            raise UserError(f"sigma_shift = {self.sigma_shift} must be a positive number; leave it unset for "
                            "√(pixels / 512²)")
        if (self.sigma_min is None) != (self.sigma_max is None):
            raise UserError("give both sigma_min and sigma_max, or neither (then the range comes from t_range)")
        if self.sigma_min is not None:
            if not 0.0 <= self.sigma_min < self.sigma_max <= 1.0:
                raise UserError(f"sigma range [{self.sigma_min}, {self.sigma_max}) must satisfy "
                                "0 ≤ sigma_min < sigma_max ≤ 1, e.g. [0.618, 0.893)")
            if self.sampling != "uniform":
                raise UserError("sigma_min/sigma_max give the σ range directly and are sampled uniformly; drop "
                                "them to use sampling='ddpm_equivalent' over t_range")

    def shift_for(self, image_pixels: int) -> float:
        """The resolution shift h used for training images of `image_pixels` pixels."""
        return self.sigma_shift if self.sigma_shift is not None else default_sigma_shift(image_pixels)

    def sigma_range(self, image_pixels: int) -> tuple[float, float]:
        """[σ_low, σ_high) for training images of `image_pixels` pixels (spec §11.2): at 512², [0.618, 0.893);
        at 1024², [0.764, 0.944)."""
        if self.sigma_min is not None:
            return float(self.sigma_min), float(self.sigma_max)
        low, high = shift_sigmas(sigmas_for_ddpm_timesteps(np.array(self.t_range)), self.shift_for(image_pixels))
        return float(low), float(high)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["t_range"] = list(self.t_range)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PutsConfig":
        return cls(**{**data, "t_range": tuple(data.get("t_range", (500.0, 900.0)))})


NO_PUTS = PutsConfig(sigma_min=0.0, sigma_max=1.0)
"""σ ~ U[0, 1): the whole flow-matching range, the "without PUTS" ablation (baseline TI's U{0…999}, §7)."""


def sample_sigmas(rng: np.random.Generator, count: int, puts: PutsConfig, image_pixels: int) -> np.ndarray:
    """PUTS noise levels: [count] float64 in puts.sigma_range(image_pixels) (spec §7, §11.2)."""
    if puts.sampling == "ddpm_equivalent":
        timesteps = rng.uniform(puts.t_range[0], puts.t_range[1], size=count)
        return shift_sigmas(sigmas_for_ddpm_timesteps(timesteps), puts.shift_for(image_pixels))
    low, high = puts.sigma_range(image_pixels)
    return rng.uniform(low, high, size=count)


# ---------------------------------------------------------------------------------------------- step draws (§10.3)

def sample_indices(seed: int, step: int, num_images: int, batch_size: int = 1) -> np.ndarray:
    """The images a 1-based step trains on: [batch_size] int64 (spec §10.3 (1)).

    Steps walk through one permutation of the images per epoch, each seeded by (seed, epoch): sample j of step s
    is position p = (s − 1)·batch_size + j of the concatenated permutations, so every epoch shows every image
    once, as the reference's shuffling DataLoader does."""
    if step < 1 or num_images < 1 or batch_size < 1:
        raise ValueError(f"need step ≥ 1, num_images ≥ 1, batch_size ≥ 1; got {step}, {num_images}, {batch_size}")
    positions = (step - 1) * batch_size + np.arange(batch_size)
    epochs, offsets = np.divmod(positions, num_images)
    permutations = {int(e): rng_for(seed, PURPOSE_EPOCH, int(e)).permutation(num_images) for e in np.unique(epochs)}
    return np.array([permutations[int(e)][o] for e, o in zip(epochs, offsets)], dtype=np.int64)


@dataclass(frozen=True)
class StepDraw:
    """Everything random in one training step except the ZO directions (spec §10.3 (1)–(6)).

    image_indices: [B] int64; flips: [B] bool (horizontal flip, p = 0.5, §2); sigmas: [B] float64 (PUTS);
    noise: [B, *latent_shape] float32 ε of the flow; posterior_noise: [B, *latent_shape] float32, the VAE
    posterior sample's noise (z = mean + exp(½·logvar)·n, §10.1)."""

    image_indices: np.ndarray
    flips: np.ndarray
    sigmas: np.ndarray
    noise: np.ndarray
    posterior_noise: np.ndarray


def draw_step(seed: int, step: int, *, num_images: int, latent_shape: tuple[int, ...], puts: PutsConfig,
              image_pixels: int, batch_size: int = 1) -> StepDraw:
    """The draws of 1-based step `step` (spec §10.3): a function of (seed, step) only, so a resumed run repeats
    them exactly. latent_shape: one latent's unpacked shape [C, h, w] (pack both noises the same way as x₀)."""
    shape = (batch_size, *latent_shape)
    return StepDraw(
        image_indices=sample_indices(seed, step, num_images, batch_size),
        flips=rng_for(seed, PURPOSE_FLIP, step).random(batch_size) < 0.5,
        sigmas=sample_sigmas(rng_for(seed, PURPOSE_SIGMA, step), batch_size, puts, image_pixels),
        noise=rng_for(seed, PURPOSE_NOISE, step).standard_normal(shape, dtype=np.float32),
        posterior_noise=rng_for(seed, PURPOSE_POSTERIOR, step).standard_normal(shape, dtype=np.float32),
    )


# ---------------------------------------------------------------------------------------------- noising (§11.1)

def posterior_latents(means: np.ndarray, logvars: np.ndarray, noise: np.ndarray | None, shift_factor: float,
                      scaling_factor: float) -> np.ndarray:
    """Normalised VAE latents x₀ = (mean + exp(½·logvar)·n − shift_factor)·scaling_factor: float32, same shape
    (spec §10.1: a fresh posterior sample per step from cached moments; §11.1: FLUX's latent normalisation).
    logvar is clamped to [−30, 20] as diffusers' DiagonalGaussianDistribution does.

    noise None uses the posterior mean: for a model trained on means whose VAE posterior is wide (the built-in
    `shapes` model: std ≈ 0.45 against a latent std ≈ 0.67), a sample puts x₀ off the model's training
    distribution; SD's and FLUX's VAEs have posteriors narrow enough for the spec's per-step sample."""
    z = np.asarray(means, dtype=np.float32)
    if noise is not None:
        stds = np.exp(0.5 * np.clip(np.asarray(logvars, dtype=np.float32), -30.0, 20.0))
        z = z + stds * np.asarray(noise, dtype=np.float32)
    return ((z - np.float32(shift_factor)) * np.float32(scaling_factor)).astype(np.float32)


def flow_matching_pair(x0: np.ndarray, noise: np.ndarray, sigmas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(x_σ, target): the denoiser input x_σ = (1 − σ)·x₀ + σ·ε and the velocity target ε − x₀, float32 [B, ...]
    each (spec §11.1, rectified flow; the loss is mean((v̂ − target)²) with uniform weighting).

    x0, noise: [B, ...] (packed tokens or unpacked latents alike); sigmas: [B]."""
    x0 = np.asarray(x0, dtype=np.float32)
    noise = np.asarray(noise, dtype=np.float32)
    s = np.asarray(sigmas, dtype=np.float32).reshape((-1,) + (1,) * (x0.ndim - 1))
    return ((1 - s) * x0 + s * noise).astype(np.float32), (noise - x0).astype(np.float32)


@dataclass(frozen=True)
class TrainingPair:
    """One step's denoiser input and target, as packed tokens [B, L, 4C] float32 each (spec §11.1): x0 the
    normalised clean latents, x_sigma = (1 − σ)·x₀ + σ·ε what the denoiser sees at σ, target = ε − x₀."""

    x0: np.ndarray
    x_sigma: np.ndarray
    target: np.ndarray


def training_pair(draw: StepDraw, means: np.ndarray, logvars: np.ndarray, *, shift_factor: float,
                  scaling_factor: float, sample_posterior: bool = True) -> TrainingPair:
    """The training pair of a step's draw (spec §10.1, §10.3, §11.1): for each sample b, the cached VAE moments
    of image draw.image_indices[b], flipped when draw.flips[b]; x₀ from them (`posterior_latents`, a posterior
    sample with draw.posterior_noise, or the mean when sample_posterior is False); then x₀ and draw.noise packed
    into tokens and noised to draw.sigmas (`flow_matching_pair`).

    means, logvars: [num_images, 2 (unflipped, flipped), C, h, w] float32, raw (before shift and scale)."""
    items = (draw.image_indices, draw.flips.astype(np.int64))
    x0 = pack_latents(posterior_latents(means[items], logvars[items],
                                        draw.posterior_noise if sample_posterior else None, shift_factor,
                                        scaling_factor))
    x_sigma, target = flow_matching_pair(x0, pack_latents(draw.noise), draw.sigmas)
    return TrainingPair(x0, x_sigma, target)


def velocity_mse(velocity: np.ndarray, target: np.ndarray) -> float:
    """mean((v̂ − target)²) accumulated in float64: the training loss (spec Algorithm Z1 LOSS, §11.1)."""
    difference = np.asarray(velocity, np.float64) - np.asarray(target, np.float64)
    return float(np.mean(difference * difference))
