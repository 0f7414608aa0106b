"""The torch reference backend: diffusers' FluxTransformer2DModel (and SD3Transformer2DModel) behind the denoiser
seam (DESIGN.md "The one seam"), plus the pipeline-side helpers a sampler needs around it (text conditioning, the initial noise FluxPipeline
would draw for a seed, VAE decoding). Works for any diffusers FLUX pipeline, the built-in `shapes` model included.
Every other backend is checked against this one. Lives in ralu_export: it imports torch and diffusers."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ralu_edge.feeds import FLUX_DEFAULT_GUIDANCE, FeedSpec, graph_feeds, position_feeds, velocity_from_outputs
from ralu_edge.guidance import ClassifierFreeGuidance, stack_conditionings
from ralu_edge.sd3 import SincosGrid
from ralu_edge.seam import Conditioning, Denoiser
from ralu_edge.tokens import pack_latents, unpack_latents
from ralu_export.models import RecordedSampling


class TorchFluxDenoiser:
    """The seam `velocity[B, L, C] = denoiser(tokens[B, L, C], positions[L, 3], sigmas[B], cond)` over a diffusers
    FluxTransformer2DModel, numpy in and out (float32 velocity). Any batch B runs as one call, so classifier-free
    guidance's [negative, prompt] batch needs nothing special (see `denoiser_as_recorded`).

    Everything but the module call is `ralu_edge.feeds`, as for the ORT and ExecuTorch backends: σ units (the
    transformer takes σ and multiplies it, and the guidance, by 1000 itself), the guidance (the conditioning's,
    else FLUX_DEFAULT_GUIDANCE), the velocity layout. The one difference is positions: the module takes the
    feeds of optimum's transformer graph, float `txt_ids`/`img_ids` (`FeedSpec.positions = "ids"`), not the
    exported core's RoPE tables, because FluxTransformer2DModel.forward builds its RoPE from ids inside
    (FluxPosEmbed, which `ralu_edge.rope` mirrors) and has no argument to take tables; a reference that fed
    our own tables would no longer check them. Float ids carry RALU's fractional stage-2 positions (spec/RALU.md
    §5) unrounded. The transformer is used as given: its parameters must already be in `dtype` on the device it
    should run on."""

    def __init__(self, transformer: torch.nn.Module, dtype: torch.dtype = torch.float32):
        param_dtype = next(transformer.parameters()).dtype
        if param_dtype != dtype:
            raise ValueError(f"the transformer's parameters are {param_dtype}, not {dtype}; "
                             f"call transformer.to({dtype}) first or pass dtype={param_dtype}")
        self.transformer = transformer
        self.dtype = dtype
        self.device = next(transformer.parameters()).device
        self.guidance_embeds = bool(getattr(transformer.config, "guidance_embeds", False))
        self.feeds = FeedSpec(positions="ids", timestep="sigma", guidance=self.guidance_embeds)

    def _tensor(self, name: str, array: np.ndarray) -> torch.Tensor:
        dtype = self.dtype if name in _MODEL_DTYPE_FEEDS else torch.float32
        return torch.from_numpy(array).to(device=self.device, dtype=dtype)

    @torch.inference_mode()
    def __call__(self, tokens: np.ndarray, positions: np.ndarray, sigmas: np.ndarray, cond: Conditioning) -> np.ndarray:
        if positions.shape != (tokens.shape[1], 3) or sigmas.shape != (tokens.shape[0],):
            raise ValueError(f"seam shapes disagree: tokens {tokens.shape}, positions {positions.shape} "
                             f"(expected [L, 3]), sigmas {sigmas.shape} (expected [B])")
        (feeds,) = graph_feeds(self.feeds, tokens, sigmas, cond,
                               position_feeds(self.feeds, positions, cond.positions_for_text()))
        velocity = self.transformer(**{name: self._tensor(name, value) for name, value in feeds.items()},
                                    return_dict=False)[0]
        return velocity_from_outputs(self.feeds, [velocity.float().cpu().numpy()])


_MODEL_DTYPE_FEEDS = ("hidden_states", "encoder_hidden_states", "pooled_projections")
"""Feeds a FLUX module takes in its parameters' dtype; timestep, guidance and ids stay float32 (diffusers)."""


