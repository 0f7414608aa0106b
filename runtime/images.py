"""Writing images: PNGs that carry their generation parameters in a `parameters` text chunk (the A1111
convention other tools read), written to a temporary name and moved into place; side-by-side grids."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin


def latent_image_to_uint8(images: np.ndarray) -> np.ndarray:
    """VAE decoder output [B, 3, H, W] float in [-1, 1] -> uint8 [B, H, W, 3] (diffusers' postprocess)."""
    x = np.clip((np.asarray(images, dtype=np.float32) + 1.0) / 2.0, 0.0, 1.0)
    return np.round(x.transpose(0, 2, 3, 1) * 255.0).astype(np.uint8)


def parameters_text(prompt: str, fields: dict) -> str:
    """A1111-style parameters: the prompt, then `Key: value, ...` on the next line."""
    return prompt + "\n" + ", ".join(f"{k}: {v}" for k, v in fields.items())


def save_png(path: Path, image: np.ndarray, parameters: str) -> Path:
    """Write uint8 [H, W, 3] as PNG with a `parameters` chunk, atomically."""
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", parameters)
    tmp = path.with_name(path.name + ".tmp")
    try:
        Image.fromarray(image).save(tmp, format="PNG", pnginfo=info)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def side_by_side(images: list[np.ndarray], gap_px: int = 4) -> np.ndarray:
    """uint8 [H, W, 3] images of equal height joined left to right with white gaps."""
    h = images[0].shape[0]
    gap = np.full((h, gap_px, 3), 255, dtype=np.uint8)
    parts: list[np.ndarray] = []
    for i, im in enumerate(images):
        parts += ([gap] if i else []) + [im]
    return np.concatenate(parts, axis=1)


def load_rgb(path: Path, size: int | None = None) -> np.ndarray:
    """An image file as uint8 [H, W, 3] (centre-cropped to a square and resized when `size` is given)."""
    from ralu_edge.errors import UserError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if size is not None:
                side = min(im.size)
                left, top = (im.width - side) // 2, (im.height - side) // 2
                im = im.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)
            return np.asarray(im, dtype=np.uint8)
    except FileNotFoundError:
        raise UserError(f"{path}: no such image file.") from None
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable image ({e.__class__.__name__}); pass PNG or JPEG files.") from None
