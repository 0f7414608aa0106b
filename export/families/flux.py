"""The `flux` export family (diffusers FluxPipeline; the built-in `shapes` model is one): the RALU denoiser
graph with host-computed RoPE tables, optimum's transformer graph with position ids (desktop only, for
ORTDiffusionPipeline), the CLIP (pooled) and T5 (sequence) encoders, and the VAE (spec/RALU.md §9.1).
numpy only; the boundary modules are named, in ralu_export.graph_modules."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ralu_edge.feeds import FLUX_DEFAULT_GUIDANCE
from ralu_edge.manifest import RopeSpec
from ralu_edge.rope import rope_tables
from ralu_export.families.components import VAE_DECODER, VAE_ENCODER, t5_encoder, text_inputs
from ralu_export.families.spec import (
    DimSpec, EncoderRole, ExampleContext, FamilySpec, Geometry, GraphSpec, TensorTemplate, component_config,
    tokenizer_length,
)
from ralu_export.models import load_flux_pipeline

ROPE_THETA = 10000.0  # FluxPosEmbed's theta in every FLUX.1 transformer


def flux_geometry(folder: Path, height: int, width: int) -> Geometry:
    """Geometry of a diffusers FluxPipeline folder at height x width (configs only, no weights loaded).
    T5 length: tokenizer_2's model_max_length capped at 512 (FluxPipeline's max_sequence_length)."""
    transformer, vae = component_config(folder, "transformer"), component_config(folder, "vae")
    clip, t5 = component_config(folder, "text_encoder"), component_config(folder, "text_encoder_2")
    text_length = tokenizer_length(folder, "tokenizer_2", 512)
    text_dim, pooled_dim = int(transformer["joint_attention_dim"]), int(transformer["pooled_projection_dim"])
    axes_dim = tuple(transformer["axes_dims_rope"])
    head_dim = int(transformer["attention_head_dim"])
    named = {
        "clip_length": tokenizer_length(folder, "tokenizer", int(clip["max_position_embeddings"])),
        "clip_dim": pooled_dim, "t5_dim": text_dim, "head_dim": head_dim, "num_axes": len(axes_dim),
        "clip_vocab": int(clip["vocab_size"]), "t5_vocab": int(t5["vocab_size"]),
    }
    return Geometry(
        height=height, width=width, vae_factor=2 ** (len(vae["block_out_channels"]) - 1),
        latent_channels=int(vae["latent_channels"]), patch=2, text_length=text_length,
        denoiser_text_length=text_length, text_dim=text_dim, pooled_dim=pooled_dim,
        guidance=bool(transformer.get("guidance_embeds", False)),
        vae_scaling=float(vae["scaling_factor"]), vae_shift=float(vae.get("shift_factor") or 0.0),
        scheduler_shift=3.0,  # unused by FLUX's resolution-dependent baseline schedule; the manifest's default
        rope=RopeSpec(axes_dim, ROPE_THETA, head_dim), named_sizes=tuple(sorted(named.items())),
    )


def _text_positions(ctx: ExampleContext) -> np.ndarray:
    """[T, num_axes] float64 text ids: all zero, as FluxPipeline's txt_ids."""
    return np.zeros((ctx.geometry.denoiser_text_length, len(ctx.geometry.rope.axes_dim)))


def _rope(ctx: ExampleContext) -> tuple[np.ndarray, np.ndarray]:
    """(cos, sin) [T + L, head_dim] float32 over the text rows then the case's image tokens (ralu_edge.rope,
    as the runtime builds them)."""
    rope = ctx.geometry.rope
    return rope_tables(np.concatenate([_text_positions(ctx), ctx.image_ids]), rope.axes_dim, rope.theta)


def rope_cos(template: TensorTemplate, ctx: ExampleContext) -> np.ndarray:
    return _rope(ctx)[0]


def rope_sin(template: TensorTemplate, ctx: ExampleContext) -> np.ndarray:
    return _rope(ctx)[1]


def text_ids(template: TensorTemplate, ctx: ExampleContext) -> np.ndarray:
    return _text_positions(ctx).astype(np.float32)


def image_ids(template: TensorTemplate, ctx: ExampleContext) -> np.ndarray:
    return ctx.image_ids.astype(np.float32)


def sigmas(template: TensorTemplate, ctx: ExampleContext) -> np.ndarray:
    """timestep [1] float32: a noise level sigma in (0, 1), which FLUX graphs take as is."""
    return ctx.rng.uniform(0.05, 0.95, ctx.shape(template)).astype(np.float32)


def guidance(template: TensorTemplate, ctx: ExampleContext) -> np.ndarray:
    """guidance [1] float32: FluxPipeline's default distilled guidance."""
    return np.full(ctx.shape(template), FLUX_DEFAULT_GUIDANCE, dtype=np.float32)


_DENOISER_COMMON = (
    TensorTemplate("hidden_states", "float32", (1, "num_image_tokens", "token_channels")),
    TensorTemplate("encoder_hidden_states", "float32", (1, "text_length", "text_dim")),
    TensorTemplate("pooled_projections", "float32", (1, "pooled_dim")),
    TensorTemplate("timestep", "float32", (1,), example=sigmas),
)
# last: the boundary modules' last argument; only guidance-distilled models (FLUX.1-dev) have it
_GUIDANCE = TensorTemplate("guidance", "float32", (1,), requires="guidance", example=guidance)

FLUX = FamilySpec(
    name="flux",
    pipeline_class="FluxPipeline",
    dims={
        "num_image_tokens": DimSpec(min=2, max=65536),
        "num_rope_tokens": DimSpec(root="num_image_tokens", plus="text_length"),
        "num_placeholders": DimSpec(min=0, max=1024),
        "latent_height": DimSpec(min=2, max=1024),
        "latent_width": DimSpec(min=2, max=1024),
        "height": DimSpec(root="latent_height", times="vae_factor"),
        "width": DimSpec(root="latent_width", times="vae_factor"),
    },
    geometry=flux_geometry,
    default_presets=("flux-4x", "flux-5x", "flux-7x"),
    load=load_flux_pipeline,
    positions="rope", timestep="sigma", output_order="c_dy_dx", baseline_schedule="flux_dynamic",
    guidance_scale=None,  # FluxPipeline runs no CFG unless the model records a true_cfg_scale (sampling.json)
    encoders=(
        EncoderRole("text_encoder", "tokenizer", "clip", "pooled", "last_hidden_state", "pooler_output",
                    length="clip_length", hidden_size="clip_dim", vocab="clip_vocab"),
        EncoderRole("text_encoder_2", "tokenizer_2", "t5", "sequence", "last_hidden_state", None,
                    length="text_length", hidden_size="t5_dim", vocab="t5_vocab"),
    ),
    graphs=(
        GraphSpec(
            name="denoiser", role="denoiser", folder="transformer", stem="denoiser", source="transformer",
            module="FluxDenoiser",
            inputs=_DENOISER_COMMON + (
                TensorTemplate("rope_cos", "float32", ("num_rope_tokens", "head_dim"), example=rope_cos),
                TensorTemplate("rope_sin", "float32", ("num_rope_tokens", "head_dim"), example=rope_sin),
                _GUIDANCE,
            ),
            outputs=(TensorTemplate("velocity", "float32", (1, "num_image_tokens", "token_channels")),),
            shares_weights="transformer", parity_cases="stages",
        ),
        GraphSpec(
            name="transformer", role="denoiser_ids", folder="transformer", stem="model", source="transformer",
            module="FluxDenoiserFromIds",
            inputs=_DENOISER_COMMON + (
                TensorTemplate("txt_ids", "float32", ("text_length", "num_axes"), example=text_ids),
                TensorTemplate("img_ids", "float32", ("num_image_tokens", "num_axes"), example=image_ids),
                _GUIDANCE,
            ),
            outputs=(TensorTemplate("out_hidden_states", "float32", (1, "num_image_tokens", "token_channels")),),
            targets=("desktop",), shares_weights="transformer", parity_cases="full",
        ),
        GraphSpec(
            name="text_encoder", role="text_encoder", folder="text_encoder", stem="model", source="text_encoder",
            module="ClipTextEncoder",
            inputs=text_inputs("clip_length", "clip_dim"),
            outputs=(TensorTemplate("last_hidden_state", "float32", (1, "clip_length", "clip_dim")),
                     TensorTemplate("pooler_output", "float32", (1, "clip_dim"))),
            parity_cases="placeholders",
        ),
        t5_encoder("text_encoder_2"),
        VAE_DECODER,
        VAE_ENCODER,
    ),
)
