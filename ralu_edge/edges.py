"""Edge proxies and region selection at the end of RALU stage 1 (spec/RALU.md §4, §9.4): one score per
low-res token from the clean estimate x̂₀, then the top k. Two proxies: `latent_grad` (a Sobel map in latent
space, no decode) and `canny` (decode at half resolution, grey, Canny 100/200, block sums). The Canny here is
a NumPy port of OpenCV's (aperture 3, L1 gradient, same direction test and hysteresis), close enough for
ranking blocks; bit-exact parity is not required (§9.4 item 1). Pure NumPy: no OpenCV, torch or
ONNX Runtime here."""

from __future__ import annotations

from typing import Callable, Literal, Union

import numpy as np

from ralu_edge.tokens import unpack_latents

GrayMapping = Literal["affine", "reference_clip"]
EdgeScorer = Callable[[np.ndarray, int, int], np.ndarray]
EdgeProxy = Union[Literal["latent_grad", "canny"], EdgeScorer]
Decode = Callable[[np.ndarray], np.ndarray]

TIE_BREAK_STD = 1e-6  # spec/RALU.md §4 Algorithm R2 line 3
_TAN_22_5_Q15 = 13573  # OpenCV canny.cpp: tan(22.5°)·2^15, direction test in fixed point


def sobel_gradients(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(gx, gy), each shaped like images [..., H, W], of the 3×3 Sobel with replicate padding.

    gx = right − left weighted (1, 2, 1) down the rows; gy = below − above (OpenCV's `Sobel(…, 1, 0, 3)` and
    `Sobel(…, 0, 1, 3)`). The dtype follows the input (pass int32 for exact integer gradients)."""
    pad = [(0, 0)] * (images.ndim - 2) + [(1, 1), (1, 1)]
    p = np.pad(images, pad, mode="edge")
    rows_smoothed = p[..., :-2, :] + 2 * p[..., 1:-1, :] + p[..., 2:, :]  # [..., H, W + 2]
    cols_smoothed = p[..., :, :-2] + 2 * p[..., :, 1:-1] + p[..., :, 2:]  # [..., H + 2, W]
    gx = rows_smoothed[..., :, 2:] - rows_smoothed[..., :, :-2]
    gy = cols_smoothed[..., 2:, :] - cols_smoothed[..., :-2, :]
    return gx, gy


def block_sums(maps: np.ndarray, block_h: int, block_w: int) -> np.ndarray:
    """Sums over non-overlapping blocks, flattened row-major: [B, (H/block_h)(W/block_w)] from maps [B, H, W]."""
    batch, height, width = maps.shape
    blocks = maps.reshape(batch, height // block_h, block_h, width // block_w, block_w)
    return blocks.sum(axis=(2, 4)).reshape(batch, -1)


def latent_grad_scores(x0_tokens: np.ndarray, low_h: int, low_w: int) -> np.ndarray:
    """Edge score per low-res token: [B, low_h·low_w] float64, raster order (spec/RALU.md §9.4 item 2).

    x0_tokens: [B, low_h·low_w, 4C] packed x̂₀ of stage 1. Unpacks to [B, C, 2·low_h, 2·low_w], applies the
    Sobel per channel with replicate padding, takes Σ_c (|S_x∗x| + |S_y∗x|) and sums each token's 2×2 patch."""
    latents = unpack_latents(x0_tokens, low_h, low_w).astype(np.float64)
    gx, gy = sobel_gradients(latents)
    magnitude = (np.abs(gx) + np.abs(gy)).sum(axis=1)  # [B, 2·low_h, 2·low_w]
    return block_sums(magnitude, 2, 2)


def gray_uint8(images: np.ndarray, mapping: GrayMapping = "affine") -> np.ndarray:
    """8-bit grey images [B, H, W] uint8 from RGB images [B, 3, H, W] in [−1, 1] (spec/RALU.md §4, §9.4).

    grey = 0.299 R + 0.587 G + 0.114 B (ITU-R 601). 'affine': uint8(clip((grey+1)/2, 0, 1)·255);
    'reference_clip': uint8(clip(grey, 0, 1)·255), the reference's quirk that blacks out the dark half.
    Both truncate on the cast."""
    images = np.asarray(images, dtype=np.float32)
    gray = 0.299 * images[:, 0] + 0.587 * images[:, 1] + 0.114 * images[:, 2]
    if mapping == "affine":
        gray = (gray + 1.0) / 2.0
    elif mapping != "reference_clip":
        raise ValueError(f"edge_gray_mapping must be 'affine' or 'reference_clip', got {mapping!r}")
    return (np.clip(gray, 0.0, 1.0) * 255.0).astype(np.uint8)


def canny_edges(gray: np.ndarray, low_threshold: int = 100, high_threshold: int = 200) -> np.ndarray:
    """Canny edge map [H, W] uint8 (0 or 255) of one grey image [H, W] uint8, after OpenCV `Canny(gray, low,
    high)` with aperture 3 and the L1 gradient |gx| + |gy|: non-maximum suppression in 4 directions, then
    hysteresis over 8-connected pixels above `low_threshold` reachable from one above `high_threshold`."""
    gx, gy = sobel_gradients(np.asarray(gray, dtype=np.int32))
    magnitude = np.abs(gx) + np.abs(gy)
    local_max = _non_maximum_mask(magnitude, gx, gy)
    candidates = local_max & (magnitude > low_threshold)
    edges = candidates & (magnitude > high_threshold)
    while True:  # grow strong edges into connected candidates until nothing changes
        grown = _dilate_8(edges) & candidates
        if np.array_equal(grown, edges):
            break
        edges = grown
    return np.where(edges, 255, 0).astype(np.uint8)


def _non_maximum_mask(magnitude: np.ndarray, gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    """True where the gradient magnitude is a local maximum across the edge (OpenCV canny.cpp rules: zero
    padding, ties broken towards the first neighbour, strict on both diagonals)."""
    m = np.pad(magnitude, 1)  # zero border, as OpenCV's magnitude buffer
    h, w = magnitude.shape
    centre = m[1:-1, 1:-1]

    def neighbour(dr: int, dc: int) -> np.ndarray:
        return m[1 + dr:1 + dr + h, 1 + dc:1 + dc + w]

    ax = np.abs(gx).astype(np.int64)
    ay = np.abs(gy).astype(np.int64) << 15
    tg22x = ax * _TAN_22_5_Q15
    horizontal = ay < tg22x
    vertical = ~horizontal & (ay > tg22x + (ax << 16))
    diagonal = ~horizontal & ~vertical
    same_sign = (gx ^ gy) >= 0  # s = +1: compare up-left with down-right, else up-right with down-left
    keep_h = (centre > neighbour(0, -1)) & (centre >= neighbour(0, 1))
    keep_v = (centre > neighbour(-1, 0)) & (centre >= neighbour(1, 0))
    keep_d_pos = (centre > neighbour(-1, -1)) & (centre > neighbour(1, 1))
    keep_d_neg = (centre > neighbour(-1, 1)) & (centre > neighbour(1, -1))
    keep_d = np.where(same_sign, keep_d_pos, keep_d_neg)
    return (horizontal & keep_h) | (vertical & keep_v) | (diagonal & keep_d)


def _dilate_8(mask: np.ndarray) -> np.ndarray:
    """mask [H, W] bool grown by one pixel in the 8 directions."""
    p = np.pad(mask, 1)
    h, w = mask.shape
    out = np.zeros_like(mask)
    for dr in (0, 1, 2):
        for dc in (0, 1, 2):
            out |= p[dr:dr + h, dc:dc + w]
    return out


def canny_scores(
    x0_tokens: np.ndarray, low_h: int, low_w: int, decode: Decode, gray_mapping: GrayMapping = "affine"
) -> np.ndarray:
    """Edge score per low-res token from a half-resolution decode: [B, low_h·low_w] float64, raster order
    (spec/RALU.md §4 "Reference edge proxy", §9.4 item 1).

    x0_tokens: [B, low_h·low_w, 4C] packed x̂₀. decode: maps a latent [B, C, 2·low_h, 2·low_w] float32 (the
    sampler's latent convention; the callable undoes any VAE normalisation itself) to RGB images
    [B, 3, H_px, W_px] in [−1, 1]. The block per token is (H_px/low_h) × (W_px/low_w) pixels, 16×16 for FLUX
    (VAE factor 8), whatever the VAE factor. Scores are Canny pixel counts ×255 per block."""
    latents = unpack_latents(x0_tokens, low_h, low_w).astype(np.float32)
    images = np.asarray(decode(latents))
    height, width = images.shape[-2:]
    if images.ndim != 4 or images.shape[1] != 3 or height % low_h or width % low_w:
        raise ValueError(f"decode returned {images.shape}; expected [B, 3, H, W] with H, W multiples of "
                         f"the low-res grid {low_h}×{low_w}")
    edges = np.stack([canny_edges(g) for g in gray_uint8(images, gray_mapping)]).astype(np.float64)
    return block_sums(edges, height // low_h, width // low_w)


def edge_scores(
    x0_tokens: np.ndarray,
    low_h: int,
    low_w: int,
    proxy: EdgeProxy = "latent_grad",
    decode: Decode | None = None,
    gray_mapping: GrayMapping = "affine",
) -> np.ndarray:
    """Scores [B, low_h·low_w] float64 from the chosen proxy (spec/RALU.md §9.4): 'latent_grad', 'canny'
    (needs `decode`), or a custom callable (x0_tokens, low_h, low_w) -> [B, low_h·low_w]."""
    if callable(proxy):
        return np.asarray(proxy(x0_tokens, low_h, low_w), dtype=np.float64)
    if proxy == "latent_grad":
        return latent_grad_scores(x0_tokens, low_h, low_w)
    if proxy == "canny":
        if decode is None:
            raise ValueError("the 'canny' edge proxy needs a decode callable (latent -> image)")
        return canny_scores(x0_tokens, low_h, low_w, decode, gray_mapping)
    raise ValueError(f"edge proxy must be 'latent_grad', 'canny' or a callable, got {proxy!r}")


def select_regions(scores: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Indices [k] int64, ascending, of the k largest scores [L] after a N(0, 1e-6²) tie-break jitter drawn
    from `rng` (spec/RALU.md §4, Algorithm R2 lines 3–4). Plain top-k: no dilation, no threshold."""
    jittered = np.asarray(scores, dtype=np.float64) + rng.normal(0.0, TIE_BREAK_STD, size=np.shape(scores))
    top = np.argsort(-jittered, kind="stable")[:k]
    return np.sort(top).astype(np.int64)
