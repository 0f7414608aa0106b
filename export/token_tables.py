"""Token-embedding tables shipped beside the text encoders (`<encoder>/token_embeddings.safetensors`, one
float32 `weight` [vocab_rows, hidden]): on-device personalization starts a new token from its init word's row
(spec/ZO_PERSONALIZATION.md §8), and the runtime, which never imports torch or onnx, cannot read the row out
of a graph. Read straight from the pipeline's safetensors (one tensor, no model load)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from ralu_edge.errors import UserError

# Where each text-encoder class keeps its input embedding table (transformers 4.57 layout; T5 ties
# `shared.weight` and `encoder.embed_tokens.weight`).
_TABLE_KEYS = ("text_model.embeddings.token_embedding.weight", "shared.weight", "encoder.embed_tokens.weight")


def _tensor(folder: Path, key: str) -> np.ndarray | None:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shard = json.loads(index.read_text())["weight_map"].get(key)
        files = [folder / shard] if shard else []
    else:
        files = [folder / "model.safetensors"]
    for path in files:
        if path.is_file():
            with safe_open(str(path), framework="np") as f:
                if key in f.keys():
                    return f.get_tensor(key).astype(np.float32)
    return None


def token_table(encoder_folder: Path) -> np.ndarray:
    """The input embedding table of a saved text encoder: [vocab_rows, hidden] float32."""
    for key in _TABLE_KEYS:
        table = _tensor(encoder_folder, key)
        if table is not None:
            return table
    raise UserError(f"{encoder_folder}: no token-embedding table ({', '.join(_TABLE_KEYS)}) in its safetensors; "
                    "is this a CLIP or T5 text encoder saved with save_pretrained?")


def write_token_embeddings(source: Path, root: Path, encoders: list[str]) -> dict[str, str]:
    """Write `<encoder>/token_embeddings.safetensors` into the bundle `root` for every encoder folder name;
    returns {encoder: bundle-relative path}."""
    paths = {}
    for name in encoders:
        rel = f"{name}/token_embeddings.safetensors"
        (root / name).mkdir(parents=True, exist_ok=True)
        save_file({"weight": np.ascontiguousarray(token_table(source / name))}, str(root / rel))
        paths[name] = rel
    return paths
