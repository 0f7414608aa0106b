"""Example inputs for tracing and for the export-time parity check of the FLUX family's graphs: one
function from (graph spec, geometry, case dims, rng) to keyword tensors, plus the list of parity cases of a
graph (every stage length for the RALU denoiser, zero and two placeholders for the text encoders, full and
half resolution for the VAE decoder). RoPE tables come from ralu_edge.rope, as the runtime builds them."""

from __future__ import annotations

import numpy as np
import torch

from ralu_edge.rope import rope_tables
from ralu_edge.sd3 import SincosGrid, position_embeddings
from ralu_edge.tokens import grid_positions
from ralu_export.families import Geometry, GraphSpec, present

Case = tuple[str, dict[str, int]]


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


def example_inputs(spec: GraphSpec, geometry: Geometry, dims: dict[str, int], rng: np.random.Generator,
                   token_ids: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Keyword tensors for one case of a graph. token_ids[graph name] is a tokenized prompt [1, T] int64."""
    num_tokens = dims.get("num_image_tokens", geometry.grid_height * geometry.grid_width)
    dims = {"batch": 2, **dims}  # SD3's classifier-free guidance batch (FLUX graphs have no batch dim)
    text_ids = np.zeros((geometry.text_length, max(len(geometry.axes_dim), 1)))
    image_ids = image_positions(geometry, num_tokens, rng)
    sizes = geometry.sizes()

    def normal(*shape: int) -> torch.Tensor:
        return torch.from_numpy(rng.standard_normal(shape).astype(np.float32))

    values: dict[str, object] = {}
    for template in present(spec.inputs, geometry):
        name = template.name
        if name in ("rope_cos", "rope_sin"):
            cos, sin = rope_tables(np.concatenate([text_ids, image_ids]), geometry.axes_dim, geometry.theta)
            values[name] = torch.from_numpy(cos if name == "rope_cos" else sin)
        elif name == "txt_ids":
            values[name] = torch.from_numpy(text_ids.astype(np.float32))
        elif name == "img_ids":
            values[name] = torch.from_numpy(image_ids.astype(np.float32))
        elif name == "timestep":
            count = dims["batch"] if template.shape == ("batch",) else 1
            scale = sizes.get("timestep_scale", 1)  # SD3 graphs take sigma * 1000
            values[name] = torch.tensor(rng.uniform(0.05, 0.95, count) * scale, dtype=torch.float32)
        elif name == "pos_embed":
            grid = SincosGrid(sizes["inner_dim"], sizes["pos_embed_max_size"], sizes["pos_base_size"])
            values[name] = torch.from_numpy(position_embeddings(image_ids, geometry.grid_height, geometry.grid_width,
                                                                grid))
        elif name == "guidance":
            values[name] = torch.tensor([3.5], dtype=torch.float32)
        elif name == "input_ids":
            dim = sizes[next(t for t in spec.inputs if t.name == "placeholder_embeds").shape[1]]
            values.update(_text_inputs(dims.get("num_placeholders", 0), dim, token_ids[spec.name], rng))
        elif name in ("placeholder_ids", "placeholder_embeds"):
            continue
        elif name == "sample":
            shape = (1, 3, dims["latent_height"] * geometry.vae_factor, dims["latent_width"] * geometry.vae_factor)
            values[name] = torch.from_numpy(rng.uniform(-1, 1, shape).astype(np.float32))
        else:
            shape = [d if isinstance(d, int) else sizes.get(d, dims.get(d, num_tokens)) for d in template.shape]
            values[name] = normal(*shape)
    return values


def _text_inputs(count: int, dim: int, ids: np.ndarray, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """input_ids with `count` placeholders: the first is a brand-new id (one past the table) written at
    position 2, the second replaces an id the prompt already uses (position 1)."""
    ids = np.array(ids, dtype=np.int64, copy=True)
    vocab = int(ids.max()) + 1000  # any id works: ids beyond the table are clamped for the lookup
    placeholder_ids = np.array([vocab, int(ids[0, 1])][:count], dtype=np.int64)
    if count:
        ids[0, 2] = vocab
    return {"input_ids": torch.from_numpy(ids), "placeholder_ids": torch.from_numpy(placeholder_ids),
            "placeholder_embeds": torch.from_numpy(rng.standard_normal((count, dim)).astype(np.float32) * 0.02)}
