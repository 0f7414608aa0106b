"""Graphs that more than one family declares, and the example builders of their inputs: text encoders with
injectable embeddings for learned tokens (spec/ZO_PERSONALIZATION.md §11.3 (B)), the T5 encoder, and the
VAE decoder and encoder in optimum's I/O. numpy only."""

from __future__ import annotations

import numpy as np

from ralu_export.families.spec import ExampleContext, GraphSpec, TensorTemplate

PLACEHOLDER_SCALE = 0.02  # example learned-token embeddings: about the size of a CLIP/T5 table row
NEW_TOKEN_OFFSET = 1000  # the example's brand-new token id: this far past the prompt's largest id


def _new_token_id(ctx: ExampleContext) -> int:
    """An id past every id of the example prompt: a brand-new token (ids beyond the table are clamped for the
    lookup, so any id works)."""
    return int(ctx.token_ids.max()) + NEW_TOKEN_OFFSET


def prompt_ids(template: TensorTemplate, ctx: ExampleContext) -> np.ndarray:
    """input_ids [1, T] int64: the example prompt, with the brand-new placeholder id written at position 2
    when the case has placeholders (the second placeholder replaces an id the prompt already uses)."""
    ids = np.array(ctx.token_ids, dtype=np.int64, copy=True)
    if ctx.dims["num_placeholders"]:
        ids[0, 2] = _new_token_id(ctx)
    return ids


def placeholder_ids(template: TensorTemplate, ctx: ExampleContext) -> np.ndarray:
    """placeholder_ids [P] int64 (P <= 2): the brand-new id, then the prompt's id at position 1."""
    count = ctx.dims["num_placeholders"]
    return np.array([_new_token_id(ctx), int(ctx.token_ids[0, 1])][:count], dtype=np.int64)


def placeholder_embeds(template: TensorTemplate, ctx: ExampleContext) -> np.ndarray:
    """placeholder_embeds [P, D] float32, normal with a table row's scale."""
    return ctx.rng.standard_normal(ctx.shape(template)).astype(np.float32) * PLACEHOLDER_SCALE


def image_sample(template: TensorTemplate, ctx: ExampleContext) -> np.ndarray:
    """An image [1, 3, f*h, f*w] float32 uniform in [-1, 1] at the case's latent size."""
    factor = ctx.geometry.vae_factor
    shape = (1, 3, ctx.dims["latent_height"] * factor, ctx.dims["latent_width"] * factor)
    return ctx.rng.uniform(-1, 1, shape).astype(np.float32)


def text_inputs(length: str, width: str) -> tuple[TensorTemplate, ...]:
    """A text encoder's inputs: input_ids [1, length] and the optional learned-token slots of `width`."""
    return (TensorTemplate("input_ids", "int64", (1, length), example=prompt_ids),
            TensorTemplate("placeholder_ids", "int64", ("num_placeholders",), optional=True, example=placeholder_ids),
            TensorTemplate("placeholder_embeds", "float32", ("num_placeholders", width), optional=True,
                           example=placeholder_embeds))


def t5_encoder(name: str) -> GraphSpec:
    """transformers T5EncoderModel with injectable embeddings, as the pipeline attribute `name`."""
    return GraphSpec(
        name=name, role="text_encoder", folder=name, stem="model", source=name, module="T5TextEncoder",
        inputs=text_inputs("text_length", "t5_dim"),
        outputs=(TensorTemplate("last_hidden_state", "float32", (1, "text_length", "t5_dim")),),
        parity_cases="placeholders",
    )


_LATENT = (1, "latent_channels", "latent_height", "latent_width")

VAE_DECODER = GraphSpec(
    name="vae_decoder", role="vae_decoder", folder="vae_decoder", stem="model", source="vae", module="VaeDecoder",
    inputs=(TensorTemplate("latent_sample", "float32", _LATENT),),
    outputs=(TensorTemplate("sample", "float32", (1, 3, "height", "width")),),
    parity_cases="full_and_half",
)

VAE_ENCODER = GraphSpec(
    name="vae_encoder", role="vae_encoder", folder="vae_encoder", stem="model", source="vae", module="VaeEncoder",
    inputs=(TensorTemplate("sample", "float32", (1, 3, "height", "width"), example=image_sample),),
    outputs=(TensorTemplate("latent_parameters", "float32", (1, "latent_parameters", "latent_height",
                                                              "latent_width")),
             TensorTemplate("latent_mean", "float32", _LATENT)),
    parity_cases="full",
    # personalization encodes its photos here; the web page only samples (it loads learned embeddings)
    targets=("desktop", "android", "executorch", "ios"),
)