def encode_prompt(pipe, prompts: list[str], max_sequence_length: int = 32,
                  guidance_scale: float = FLUX_DEFAULT_GUIDANCE) -> Conditioning:
    """Text conditioning of a batch of prompts through the pipeline's own `encode_prompt` (CLIP pooled + T5).

    Returns Conditioning with text_states [B, T, D] float32 (T = max_sequence_length; the built-in model needs
    32), pooled [B, D_pooled] float32, text_positions [T, 3] float64 (FLUX: zeros) and, only for a
    guidance-distilled transformer, guidance [B] float32 filled with guidance_scale."""
    with torch.inference_mode():
        states, pooled, text_ids = pipe.encode_prompt(prompt=list(prompts), prompt_2=None,
                                                      max_sequence_length=max_sequence_length)
    guidance = None
    if getattr(pipe.transformer.config, "guidance_embeds", False):
        guidance = np.full(len(prompts), guidance_scale, dtype=np.float32)
    return Conditioning(
        text_states=states.float().cpu().numpy(),
        pooled=pooled.float().cpu().numpy(),
        guidance=guidance,
        text_positions=text_ids.double().cpu().numpy(),
    )


def encode_prompt_cfg(pipe, prompt: str, max_sequence_length: int = 32, negative_prompt: str = "",
                      guidance_scale: float = FLUX_DEFAULT_GUIDANCE) -> Conditioning:
    """Classifier-free guidance conditioning of one prompt for a FLUX-family pipeline: batch 2, the negative
    prompt's row first (text_states [2, T, D], pooled [2, D_pooled], guidance [2] for a guidance-distilled
    transformer), each prompt encoded on its own as FluxPipeline does with `true_cfg_scale`. Wrap the
    denoiser with ralu_edge.guidance.ClassifierFreeGuidance to use it."""
    return stack_conditionings(encode_prompt(pipe, [negative_prompt], max_sequence_length, guidance_scale),
                               encode_prompt(pipe, [prompt], max_sequence_length, guidance_scale))


def conditioning_as_recorded(pipe, prompt: str, max_sequence_length: int, sampling: RecordedSampling) -> Conditioning:
    """The conditioning a model's recorded sampling settings call for (ralu_export.models.recorded_sampling):
    the CFG batch of `encode_prompt_cfg` when it records a true_cfg_scale, else `encode_prompt` of the prompt."""
    if sampling.guided:
        return encode_prompt_cfg(pipe, prompt, max_sequence_length, sampling.negative_prompt)
    return encode_prompt(pipe, [prompt], max_sequence_length)


def denoiser_as_recorded(denoiser: Denoiser, sampling: RecordedSampling) -> Denoiser:
    """`denoiser` with classifier-free guidance at the recorded true_cfg_scale (it then takes the batch-2
    conditioning of `conditioning_as_recorded`), or unchanged when the model records none."""
    return ClassifierFreeGuidance(denoiser, sampling.true_cfg_scale) if sampling.guided else denoiser


def packed_grid(pipe, height: int, width: int) -> tuple[int, int]:
    """(grid_h, grid_w) of the packed token grid FluxPipeline uses for an image of height × width pixels:
    H // (2·vae_scale_factor) each (16 × 16 for the built-in model at 128 px)."""
    factor = 2 * pipe.vae_scale_factor
    return int(height) // factor, int(width) // factor


def initial_noise(pipe, seed: int, height: int, width: int) -> np.ndarray:
    """The packed initial noise FluxPipeline draws for `generator=torch.Generator().manual_seed(seed)`:
    [1, grid_h·grid_w, 4·C_latent] float32 (FluxPipeline.prepare_latents: randn of (1, C, 2·grid_h, 2·grid_w) on
    the CPU in float32, then `_pack_latents`)."""
    grid_h, grid_w = packed_grid(pipe, height, width)
    channels = pipe.transformer.config.in_channels // 4
    generator = torch.Generator().manual_seed(int(seed))
    latents = torch.randn((1, channels, 2 * grid_h, 2 * grid_w), generator=generator, dtype=torch.float32)
    return pack_latents(latents.numpy())


