"""Token bookkeeping for RALU (spec/RALU.md §3, §5, §6): FLUX 2×2 packing, position ids, the nearest
downsample of stage 1, the mixed-resolution assemblies of stages 2 and 3 with their correlated-noise groups,
and the raster restore. Pure NumPy functions, inputs never mutated; numpy is its only dependency.

Conventions: packed tokens are [B, L, C_packed] with C_packed = 4·latent_channels in FLUX's (c, dy, dx)
order; positions are [L, 3] float64 ids (0, row, col); a `groups` array is [G, 4] int64, each row the
sequence indices of 4 duplicated children whose renoising noise is correlated (§7.2)."""

from __future__ import annotations

import numpy as np

CHILD_OFFSETS = np.array([[0.0, 0.0], [0.0, 0.5], [0.5, 0.0], [0.5, 0.5]])
"""(row, col) offsets of the 4 children of a duplicated token, in this order (spec/RALU.md §5, Algorithm R3)."""


def pack_latents(latents: np.ndarray) -> np.ndarray:
    """Packed tokens [B, (H/2)(W/2), 4C] from a latent [B, C, H, W] (diffusers `FluxPipeline._pack_latents`).

    Token (i, j) in row-major order holds latent[:, :, 2i:2i+2, 2j:2j+2] flattened as (c, dy, dx)."""
    batch, channels, height, width = latents.shape
    patches = latents.reshape(batch, channels, height // 2, 2, width // 2, 2)
    patches = patches.transpose(0, 2, 4, 1, 3, 5)  # B, H/2, W/2, C, dy, dx
    return patches.reshape(batch, (height // 2) * (width // 2), channels * 4)


def unpack_latents(tokens: np.ndarray, grid_h: int, grid_w: int) -> np.ndarray:
    """Latent [B, C, 2·grid_h, 2·grid_w] from raster-ordered packed tokens [B, grid_h·grid_w, 4C]
    (diffusers `FluxPipeline._unpack_latents`); the inverse of `pack_latents`."""
    batch, length, packed = tokens.shape
    if length != grid_h * grid_w or packed % 4:
        raise ValueError(f"tokens {tokens.shape} do not form a {grid_h}×{grid_w} packed grid")
    patches = tokens.reshape(batch, grid_h, grid_w, packed // 4, 2, 2)
    patches = patches.transpose(0, 3, 1, 4, 2, 5)  # B, C, H/2, dy, W/2, dx
    return patches.reshape(batch, packed // 4, grid_h * 2, grid_w * 2)


def grid_positions(grid_h: int, grid_w: int) -> np.ndarray:
    """Position ids of a raster-ordered grid: [grid_h·grid_w, 3] float64 rows (0, row, col) (FLUX img_ids)."""
    rows, cols = np.meshgrid(np.arange(grid_h), np.arange(grid_w), indexing="ij")
    return np.stack([np.zeros(grid_h * grid_w), rows.ravel(), cols.ravel()], axis=1).astype(np.float64)


def downsample_tokens(tokens: np.ndarray, grid_h: int, grid_w: int) -> np.ndarray:
    """Low-res packed tokens [B, (grid_h/2)(grid_w/2), 4C] from full-res ones [B, grid_h·grid_w, 4C].

    Unpack, keep the latent pixels at even rows and columns (nearest ×½, spec/RALU.md §3 item 2), repack."""
    latents = unpack_latents(tokens, grid_h, grid_w)
    return pack_latents(np.ascontiguousarray(latents[:, :, ::2, ::2]))


def child_positions(positions: np.ndarray) -> np.ndarray:
    """Ids of the 4 children of each token: [4n, 3] float64 from [n, 3]; the children of token q are rows
    4q..4q+3 at (h, w), (h, w+½), (h+½, w), (h+½, w+½) (spec/RALU.md §5, Algorithm R3 line 2)."""
    children = np.repeat(np.asarray(positions, dtype=np.float64), 4, axis=0)
    children[:, 1:] += np.tile(CHILD_OFFSETS, (len(positions), 1))
    return children


def consecutive_groups(start: int, num_groups: int) -> np.ndarray:
    """Groups of 4 consecutive sequence indices from `start`: [num_groups, 4] int64."""
    return start + np.arange(num_groups * 4, dtype=np.int64).reshape(num_groups, 4)


def assemble_stage2(
    tokens: np.ndarray, positions: np.ndarray, selected: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stage-2 sequence [unselected ‖ 4 children of each selected] (spec/RALU.md §5, Algorithm R3).

    tokens: [B, M_down, C] low-res tokens in raster order; positions: [M_down, 3] float64; selected: [k] int
    indices into the sequence. Returns tokens [B, M_down + 3k, C] (same dtype), positions [M_down + 3k, 3]
    float64, and groups [k, 4] int64 covering the last 4k tokens. Both parts keep ascending raster order."""
    selected = np.sort(np.asarray(selected, dtype=np.int64))
    length = tokens.shape[1]
    if selected.size and (selected[0] < 0 or selected[-1] >= length or np.any(np.diff(selected) == 0)):
        raise ValueError(f"selected must be distinct indices in [0, {length}), got {selected.tolist()}")
    single = np.setdiff1d(np.arange(length, dtype=np.int64), selected, assume_unique=True)
    children = np.repeat(tokens[:, selected], 4, axis=1)
    new_tokens = np.concatenate([tokens[:, single], children], axis=1)
    new_positions = np.concatenate([positions[single], child_positions(positions[selected])], axis=0)
    return new_tokens, new_positions, consecutive_groups(len(single), len(selected))


def assemble_stage3(
    tokens: np.ndarray, positions: np.ndarray, num_single: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Full-resolution sequence [4 children of each 1× token ‖ existing children], ids doubled
    (spec/RALU.md §6, Algorithm R4). Not yet in raster order: see `restore_raster_order`.

    tokens: [B, L₂, C] stage-2 tokens; positions: [L₂, 3] float64; num_single: M_down − k, the number of
    leading 1× tokens. Returns tokens [B, L₂ + 3·num_single, C], integer-valued positions (float64) on the
    full grid, and groups [num_single, 4] int64 covering the first 4·num_single tokens."""
    singles, children = tokens[:, :num_single], tokens[:, num_single:]
    new_tokens = np.concatenate([np.repeat(singles, 4, axis=1), children], axis=1)
    new_positions = 2.0 * np.concatenate([child_positions(positions[:num_single]), positions[num_single:]])
    return new_tokens, new_positions, consecutive_groups(0, num_single)


def raster_order(positions: np.ndarray) -> np.ndarray:
    """Permutation [L] int64 putting tokens in row-major order of their ids (spec/RALU.md §6, Algorithm R5):
    stable sort by column, then stable sort of that by row, as the reference does."""
    by_col = np.argsort(positions[:, 2], kind="stable")
    return by_col[np.argsort(positions[by_col, 1], kind="stable")]


def restore_raster_order(tokens: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(tokens [B, L, C], positions [L, 3]) reordered by `raster_order(positions)` (Algorithm R5)."""
    order = raster_order(positions)
    return tokens[:, order], positions[order]
