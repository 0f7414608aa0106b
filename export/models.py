"""Resolving and loading diffusers pipelines: a built-in name (`shapes`) or a local pipeline folder.
Every user mistake (unknown name, missing folder, corrupt files) becomes one UserError sentence."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ralu_edge.errors import UserError
from ralu_export import BUILTIN_MODELS, builtin_model_path

SUPPORTED_PIPELINES = ("FluxPipeline", "StableDiffusion3Pipeline")


def resolve_model(model: str) -> Path:
    """The pipeline folder for a built-in name or a path; checks model_index.json before any loading."""
    if model in BUILTIN_MODELS:
        return builtin_model_path(model)
    path = Path(model)
    if not path.exists():
        raise UserError(f"model {model!r} is neither a built-in model ({', '.join(BUILTIN_MODELS)}) nor an "
                        "existing folder; pass `shapes` or the path of a local diffusers pipeline folder.")
    index = path / "model_index.json"
    if not index.is_file():
        raise UserError(f"{path}: no model_index.json, so this is not a diffusers pipeline folder; pass the "
                        "folder that `save_pretrained` wrote.")
    try:
        cls = json.loads(index.read_text()).get("_class_name")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{index}: not valid JSON ({e.__class__.__name__}); re-save the pipeline.") from None
    if cls not in SUPPORTED_PIPELINES:
        raise UserError(f"{index}: pipeline class {cls!r} is not supported yet; supported: "
                        f"{', '.join(SUPPORTED_PIPELINES)}.")
    return path


def load_flux_pipeline(model: str):
    """A diffusers FluxPipeline in float32 on the CPU, offline."""
    from diffusers import FluxPipeline

    return _load_pipeline(FluxPipeline, model)


def load_sd3_pipeline(model: str):
    """A diffusers StableDiffusion3Pipeline in float32 on the CPU, offline."""
    from diffusers import StableDiffusion3Pipeline

    return _load_pipeline(StableDiffusion3Pipeline, model)


def _load_pipeline(pipeline_class, model: str):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = resolve_model(model)
    from safetensors import SafetensorError  # lean_load reads shards itself, so a truncated one raises this

    try:
        from ralu_export.lean_load import lean_components  # issue 8: the denoiser memory-mapped, not copied

        pipe = pipeline_class.from_pretrained(str(path), local_files_only=True, **lean_components(path))
    except (OSError, ValueError, RuntimeError, KeyError, json.JSONDecodeError, SafetensorError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        raise UserError(f"{path}: the pipeline folder could not be loaded ({first[:200]}); re-export or re-save "
                        "it.") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe
