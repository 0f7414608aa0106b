"""The `sd3` export family (diffusers StableDiffusion3Pipeline): the transformer core on host-patchified tokens
with per-token sin-cos position embeddings as the RALU denoiser graph (spec/RALU.md §9.7), optimum's
full-latent transformer graph (desktop only), CLIP-L and CLIP-G with projection in optimum's output layout,
T5, and the VAE. Classifier-free guidance runs [negative, prompt] as one batch of 2. numpy only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ralu_edge.feeds import SD3_TIMESTEP_SCALE
from ralu_edge.manifest import PosEmbedSpec
from ralu_edge.sd3 import SincosGrid, position_embeddings
from ralu_export.families.components import VAE_DECODER, VAE_ENCODER, t5_encoder, text_inputs
from ralu_export.families.spec import (
    DimSpec, EncoderRole, ExampleContext, FamilySpec, Geometry, GraphSpec, TensorTemplate, component_config,
    tokenizer_length,
)
from ralu_export.models import load_sd3_pipeline


def _scheduler_shift(folder: Path) -> float:
    path = folder / "scheduler" / "scheduler_config.json"
    return float(json.loads(path.read_text()).get("shift", 3.0)) if path.is_file() else 3.0


def sd3_geometry(folder: Path, height: int, width: int) -> Geometry:
    """Geometry of a diffusers StableDiffusion3Pipeline folder (configs only). Text: CLIP-L and CLIP-G at the
    CLIP tokenizer length (77), T5 at tokenizer_3's model_max_length capped at 256 (StableDiffusion3Pipeline's
    max_sequence_length default); the denoiser sees their joint sequence (spec/RALU.md §9.2: 77 + 256)."""
    transformer, vae = component_config(folder, "transformer"), component_config(folder, "vae")
    clip_l, clip_g, t5 = (component_config(folder, c) for c in ("text_encoder", "text_encoder_2", "text_encoder_3"))
    patch = int(transformer["patch_size"])
    clip_length = tokenizer_length(folder, "tokenizer", int(clip_l["max_position_embeddings"]))
    t5_length = tokenizer_length(folder, "tokenizer_3", 256)
    pos_embed = PosEmbedSpec(int(transformer["num_attention_heads"]) * int(transformer["attention_head_dim"]),
                             int(transformer["pos_embed_max_size"]), int(transformer["sample_size"]) // patch, 1.0)
    named = {
        "clip_length": clip_length, "joint_text_length": clip_length + t5_length, "inner_dim": pos_embed.embed_dim,
        "t5_dim": int(t5["d_model"]), "t5_vocab": int(t5["vocab_size"]),
    }
    for prefix, config in (("clip_l", clip_l), ("clip_g", clip_g)):
        layers = int(config["num_hidden_layers"])
        named.update({f"{prefix}_dim": int(config["hidden_size"]), f"{prefix}_proj": int(config["projection_dim"]),
                      f"{prefix}_states": layers + 1, f"{prefix}_penultimate": layers - 1,
                      f"{prefix}_vocab": int(config["vocab_size"])})
    return Geometry(
        height=height, width=width, vae_factor=2 ** (len(vae["block_out_channels"]) - 1),
        latent_channels=int(vae["latent_channels"]), patch=patch, text_length=t5_length,
        denoiser_text_length=clip_length + t5_length, text_dim=int(transformer["joint_attention_dim"]),
        pooled_dim=int(transformer["pooled_projection_dim"]), guidance=False,
        vae_scaling=float(vae["scaling_factor"]), vae_shift=float(vae.get("shift_factor") or 0.0),
        scheduler_shift=_scheduler_shift(folder), pos_embed=pos_embed, named_sizes=tuple(sorted(named.items())),
    )


def timesteps(template: TensorTemplate, ctx: ExampleContext) -> np.ndarray:
    """timestep [B] float32: noise levels sigma in (0, 1) in SD3's unit, sigma x SD3_TIMESTEP_SCALE."""
    return (ctx.rng.uniform(0.05, 0.95, ctx.shape(template)) * SD3_TIMESTEP_SCALE).astype(np.float32)


def pos_embed(template: TensorTemplate, ctx: ExampleContext) -> np.ndarray:
    """pos_embed [L, inner_dim] float32: the sin-cos embeddings of the case's image tokens (ralu_edge.sd3, as
    the runtime builds them)."""
    g, spec = ctx.geometry, ctx.geometry.pos_embed
    grid = SincosGrid(spec.embed_dim, spec.max_size, spec.base_size, spec.interpolation_scale)
    return position_embeddings(ctx.image_ids, g.grid_height, g.grid_width, grid)


