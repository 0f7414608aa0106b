"""SD3-class models on the RALU seam (spec/RALU.md §9.7): host-side patchify and its inverse in SD3's output
layout, 2-D sin-cos position embeddings at arbitrary (fractional) coordinates that reproduce diffusers'
`PatchEmbed` crop at integer ones, the mapping from the sampler's positions to SD3 coordinates, the joint
text sequence StableDiffusion3Pipeline builds from CLIP-L, CLIP-G and T5. Classifier-free guidance, which
FLUX-family bundles use too, lives in `ralu_edge.guidance` (re-exported here). Depends on numpy only.

Layouts: packed tokens are [B, L, p·p·C] in (c, dy, dx) order, exactly `ralu_edge.tokens.pack_latents`
(SD3's patch conv flattens its kernel the same way, so the conv is a Linear on these tokens). The SD3
transformer's per-token output is (dy, dx, c) (its unpatchify einsum "nhwpqc->nchpwq"); every backend
permutes it back with `packed_from_sd3_output` (through `ralu_edge.feeds.velocity_from_outputs`) so the
sampler's Euler update sees one layout."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ralu_edge.guidance import ClassifierFreeGuidance, stack_conditionings  # noqa: F401 (moved; old imports work)
from ralu_edge.tokens import pack_latents, unpack_latents

patchify = pack_latents
"""Packed (c, dy, dx) 2×2 patch tokens [B, (H/2)(W/2), 4C] from a latent [B, C, H, W]: SD3's PatchEmbed
conv input, flattened as its kernel is (`weight.reshape(D, C·p·p)`)."""

unpatchify = unpack_latents
"""Latent [B, C, 2·grid_h, 2·grid_w] from raster-ordered packed (c, dy, dx) tokens: the inverse of `patchify`."""


def packed_from_sd3_output(tokens: np.ndarray, latent_channels: int, patch: int = 2) -> np.ndarray:
    """Tokens [B, L, p·p·C] in (c, dy, dx) order from the SD3 transformer's per-token output in (dy, dx, c)
    order (spec/RALU.md §9.7 "Output layout"); same dtype."""
    batch, length, channels = tokens.shape
    if channels != patch * patch * latent_channels:
        raise ValueError(f"tokens {tokens.shape} do not hold {patch}x{patch}x{latent_channels} patches")
    patches = tokens.reshape(batch, length, patch, patch, latent_channels)  # B, L, dy, dx, c
    return np.ascontiguousarray(patches.transpose(0, 1, 4, 2, 3)).reshape(batch, length, channels)


def sd3_output_from_packed(tokens: np.ndarray, latent_channels: int, patch: int = 2) -> np.ndarray:
    """The inverse of `packed_from_sd3_output`: (c, dy, dx) tokens [B, L, p·p·C] to (dy, dx, c) order."""
    batch, length, channels = tokens.shape
    patches = tokens.reshape(batch, length, latent_channels, patch, patch)  # B, L, c, dy, dx
    return np.ascontiguousarray(patches.transpose(0, 1, 3, 4, 2)).reshape(batch, length, channels)


@dataclass(frozen=True)
class SincosGrid:
    """diffusers `PatchEmbed` position-table geometry: embed_dim (the transformer's inner dim), max_size
    (`pos_embed_max_size`, the square table's side in patches; 192 for SD3), base_size (`sample_size //
    patch_size`; 64 for SD3) and interpolation_scale (1 for SD3). One patch step is the coordinate
    base_size / max_size / interpolation_scale (1/3 for SD3)."""

    embed_dim: int
    max_size: int
    base_size: int
    interpolation_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.embed_dim % 4:
            raise ValueError(f"2-D sin-cos embeddings need embed_dim divisible by 4, got {self.embed_dim}")


def sincos_1d(embed_dim: int, coordinates: np.ndarray) -> np.ndarray:
    """[L, embed_dim] float64: concat(sin(x·ω), cos(x·ω)) with ω_j = 10000^(−j/(embed_dim/2)), j < embed_dim/2
    (diffusers `get_1d_sincos_pos_embed_from_grid`, flip_sin_to_cos=False, float64 frequencies)."""
    omega = np.arange(embed_dim // 2, dtype=np.float64) / (embed_dim / 2.0)
    omega = 1.0 / 10000.0 ** omega
    angles = np.outer(np.asarray(coordinates, dtype=np.float64).ravel(), omega)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def table_coordinates(indices: np.ndarray, grid: SincosGrid) -> np.ndarray:
    """Sin-cos coordinates of (possibly fractional) table indices, same shape, float64: index / (max_size /
    base_size) / interpolation_scale, evaluated in float32 as diffusers' `get_2d_sincos_pos_embed` does
    (so integer indices give its values bit for bit)."""
    index32 = np.asarray(indices, dtype=np.float32)
    scaled = index32 / np.float32(grid.max_size / grid.base_size) / np.float32(grid.interpolation_scale)
    return scaled.astype(np.float64)


def sincos_embeddings(rows: np.ndarray, cols: np.ndarray, grid: SincosGrid) -> np.ndarray:
    """[L, embed_dim] float32 position embeddings at table indices (rows[L], cols[L]), fractional allowed.

    diffusers builds the table from meshgrid(grid_w, grid_h, indexing="xy"), so the first half of each
    embedding encodes the column coordinate and the second half the row coordinate. At integer indices
    this equals row `rows·max_size + cols` of `PatchEmbed.pos_embed` (spec/RALU.md §9.7)."""
    half = grid.embed_dim // 2
    by_col = sincos_1d(half, table_coordinates(cols, grid))
    by_row = sincos_1d(half, table_coordinates(rows, grid))
    return np.concatenate([by_col, by_row], axis=1).astype(np.float32)


def on_full_grid(positions: np.ndarray, grid_h: int, grid_w: int) -> bool:
    """Whether seam positions [L, 3] are in full-resolution grid units: all integer and exactly
    grid_h·grid_w of them (the baseline and RALU stage 3). Stage 1 (M/4 tokens) and stage 2 (M/4 + 3k
    tokens, k ≥ 1 of them with half-integer ids; at r = 1 there are M of them, all children) are in
    low-resolution units. The seam carries no frame flag, so the frame is read off the positions."""
    positions = np.asarray(positions)
    if positions.shape[0] != grid_h * grid_w:
        return False
    return bool(np.all(positions[:, 1:] == np.round(positions[:, 1:])))


def crop_offset(grid: SincosGrid, grid_h: int, grid_w: int) -> tuple[int, int]:
    """(top, left) of diffusers' centre crop of a grid_h × grid_w patch grid from the max_size² table
    (`PatchEmbed.cropped_pos_embed`); ValueError for a grid larger than the table, as diffusers."""
    if grid_h > grid.max_size or grid_w > grid.max_size:
        raise ValueError(f"a {grid_h}x{grid_w} patch grid exceeds pos_embed_max_size {grid.max_size}")
    return (grid.max_size - grid_h) // 2, (grid.max_size - grid_w) // 2


def table_indices(positions: np.ndarray, grid_h: int, grid_w: int, grid: SincosGrid) -> np.ndarray:
    """[L, 2] float64 (row, col) table indices of seam positions [L, 3] (0, row, col) for a full-res packed
    grid grid_h × grid_w (spec/RALU.md §9.7 "Proposed positions", a project rule):

    - full-grid positions (baseline, stage 3): the standard centre crop of the grid_h × grid_w grid;
    - anything else (stage 1, stage 2): low-res units, offset by the standard centre crop of the
      (grid_h/2) × (grid_w/2) grid, so stage 1 is SD3 at half the image size and a stage-2 child at
      (h + ½, w + ½) sits half a low-res patch from its parent, mirroring FLUX's fractional RoPE ids."""
    positions = np.asarray(positions, dtype=np.float64)
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise ValueError(f"positions must be [L, 3], got {positions.shape}")
    if on_full_grid(positions, grid_h, grid_w):
        top, left = crop_offset(grid, grid_h, grid_w)
    else:
        top, left = crop_offset(grid, grid_h // 2, grid_w // 2)
    return np.stack([positions[:, 1] + top, positions[:, 2] + left], axis=1)


def position_embeddings(positions: np.ndarray, grid_h: int, grid_w: int, grid: SincosGrid) -> np.ndarray:
    """[L, embed_dim] float32 per-token SD3 position embeddings of seam positions [L, 3] (see
    `table_indices` for the rule); the exported SD3 core adds them to the patch projections."""
    indices = table_indices(positions, grid_h, grid_w, grid)
    return sincos_embeddings(indices[:, 0], indices[:, 1], grid)


def joint_text_states(clip_states: list[np.ndarray], t5_states: np.ndarray) -> np.ndarray:
    """SD3's encoder_hidden_states [B, T_clip + T_t5, D_t5] float32: the CLIP sequence outputs concatenated
    on the feature axis, zero-padded (or cut, as torch's negative pad does) to the T5 width, then followed by
    the T5 states on the sequence axis (diffusers `StableDiffusion3Pipeline.encode_prompt`). With no CLIP
    sequence outputs (FLUX) it returns the T5 states unchanged."""
    t5_states = np.asarray(t5_states, dtype=np.float32)
    if not clip_states:
        return t5_states
    clip = np.concatenate([np.asarray(s, dtype=np.float32) for s in clip_states], axis=-1)
    width = t5_states.shape[-1]
    if clip.shape[-1] < width:
        clip = np.pad(clip, ((0, 0), (0, 0), (0, width - clip.shape[-1])))
    return np.concatenate([clip[..., :width], t5_states], axis=1)
