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


def side_by_side(images: list[np.ndarray], labels: list[str] | None = None, gap_px: int = 4) -> np.ndarray:
    """uint8 [H, W, 3] images of equal height joined left to right with white gaps; with `labels`, each panel
    gets its label (e.g. "ralu-4x 0.21 s") in a white band above it."""
    if labels is not None:
        images = [_labelled(im, text) for im, text in zip(images, labels)]
    h = images[0].shape[0]
    gap = np.full((h, gap_px, 3), 255, dtype=np.uint8)
    parts: list[np.ndarray] = []
    for i, im in enumerate(images):
        parts += ([gap] if i else []) + [im]
    return np.concatenate(parts, axis=1)


def _labelled(image: np.ndarray, text: str, band_px: int = 14) -> np.ndarray:
    """The image under a white band holding `text` in Pillow's built-in bitmap font (no font files needed)."""
    from PIL import ImageDraw, ImageFont

    band = Image.new("RGB", (image.shape[1], band_px), "white")
    ImageDraw.Draw(band).text((2, 1), text, fill="black", font=ImageFont.load_default(size=10))
    return np.concatenate([np.asarray(band, dtype=np.uint8), image], axis=0)


def load_rgb(path: Path, size: int | None = None, min_side: int = 1) -> np.ndarray:
    """An image file as uint8 [H, W, 3] (centre-cropped to a square and resized when `size` is given);
    UserError when its shorter side is under `min_side` pixels (a thumbnail blown up teaches nothing)."""
    from ralu_edge.errors import UserError

    try:
        with Image.open(path) as im:
            if min(im.size) < min_side:
                raise UserError(f"{path}: {im.width}x{im.height} pixels, too small to learn from; use photos at "
                                f"least {min_side} pixels on the shorter side.")
            im = im.convert("RGB")
            if size is not None:
                side = min(im.size)
                left, top = (im.width - side) // 2, (im.height - side) // 2
                im = im.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)
            return np.asarray(im, dtype=np.uint8)
    except FileNotFoundError:
        raise UserError(f"{path}: no such image file.") from None
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise UserError(f"{path}: not a readable image ({e.__class__.__name__}); pass PNG or JPEG files.") from None
