"""Example inputs for tracing and for the export-time parity check, and the torch reference's outputs on
them. Each input's value comes from its template's example builder (declared by its family,
families/flux.py, families/sd3.py, families/components.py); this module only fixes the cases (every stage
length for the RALU denoiser, zero and two placeholders for the text encoders, full and half resolution for
the VAE decoder), draws the image-token positions, and hands the values to torch."""

from __future__ import annotations

import numpy as np
import torch

from ralu_edge.tokens import grid_positions
from ralu_export.families.spec import EXAMPLE_BATCH, ExampleContext, FamilySpec, Geometry, GraphSpec, present

Case = tuple[str, dict[str, int]]
EXAMPLE_PROMPT = "a small red circle on a white background"


def parity_cases(spec: GraphSpec, geometry: Geometry, stage_lengths: list[int]) -> list[Case]:
    """(label, symbolic-dim values) pairs at which a graph is compared with its torch module."""
    full_tokens = geometry.grid_height * geometry.grid_width
    full_latent = {"latent_height": geometry.latent_height, "latent_width": geometry.latent_width}
    if spec.parity_cases == "stages":
        return [(f"num_image_tokens={n}", {"num_image_tokens": n}) for n in sorted(set(stage_lengths))]
    if spec.parity_cases == "placeholders":
        return [("num_placeholders=0", {"num_placeholders": 0}), ("num_placeholders=2", {"num_placeholders": 2})]
    if spec.parity_cases == "full_and_half":
        half = {"latent_height": geometry.latent_height // 2, "latent_width": geometry.latent_width // 2}
        return [(f"{geometry.height}x{geometry.width}", full_latent),
                (f"{geometry.height // 2}x{geometry.width // 2}", half)]
    return [(f"{geometry.height}x{geometry.width}", {"num_image_tokens": full_tokens, **full_latent})]


def trace_case(geometry: Geometry) -> dict[str, int]:
    """Dims of the example used for tracing: full resolution and two placeholders (no 0/1 sizes, which
    torch.export would specialise)."""
    return {"num_image_tokens": geometry.grid_height * geometry.grid_width, "num_placeholders": 2,
            "latent_height": geometry.latent_height, "latent_width": geometry.latent_width}


def image_positions(geometry: Geometry, num_tokens: int, rng: np.random.Generator) -> np.ndarray:
    """[num_tokens, 3] float64 image ids: the raster grid at full length, otherwise half-integer positions
    inside the grid (RALU's stage-2 mixture of low-res and child tokens)."""
    if num_tokens == geometry.grid_height * geometry.grid_width:
        return grid_positions(geometry.grid_height, geometry.grid_width)
    rows = rng.integers(0, 2 * geometry.grid_height, num_tokens) / 2.0
    cols = rng.integers(0, 2 * geometry.grid_width, num_tokens) / 2.0
    return np.stack([np.zeros(num_tokens), rows, cols], axis=1)


def example_arrays(spec: GraphSpec, geometry: Geometry, dims: dict[str, int], rng: np.random.Generator,
                   token_ids: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The graph's inputs (those the model has, in declaration order) at one case, as numpy arrays.
    token_ids[graph name] is a tokenized prompt [1, T] int64."""
    num_tokens = dims.get("num_image_tokens", geometry.grid_height * geometry.grid_width)
    ctx = ExampleContext(geometry, {"batch": EXAMPLE_BATCH, "num_placeholders": 0, **dims}, rng,
                         token_ids.get(spec.name), image_positions(geometry, num_tokens, rng))
    return {t.name: t.example(t, ctx) for t in present(spec.inputs, geometry)}


def example_inputs(spec: GraphSpec, geometry: Geometry, dims: dict[str, int], rng: np.random.Generator,
                   token_ids: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Keyword tensors for one case of a graph (example_arrays, in torch)."""
    return {name: torch.from_numpy(value) for name, value in example_arrays(spec, geometry, dims, rng,
                                                                             token_ids).items()}


def example_token_ids(pipe, family: FamilySpec, geometry: Geometry) -> dict[str, np.ndarray]:
    """{encoder graph: [1, T] int64} ids of EXAMPLE_PROMPT from the pipeline's own tokenizers."""
    sizes = geometry.sizes()
    out = {}
    for encoder in family.encoders:
        tokenizer = getattr(pipe, encoder.tokenizer)
        out[encoder.graph] = tokenizer([EXAMPLE_PROMPT], padding="max_length", max_length=sizes[encoder.length],
                                       truncation=True, return_tensors="np").input_ids.astype(np.int64)
    return out


def torch_outputs(module: torch.nn.Module, example: dict[str, torch.Tensor]) -> list[np.ndarray]:
    """The module's outputs on `example` as float32/int numpy arrays (a tuple output becomes a list)."""
    with torch.no_grad():
        out = module(**example)
    out = out if isinstance(out, (tuple, list)) else (out,)
    return [o.detach().cpu().numpy() for o in out]


def torch_references(module: torch.nn.Module, cases: list[tuple[str, dict[str, torch.Tensor]]]) -> list:
    """The module's outputs on every case, computed up front so that the module can be freed before the
    exported program loads (issue 8: never both copies of the weights at once)."""
    return [torch_outputs(module, example) for _, example in cases]