@torch.inference_mode()
def _decode_latents(pipe, latents: np.ndarray) -> torch.Tensor:
    """RGB [B, 3, H, W] float32 tensor, roughly in [−1, 1], from normalised latents [B, C, h, w] (the sampler's
    convention): undo the VAE normalisation (z / scaling_factor + shift_factor, as FluxPipeline) and decode."""
    vae = pipe.vae
    z = torch.from_numpy(np.ascontiguousarray(latents, dtype=np.float32)).to(device=vae.device, dtype=vae.dtype)
    z = z / vae.config.scaling_factor + vae.config.shift_factor
    return vae.decode(z, return_dict=False)[0].float().cpu()


def decode_tokens(pipe, tokens: np.ndarray, grid_h: int, grid_w: int) -> np.ndarray:
    """uint8 images [B, H, W, 3] from raster-ordered packed tokens [B, grid_h·grid_w, C], as FluxPipeline's
    output_type="np" rounded to 8 bits (ralu_export.eval.generate does the same)."""
    images = _decode_latents(pipe, unpack_latents(np.asarray(tokens, dtype=np.float32), grid_h, grid_w))
    images = (images / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    return np.clip(np.round(images * 255.0), 0, 255).astype(np.uint8)


def vae_decode_callable(pipe) -> Callable[[np.ndarray], np.ndarray]:
    """The `decode` of RALU's canny edge proxy (ralu_edge.edges.canny_scores): normalised latents
    [B, C, h, w] float32 -> RGB [B, 3, f·h, f·w] float32 clipped to [−1, 1] (f = pipe.vae_scale_factor)."""

    def decode(latents: np.ndarray) -> np.ndarray:
        return _decode_latents(pipe, latents).clamp(-1, 1).numpy()

    return decode


class TorchSd3Denoiser:
    """The seam over a diffusers SD3Transformer2DModel (spec/RALU.md §9.7), numpy in and out: the reference
    the ORT and ExecuTorch SD3 backends are checked against. It runs the exported core's torch module
    (ralu_export.graph_modules.Sd3Denoiser: patch conv as a Linear, per-token position embeddings as an
    input) on exactly the graph's feeds from `ralu_edge.feeds` (sin-cos `pos_embed` at the seam's positions,
    σ·1000 as the timestep) and permutes its (dy, dx, c) output back to (c, dy, dx) there too. On a full grid
    this is SD3Transformer2DModel.forward (tests/test_sd3_core.py). Any batch runs as one call; CFG's batch
    2B comes from wrapping with ralu_edge.guidance.ClassifierFreeGuidance."""

    def __init__(self, transformer: torch.nn.Module, grid_h: int, grid_w: int):
        from ralu_export.graph_modules import Sd3Denoiser

        config = transformer.config
        self.core = Sd3Denoiser(transformer).eval()
        self.grid = SincosGrid(transformer.inner_dim, int(config.pos_embed_max_size),
                               int(config.sample_size) // int(config.patch_size))
        self.feeds = FeedSpec(positions="sincos", timestep="sigma_x1000", output_order="dy_dx_c",
                              sincos=self.grid, grid_hw=(grid_h, grid_w), latent_channels=int(config.out_channels))

    @torch.inference_mode()
    def __call__(self, tokens: np.ndarray, positions: np.ndarray, sigmas: np.ndarray, cond: Conditioning) -> np.ndarray:
        (feeds,) = graph_feeds(self.feeds, tokens, sigmas, cond,
                               position_feeds(self.feeds, positions, cond.positions_for_text()))
        out = self.core(**{name: torch.from_numpy(value) for name, value in feeds.items()})
        return velocity_from_outputs(self.feeds, [out.float().numpy()])


def encode_prompt_sd3(pipe, prompt: str, max_sequence_length: int, negative_prompt: str = "") -> Conditioning:
    """CFG conditioning of one prompt through StableDiffusion3Pipeline.encode_prompt: batch 2, the negative
    prompt's row first (text_states [2, T_clip + T_t5, D], pooled [2, D_pooled]), as its __call__ batches."""
    with torch.inference_mode():
        states, negative, pooled, negative_pooled = pipe.encode_prompt(
            prompt=prompt, prompt_2=None, prompt_3=None, negative_prompt=negative_prompt,
            do_classifier_free_guidance=True, max_sequence_length=max_sequence_length)
    return Conditioning(text_states=torch.cat([negative, states]).float().numpy(),
                        pooled=torch.cat([negative_pooled, pooled]).float().numpy())
