"""Memory-lean loading of one diffusers model folder saved as safetensors (issue 8 "Large weights"): the
module is built on the meta device (no random initialisation, no memory) and its parameters are assigned
the checkpoint's tensors, shard by shard. safetensors.torch.load_file memory-maps the shard: its tensors are
file-backed views whose pages are read on first touch and count once in RSS. Without `accelerate`,
diffusers' from_pretrained uses low_cpu_mem_usage=False instead: a randomly initialised module plus the
checkpoint, 2x the weights at peak (ENVIRONMENT.md), which is what a 12 B-parameter FLUX cannot afford.

Tensors stored in another floating dtype than the export's (bf16 FLUX.1 checkpoints) are cast one at a time
while their shard is mapped, so the peak is the float32 weights plus one shard. Anything this path does not
cover (no safetensors, keys the module does not have, parameters left unset) returns None and the caller
uses diffusers' own loading."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)


WEIGHT_NAMES = ("diffusion_pytorch_model", "model")  # diffusers' and transformers' default (non-variant) names


def safetensors_shards(folder: Path) -> list[Path]:
    """The default safetensors checkpoint of a diffusers/transformers model folder: the shards its index
    lists, or the single file; empty when it has neither. Variants (`*.fp16.safetensors`) are not defaults:
    diffusers loads them only when asked."""
    for stem in WEIGHT_NAMES:
        index = folder / f"{stem}.safetensors.index.json"
        if index.is_file():
            return [folder / name for name in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
        if (folder / f"{stem}.safetensors").is_file():
            return [folder / f"{stem}.safetensors"]
    return []


def load_model_lean(model_cls, folder: Path, dtype: torch.dtype = torch.float32):
    """`model_cls` (a diffusers ModelMixin) from `folder` with parameters that are views of the memory-mapped
    checkpoint (cast to `dtype` where stored otherwise), in eval mode; None when the folder is not a plain
    safetensors checkpoint of exactly this module."""
    from safetensors.torch import load_file

    shards = safetensors_shards(folder)
    if not shards or not (folder / "config.json").is_file():
        return None
    with torch.device("meta"):
        model = model_cls.from_config(model_cls.load_config(str(folder)))
    expected = set(model.state_dict())
    seen: set[str] = set()
    for shard in shards:
        state = load_file(str(shard))
        unknown = set(state) - expected
        if unknown:
            log.info("%s: %d checkpoint keys the module lacks (e.g. %s); using diffusers' loader", folder,
                     len(unknown), sorted(unknown)[0])
            return None
        for key, tensor in state.items():
            if tensor.is_floating_point() and tensor.dtype != dtype:
                state[key] = tensor.to(dtype)  # one tensor at a time; the mapped original is released below
        model.load_state_dict(state, strict=False, assign=True)
        seen.update(state)
        del state
    left = [name for name, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if expected - seen or left:
        log.info("%s: %d parameters missing from the checkpoint; using diffusers' loader", folder,
                 len(expected - seen) or len(left))
        return None
    model.register_to_config(_name_or_path=str(folder))
    return model.eval()


def lean_components(pipeline_folder: Path, names: tuple[str, ...] = ("transformer",)) -> dict[str, object]:
    """{component: model} for the pipeline's diffusers components in `names` that load lean, to pass to
    `DiffusionPipeline.from_pretrained(folder, **components)`; components that do not are left to it. The
    denoiser is the only component whose size matters here (FLUX.1: 12 B parameters)."""
    import diffusers

    index = json.loads((pipeline_folder / "model_index.json").read_text())
    out = {}
    for name in names:
        library, class_name = (index.get(name) or (None, None))[:2]
        model_cls = getattr(diffusers, class_name, None) if library == "diffusers" else None
        model = load_model_lean(model_cls, pipeline_folder / name) if model_cls is not None else None
        if model is not None:
            out[name] = model
    return out
