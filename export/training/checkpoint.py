"""Training checkpoints without pickle (STYLE.md): module and optimizer tensors in one safetensors file,
counters in a JSON sidecar, both written to temporary names and moved into place atomically (the JSON last,
so a checkpoint is complete exactly when its JSON exists)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    state = opt.state_dict()
    tensors, meta = {}, {"param_groups": state["param_groups"], "scalars": {}}
    for idx, entry in state["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"opt.{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                meta["scalars"][f"{idx}.{key}"] = value
    return tensors, meta


def save_checkpoint(path: Path, modules: dict[str, torch.nn.Module], opt: torch.optim.Optimizer,
                    step: int, extra: dict | None = None) -> None:
    """Write `path`.safetensors + `path`.json atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors, meta = _flatten_optimizer(opt)
    for name, module in modules.items():
        for key, value in module.state_dict().items():
            tensors[f"{name}.{key}"] = value.detach().cpu().clone()  # clone: T5 ties two keys
    tmp = path.with_suffix(".safetensors.tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, path.with_suffix(".safetensors"))
    meta.update(step=step, extra=extra or {})
    tmp_json = path.with_suffix(".json.tmp")
    tmp_json.write_text(json.dumps(meta))
    os.replace(tmp_json, path.with_suffix(".json"))


def load_checkpoint(path: Path, modules: dict[str, torch.nn.Module], opt: torch.optim.Optimizer) -> tuple[int, dict]:
    """Restore modules and optimizer from `path`; returns (step, extra). Call only when `path`.json exists."""
    meta = json.loads(path.with_suffix(".json").read_text())
    tensors = load_file(str(path.with_suffix(".safetensors")))
    for name, module in modules.items():
        prefix = name + "."
        module.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    state: dict = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    for key, value in meta["scalars"].items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return meta["step"], meta["extra"]


def has_checkpoint(path: Path) -> bool:
    return path.with_suffix(".json").is_file()