def _clip(name: str, prefix: str) -> GraphSpec:
    """An SD3 CLIP encoder with projection, in optimum's output layout plus injectable embeddings."""
    return GraphSpec(
        name=name, role="text_encoder", folder=name, stem="model", source=name, module="ClipProjectionTextEncoder",
        inputs=text_inputs("clip_length", f"{prefix}_dim"),
        outputs=(TensorTemplate("text_embeds", "float32", (1, f"{prefix}_proj")),
                 TensorTemplate("last_hidden_state", "float32", (1, "clip_length", f"{prefix}_dim")),
                 TensorTemplate("hidden_states.{}", "float32", (1, "clip_length", f"{prefix}_dim"),
                                repeat=f"{prefix}_states")),
        parity_cases="placeholders",
    )


_TEXT = (
    TensorTemplate("encoder_hidden_states", "float32", ("batch", "joint_text_length", "text_dim")),
    TensorTemplate("pooled_projections", "float32", ("batch", "pooled_dim")),
    TensorTemplate("timestep", "float32", ("batch",), example=timesteps),
)

SD3 = FamilySpec(
    name="sd3",
    pipeline_class="StableDiffusion3Pipeline",
    dims={
        "batch": DimSpec(min=1, max=16),  # classifier-free guidance runs [negative, prompt] as one batch of 2
        "num_image_tokens": DimSpec(min=2, max=65536),
        "num_placeholders": DimSpec(min=0, max=1024),
        "latent_height": DimSpec(min=2, max=1024),
        "latent_width": DimSpec(min=2, max=1024),
        "height": DimSpec(root="latent_height", times="vae_factor"),
        "width": DimSpec(root="latent_width", times="vae_factor"),
    },
    geometry=sd3_geometry,
    default_presets=("sd3-2x", "sd3-3x"),
    load=load_sd3_pipeline,
    positions="sincos", timestep="sigma_x1000", output_order="dy_dx_c", baseline_schedule="sd3_static",
    guidance_scale=7.0,  # StableDiffusion3Pipeline's default guidance_scale
    static_dims={"batch": 2},  # ExecuTorch / Core ML programs run CFG's [negative, prompt] batch
    encoders=(
        EncoderRole("text_encoder", "tokenizer", "clip", "both", "hidden_states.{clip_l_penultimate}", "text_embeds",
                    length="clip_length", hidden_size="clip_l_dim", vocab="clip_l_vocab"),
        EncoderRole("text_encoder_2", "tokenizer_2", "clip", "both", "hidden_states.{clip_g_penultimate}",
                    "text_embeds", length="clip_length", hidden_size="clip_g_dim", vocab="clip_g_vocab"),
        EncoderRole("text_encoder_3", "tokenizer_3", "t5", "sequence", "last_hidden_state", None,
                    length="text_length", hidden_size="t5_dim", vocab="t5_vocab"),
    ),
    graphs=(
        GraphSpec(
            name="denoiser", role="denoiser", folder="transformer", stem="denoiser", source="transformer",
            module="Sd3Denoiser",
            inputs=(TensorTemplate("hidden_states", "float32", ("batch", "num_image_tokens", "token_channels")),
                    *_TEXT,
                    TensorTemplate("pos_embed", "float32", ("num_image_tokens", "inner_dim"), example=pos_embed)),
            outputs=(TensorTemplate("velocity", "float32", ("batch", "num_image_tokens", "token_channels")),),
            shares_weights="transformer", parity_cases="stages",
        ),
        GraphSpec(
            # role "denoiser_ids": the desktop-only graph in optimum's transformer I/O (full latent in and out).
            name="transformer", role="denoiser_ids", folder="transformer", stem="model", source="transformer",
            module="Sd3Transformer",
            inputs=(TensorTemplate("hidden_states", "float32", ("batch", "latent_channels", "latent_height",
                                                                 "latent_width")), *_TEXT),
            outputs=(TensorTemplate("out_hidden_states", "float32", ("batch", "latent_channels", "latent_height",
                                                                      "latent_width")),),
            targets=("desktop",), shares_weights="transformer", parity_cases="full",
        ),
        _clip("text_encoder", "clip_l"),
        _clip("text_encoder_2", "clip_g"),
        t5_encoder("text_encoder_3"),
        VAE_DECODER,
        VAE_ENCODER,
    ),
)
