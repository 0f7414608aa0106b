"""Resolving and loading diffusers pipelines: a built-in name (`shapes`) or a local pipeline folder, and
the sampling settings recorded with a model (`sampling.json`). Every user mistake (unknown name, missing
folder, corrupt files, a malformed sampling.json) becomes one UserError sentence."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from ralu_edge.errors import UserError
from ralu_export import BUILTIN_MODELS, builtin_model_path

SAMPLING_FILE = "sampling.json"


def resolve_model(model: str) -> Path:
    """The pipeline folder for a built-in name or a path; checks model_index.json before any loading, and that
    an export family (ralu_export.families) takes its pipeline class."""
    from ralu_export.families import FAMILIES  # the families load their pipelines through this module

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
    if cls not in FAMILIES:
        raise UserError(f"{index}: pipeline class {cls!r} is not supported yet; supported: "
                        f"{', '.join(FAMILIES)}.")
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


@dataclass(frozen=True)
class RecordedSampling:
    """How a model is meant to be sampled, as its pipeline folder records it in `sampling.json`.

    true_cfg_scale: classifier-free guidance scale s > 1 (v = v_u + s·(v_c − v_u), the negative prompt's
    velocity v_u first: diffusers FluxPipeline's `true_cfg_scale`), or None for no CFG (no file).
    negative_prompt: the prompt of v_u; only "" (the empty prompt the model was trained to drop captions to)."""

    true_cfg_scale: float | None = None
    negative_prompt: str = ""

    @property
    def guided(self) -> bool:
        return self.true_cfg_scale is not None

    def flux_pipeline_kwargs(self, batch: int) -> dict:
        """Keyword arguments that make FluxPipeline sample a batch of `batch` prompts this way ({} without CFG;
        one negative prompt per prompt, since FluxPipeline does not broadcast a single one)."""
        if not self.guided:
            return {}
        return {"true_cfg_scale": self.true_cfg_scale, "negative_prompt": [self.negative_prompt] * batch}


def recorded_sampling(folder: str | Path) -> RecordedSampling:
    """The sampling settings recorded in `folder/sampling.json`; no file means no CFG (RecordedSampling()).

    Schema, a JSON object: {"true_cfg_scale": <finite number > 1>, "negative_prompt": ""}; negative_prompt
    is optional ("" is the only value the runtime and the Kotlin core encode) and no other key is allowed.
    Anything else is a UserError naming the file and the fix, raised before any model loads."""
    path = Path(folder) / SAMPLING_FILE
    if not path.exists():
        return RecordedSampling()
    fix = 'write e.g. {"true_cfg_scale": 3.0, "negative_prompt": ""} or delete the file for no guidance'
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not a readable JSON file ({e.__class__.__name__}); {fix}.") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: must hold a JSON object, not {type(data).__name__}; {fix}.")
    unknown = sorted(set(data) - {"true_cfg_scale", "negative_prompt"})
    if unknown:
        raise UserError(f"{path}: unknown key(s) {', '.join(map(repr, unknown))}; {fix}.")
    scale = data.get("true_cfg_scale")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 1:
        raise UserError(f"{path}: true_cfg_scale must be a finite number above 1, got {scale!r}; {fix}.")
    negative = data.get("negative_prompt", "")
    if negative != "":
        raise UserError(f"{path}: negative_prompt must be \"\" (the empty prompt; no tool encodes another), got "
                        f"{negative!r}; {fix}.")
    return RecordedSampling(float(scale), negative)
