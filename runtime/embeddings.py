"""learned_embeds.safetensors in diffusers' Textual Inversion layout, one entry per text encoder
(`clip_l`, `clip_g`, `t5`, as diffusers' FLUX/SD3 TI files name them; each [num_vectors=1, hidden]) with the
token string in the file's metadata. Read and written without torch (safetensors.numpy)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save

from ralu_edge.errors import UserError
from ralu_edge.manifest import Manifest
from ralu_runtime.backends import LearnedTokens


def entry_names(manifest: Manifest) -> dict[str, str]:
    """{text_encoder_name: file key}: CLIP encoders in order get clip_l, clip_g; the T5 encoder gets t5."""
    names, clip_keys = {}, iter(("clip_l", "clip_g"))
    for e in manifest.text_encoders:
        names[e.name] = next(clip_keys) if e.kind == "clip" else "t5"
    return names


def load_learned_embeds(path: Path, manifest: Manifest) -> LearnedTokens:
    """The learned token and its per-encoder embeddings, checked against the bundle's encoders."""
    if not path.is_file():
        raise UserError(f"{path}: no such embeddings file; pass the learned_embeds.safetensors that "
                        "ralu-personalize wrote.")
    try:
        with safe_open(str(path), framework="np") as f:
            meta = f.metadata() or {}
            arrays = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for damaged files
        raise UserError(f"{path}: not a readable safetensors file ({e.__class__.__name__}).") from None
    token = meta.get("token")
    if not token:
        raise UserError(f"{path}: the file names no token in its metadata; write it with ralu-personalize.")
    per_encoder = {}
    for encoder in manifest.text_encoders:
        key = entry_names(manifest)[encoder.name]
        if key not in arrays:
            raise UserError(f"{path}: no {key!r} entry for {encoder.name}; the file was made for another model.")
        if arrays[key].dtype.kind != "f":
            raise UserError(f"{path}: {key!r} holds {arrays[key].dtype} values, not floats; write the file with "
                            "ralu-personalize.")
        with np.errstate(over="ignore"):  # a float64 beyond float32's range becomes inf, refused just below
            vec = np.asarray(arrays[key], dtype=np.float32).reshape(-1)
        if not np.isfinite(vec).all():
            raise UserError(f"{path}: {key!r} holds NaN, infinite or out-of-range values; train the token again.")
        if vec.shape != (encoder.hidden_size,):
            raise UserError(f"{path}: {key!r} has {vec.size} values but {encoder.name} needs "
                            f"{encoder.hidden_size}; the file was made for another model.")
        per_encoder[encoder.name] = vec
    return LearnedTokens({token: per_encoder})


def save_learned_embeds(path: Path, token: str, per_encoder: dict[str, np.ndarray], manifest: Manifest,
                        extra_metadata: dict[str, str] | None = None) -> Path:
    """Write the file atomically (temporary name in the same folder, then os.replace), byte-identical for
    identical inputs and with the permissions of any new file (umask), not 0600."""
    keys = entry_names(manifest)
    tensors = {keys[name]: np.asarray(vec, dtype=np.float32).reshape(1, -1) for name, vec in per_encoder.items()}
    data = canonical_safetensors(save(tensors, metadata={"format": "pt", "token": token, **(extra_metadata or {})}))
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def canonical_safetensors(data: bytes) -> bytes:
    """The same safetensors file with its JSON header's keys sorted: the library writes its metadata map in a
    per-process random order (a Rust HashMap), so two identical runs would write different bytes. The tensor
    data and offsets are untouched; the header is re-padded with spaces to 8 bytes as the format asks."""
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data[8 + size:]
