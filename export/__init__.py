"""ralu_export: the torch side of ralu-edge (the built-in `shapes` model and its training, the torch
reference backend, exporters, quantization, evaluation). May import ralu_edge and ralu_runtime."""

from __future__ import annotations

from pathlib import Path

from ralu_edge.errors import UserError

__version__ = "0.1.0"

_BUILTIN_ROOT = Path(__file__).resolve().parent / "builtin"
BUILTIN_MODELS = ("shapes",)


def builtin_model_path(name: str) -> Path:
    """The folder of a built-in diffusers pipeline shipped inside this package (`save_pretrained` layout)."""
    if name not in BUILTIN_MODELS:
        raise UserError(f"unknown built-in model {name!r}; choose one of: {', '.join(BUILTIN_MODELS)}, "
                        "or pass the path of a local diffusers pipeline folder.")
    path = _BUILTIN_ROOT / name
    if not (path / "model_index.json").is_file():
        raise UserError(f"the built-in model {name!r} is missing its weights at {path}; reinstall ralu-edge "
                        "or retrain it with `ralu-train all` (docs/shapes-model.md).")
    return path


def builtin_file(name: str) -> Path:
    """A file shipped beside the built-in models (e.g. the attribute classifier's weights)."""
    return _BUILTIN_ROOT / name
