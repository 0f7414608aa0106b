"""What the static-shape targets (executorch, ios) share: one program per component whose methods are the
shapes it must serve, and their example inputs with fixed learned-token slots.

- denoiser: method `denoise_<L>` per RALU stage length L (graph `denoiser_<L>`), with the family's static
  dims (SD3: CFG's batch of 2);
- text encoders: `forward`, with the target's placeholder_slots fixed slots (no optional inputs on these
  runtimes; unused slots take id -1);
- VAE decoder: `decode` (full resolution) and `decode_half` (the edge proxy); VAE encoder: `encode`."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ralu_edge.manifest import TensorSpec
from ralu_export import examples
from ralu_export.families.spec import GraphSpec, boundary_module, present, tensor_specs
from ralu_export.plan import Plan

Method = tuple[str, str, dict[str, int]]  # (manifest graph name, method name, static dims)
MANIFEST_STATIC_DIMS = ("num_image_tokens", "latent_height", "latent_width")


def methods(plan: Plan, spec: GraphSpec) -> list[Method]:
    """(graph name, method name, static dims) for each method of a component's program."""
    g = plan.geometry
    if spec.role == "denoiser":
        return [(f"denoiser_{n}", f"denoise_{n}", {"num_image_tokens": n, "num_rope_tokens": n + g.text_length,
                                                   **plan.family.static_dims})
                for n in plan.stage_lengths]
    if spec.role == "text_encoder":
        return [(spec.name, "forward", {"num_placeholders": plan.target.placeholder_slots})]
    full = {"latent_height": g.latent_height, "latent_width": g.latent_width, "height": g.height, "width": g.width}
    if spec.role == "vae_encoder":
        return [(spec.name, "encode", full)]
    half = {"latent_height": g.latent_height // 2, "latent_width": g.latent_width // 2,
            "height": g.height // 2, "width": g.width // 2}
    return [(spec.name, "decode", full), (f"{spec.name}_half", "decode_half", half)]


def components(plan: Plan) -> Iterator[tuple[GraphSpec, torch.nn.Module, dict[str, np.ndarray]]]:
    """(spec, boundary module, example prompt ids) of every graph the target ships, the pipeline loaded once."""
    pipe = plan.family.load(plan.config.model)
    token_ids = examples.example_token_ids(pipe, plan.family, plan.geometry)
    for spec in plan.graphs():
        yield spec, boundary_module(spec, pipe), token_ids


def _pad_placeholders(example: dict[str, torch.Tensor], slots: int) -> dict[str, torch.Tensor]:
    """The example with its placeholder inputs padded to `slots` (ids -1, zero embeddings)."""
    if "placeholder_ids" not in example:
        return example
    ids, embeds = example["placeholder_ids"], example["placeholder_embeds"]
    pad = slots - ids.shape[0]
    return {**example, "placeholder_ids": torch.cat([ids, torch.full((pad,), -1, dtype=ids.dtype)]),
            "placeholder_embeds": torch.cat([embeds, torch.zeros(pad, embeds.shape[1])])}


def example(plan: Plan, spec: GraphSpec, dims: dict[str, int], rng: np.random.Generator,
            token_ids: dict[str, np.ndarray], placeholders: int = 2) -> dict[str, torch.Tensor]:
    """Keyword tensors for one method: `placeholders` learned tokens, padded to the target's slots."""
    case = {**dims, "num_placeholders": placeholders}
    return _pad_placeholders(examples.example_inputs(spec, plan.geometry, case, rng, token_ids),
                             plan.target.placeholder_slots)


def declared_io(plan: Plan, spec: GraphSpec, dims: dict[str, int]) -> tuple[tuple[TensorSpec, ...],
                                                                          tuple[TensorSpec, ...]]:
    """The method's inputs (none optional: every slot is fed) and outputs as the family declares them."""
    sizes = plan.geometry.sizes()
    inputs = tuple(replace(s, optional=False) for s in tensor_specs(present(spec.inputs, plan.geometry), sizes, dims))
    return inputs, tensor_specs(spec.outputs, sizes, dims)


def manifest_static_dims(dims: dict[str, int]) -> dict[str, int]:
    """The static dims a manifest entry records (the runtime picks a method by them)."""
    return {k: v for k, v in dims.items() if k in MANIFEST_STATIC_DIMS}


def program_path(root: Path, spec: GraphSpec, suffix: str) -> Path:
    """`<root>/<folder>/<stem><suffix>`, its folder created."""
    path = root / spec.folder / f"{spec.stem}{suffix}"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path
