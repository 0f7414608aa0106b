"""Generating evaluation images with diffusers' own FluxPipeline (the reference path of issue 2)."""

from __future__ import annotations

import numpy as np
import torch

from ralu_export.models import RecordedSampling

TEXT_LENGTH = 32  # the built-in model's T5 length (ralu_export.shapes_model.TEXT_LENGTH)
NOISE_SOURCES = ("diffusers", "runtime")  # whose initial-noise draw flux_pipeline_images uses


def flux_pipeline_images(pipe, prompts: list[str], seeds: list[int], steps: int, size: int = 128,
                         batch: int = 16, max_sequence_length: int = TEXT_LENGTH,
                         sampling: RecordedSampling | None = None, noise: str = "diffusers") -> np.ndarray:
    """uint8 images [B, size, size, 3]. Initial noise of image i: noise="diffusers" draws it as FluxPipeline does
    from torch.Generator().manual_seed(seeds[i]); noise="runtime" passes `ralu-run`'s own draw for seeds[i]
    (ralu_edge.rng.initial_noise) as `latents`, so the image pairs with the runtime's for that seed. `sampling`:
    the model's recorded settings (ralu_export.models.recorded_sampling), passed to FluxPipeline as
    true_cfg_scale / negative_prompt when it records classifier-free guidance."""
    from ralu_edge.rng import initial_noise
    from ralu_export.torch_backend import packed_grid

    if noise not in NOISE_SOURCES:
        raise ValueError(f"noise must be one of {NOISE_SOURCES}, got {noise!r}")
    sampling = sampling or RecordedSampling()
    grid_h, grid_w = packed_grid(pipe, size, size)
    out = []
    for i in range(0, len(prompts), batch):
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds[i:i + batch]]
        latents = None
        if noise == "runtime":
            latents = torch.from_numpy(np.concatenate(
                [initial_noise(int(s), grid_h * grid_w, pipe.transformer.config.in_channels)
                 for s in seeds[i:i + batch]]))
        images = pipe(prompts[i:i + batch], num_inference_steps=steps, height=size, width=size,
                      max_sequence_length=max_sequence_length, generator=gens, latents=latents, output_type="np",
                      **sampling.flux_pipeline_kwargs(len(gens))).images
        out.append(np.clip(np.round(images * 255.0), 0, 255).astype(np.uint8))
    return np.concatenate(out)


def image_grid(images: np.ndarray, columns: int = 8) -> np.ndarray:
    """Tile uint8 images [B, H, W, 3] into one [rows*H, columns*W, 3] image (blank cells at the end)."""
    b, h, w, c = images.shape
    rows = -(-b // columns)
    grid = np.full((rows * h, columns * w, c), 255, dtype=np.uint8)
    for i in range(b):
        r, q = divmod(i, columns)
        grid[r * h:(r + 1) * h, q * w:(q + 1) * w] = images[i]
    return grid
