"""LoRA files applied to an exported bundle at session creation, without torch and without re-export (issue 17,
docs/lora.md). A `.safetensors` LoRA in diffusers/PEFT naming (`transformer.<module>.lora_A.weight`, ...) or in
one of the other names diffusers' converter accepts for the bundle's model (kohya's `lora_unet_...`,
`lora_te1_...`: the manifest's `lora.aliases`, recorded at export from diffusers itself) is read, checked
against the modules the manifest says it can patch, and merged on the host: W' = W + s·(α/r)·B·A
(ralu_edge.lora), re-quantized per channel where the graph holds int8. The merged tensors go to ONNX Runtime as
initializer overrides when a session opens (`SessionOptions.add_initializer`): no graph is rewritten, no file
written. Imports numpy, safetensors and ralu_edge only."""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ralu_edge.errors import UserError
from ralu_edge.lora import LoraFactors, merged_weight, requantized
from ralu_edge.manifest import LoraTarget, Manifest, TensorLocation
from ralu_runtime.bundle import Bundle

# key suffix -> factor; the module part before it must be a module or alias name the manifest records
_SUFFIXES = ((".lora_A.weight", "down"), (".lora_B.weight", "up"),
             (".lora_linear_layer.down.weight", "down"), (".lora_linear_layer.up.weight", "up"),
             (".lora.down.weight", "down"), (".lora.up.weight", "up"),
             (".lora_down.weight", "down"), (".lora_up.weight", "up"), (".alpha", "alpha"))
_METADATA_KEY = "lora_adapter_metadata"  # diffusers' save_lora_weights (LORA_ADAPTER_METADATA_KEY)


@dataclass(frozen=True)
class LoraRequest:
    """A LoRA file and the scale it is applied with."""

    path: Path
    scale: float = 1.0

    @classmethod
    def parse(cls, text: str) -> "LoraRequest":
        """`path[:scale]`, as `ralu-run --lora` takes it; UserError for a scale that is not a finite number."""
        path, sep, scale_text = text.rpartition(":")
        if not sep or "/" in scale_text or scale_text.endswith(".safetensors"):
            return cls(Path(text), 1.0)
        try:
            scale = float(scale_text)
        except ValueError:
            raise UserError(f"--lora {text!r}: the scale after ':' must be a number, e.g. {path}:0.8.") from None
        if not math.isfinite(scale):
            raise UserError(f"--lora {text!r}: the scale must be a finite number, e.g. {path}:0.8.")
        return cls(Path(path), scale)


@dataclass(frozen=True)
class LoadedLora:
    """A LoRA checked against a bundle: {module: factors (scale included)}."""

    name: str
    path: Path
    scale: float
    modules: dict[str, LoraFactors]

    def describe(self) -> dict:
        return {"name": self.name, "path": str(self.path), "scale": self.scale, "modules": len(self.modules)}


def _module_shapes(manifest: Manifest) -> dict[str, tuple[int, int]]:
    """[out, in] of every module some graph of the bundle can patch."""
    shapes = {}
    for graph in manifest.graphs:
        for t in graph.lora_targets:
            shape = t.weight_at.shape
            if t.layout == "nbits":
                shapes[t.module] = (shape[0], shape[1] * shape[2])
            else:
                shapes[t.module] = tuple(reversed(shape)) if t.transposed else tuple(shape)
    return shapes


def _read_tensors(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The file's tensors as float32 and its metadata; UserError for a missing, pickled or damaged file."""
    if not path.is_file():
        raise UserError(f"{path}: no such LoRA file; pass a .safetensors LoRA with --lora PATH[:SCALE].")
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:1] == b"\x80" or head[:4] == b"PK\x03\x04":
        raise UserError(f"{path}: is a pickled PyTorch checkpoint, which can run code when loaded; LoRAs are read "
                        "from .safetensors only (save it with safetensors.torch.save_file).")
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = f.metadata() or {}
            tensors = {k: np.asarray(f.get_tensor(k), dtype=np.float32) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, TypeError) as e:
        raise UserError(f"{path}: not a readable .safetensors LoRA ({' '.join(str(e).split())[:120]}); pass the "
                        "file a LoRA trainer or diffusers' save_lora_weights wrote.") from None
    return tensors, metadata


def _split_key(key: str) -> tuple[str, str] | None:
    for suffix, kind in _SUFFIXES:
        if key.endswith(suffix):
            return key[:-len(suffix)], kind
    return None


def _default_alphas(path: Path, metadata: dict, ranks: dict[str, int]) -> dict[str, float]:
    """α per component where the file has no `.alpha` key: diffusers' rule (get_peft_kwargs) — the adapter
    metadata's lora_alpha when saved, else the component's most common rank."""
    try:
        saved = json.loads(metadata.get(_METADATA_KEY, "{}"))
    except json.JSONDecodeError:
        raise UserError(f"{path}: its {_METADATA_KEY} metadata is not JSON; re-save the LoRA.") from None
    alphas = {}
    for component in {m.split(".", 1)[0] for m in ranks}:
        if saved.get(f"{component}.alpha_pattern") or saved.get(f"{component}.rank_pattern"):
            raise UserError(f"{path}: per-module alpha or rank patterns in its metadata are not supported; "
                            "re-save the LoRA with one lora_alpha per component.")
        common = Counter(r for m, r in ranks.items() if m.startswith(component + ".")).most_common(1)[0][0]
        alphas[component] = float(saved.get(f"{component}.lora_alpha", common))
    return alphas


def load_lora(bundle: Bundle, request: LoraRequest) -> LoadedLora:
    """Read and check one LoRA file against the bundle (every check before any session changes)."""
    manifest, path = bundle.manifest, request.path
    spec = manifest.lora
    if spec is None or not spec.components:
        raise UserError(spec.note if spec is not None and spec.note else
                        f"{bundle.root.name}: this bundle records no LoRA targets (exported before LoRA support); "
                        "export it again with this ralu-export.")
    shapes = _module_shapes(manifest)
    aliases = {a.name: a for a in spec.aliases}
    tensors, metadata = _read_tensors(path)
    groups: dict[str, dict[str, np.ndarray]] = {}
    unknown = []
    for key, value in tensors.items():
        split = _split_key(key)
        if split is None or (split[0] not in shapes and split[0] not in aliases):
            unknown.append(key)
            continue
        groups.setdefault(split[0], {})[split[1]] = value
    if unknown:
        split = _split_key(unknown[0])
        if split is not None and split[0].split(".", 1)[0] in spec.components and manifest.precision == "int4":
            raise UserError(f"{path}: {unknown[0]!r} addresses a weight this int4 bundle holds in 4-bit blocks, "
                            "which take no LoRA; use an fp32 or int8 bundle of the model.")
        raise UserError(f"{path}: {len(unknown)} of its {len(tensors)} keys name no weight this bundle's "
                        f"{manifest.model.pipeline_class} can take (first: {unknown[0]!r}); the LoRA was made for "
                        "another model or in a format diffusers does not load for it.")
    if not groups:
        raise UserError(f"{path}: holds no LoRA weights; pass a LoRA .safetensors file.")
    ranks = {}
    for name, parts in groups.items():
        if "down" not in parts or "up" not in parts:
            raise UserError(f"{path}: {name} has no {'up (B)' if 'down' in parts else 'down (A)'} matrix; the "
                            "file is incomplete.")
        down, up = parts["down"], parts["up"]
        if down.ndim != 2 or up.ndim != 2 or up.shape[1] != down.shape[0]:
            raise UserError(f"{path}: {name} has factors of shapes {list(down.shape)} and {list(up.shape)}, which "
                            "do not multiply; the file is damaged.")
        ranks[name if name in shapes else aliases[name].parts[0].module] = down.shape[0]
    alphas = _default_alphas(path, metadata, ranks)
    modules: dict[str, LoraFactors] = {}
    for name, parts in groups.items():
        down, up = parts["down"], parts["up"]
        rank = down.shape[0]
        pieces = ([(p.module, up[p.start:p.stop]) for p in aliases[name].parts] if name in aliases
                  else [(name, up)])
        if name in aliases and up.shape[0] != aliases[name].parts[-1].stop:
            raise UserError(f"{path}: {name} has {up.shape[0]} output rows, but this bundle's model has "
                            f"{aliases[name].parts[-1].stop} there; the LoRA was made for another base model.")
        for module, module_up in pieces:
            alpha = float(parts["alpha"].reshape(-1)[0]) if "alpha" in parts else alphas[module.split(".", 1)[0]]
            out_features, in_features = shapes[module]
            if down.shape[1] != in_features or module_up.shape[0] != out_features:
                raise UserError(f"{path}: {name} is a LoRA for a [{module_up.shape[0]}, {down.shape[1]}] weight, but "
                                f"this bundle's {module} is [{out_features}, {in_features}]; the LoRA was made for "
                                "another base model.")
            modules[module] = LoraFactors(down, np.ascontiguousarray(module_up), request.scale * alpha / rank)
    return LoadedLora(path.stem, path, request.scale, modules)


def _read_at(bundle: Bundle, at: TensorLocation) -> np.ndarray:
    count = int(np.prod(at.shape))
    return np.fromfile(bundle.path(at.file), dtype=np.dtype(at.dtype), count=count, offset=at.offset).reshape(at.shape)


def _target_overrides(bundle: Bundle, target: LoraTarget, factors: list[LoraFactors]) -> dict[str, np.ndarray]:
    """The merged tensors replacing one target, in the graph's own layout."""
    base = _read_at(bundle, target.weight_at)
    if target.layout == "float":
        merged = merged_weight(base.T if target.transposed else base, factors)
        return {target.weight: np.ascontiguousarray(merged.T if target.transposed else merged)}
    scales = _read_at(bundle, target.scale_at)
    if target.layout == "qdq":
        q, scale = requantized(base.T if target.transposed else base, scales, factors)
        return {target.weight: np.ascontiguousarray(q.T if target.transposed else q), target.scale: scale}
    out_features, blocks, block_size = target.weight_at.shape  # nbits: uint8 q + 128, scale repeated per block
    q_base = (base.reshape(out_features, blocks * block_size).astype(np.int16) - 128).astype(np.int8)
    q, scale = requantized(q_base, scales.reshape(out_features, blocks)[:, 0], factors)
    return {target.weight: (q.astype(np.int16) + 128).astype(np.uint8).reshape(target.weight_at.shape),
            target.scale: np.repeat(scale, blocks)}


def lora_overrides(bundle: Bundle, loras: list[LoadedLora]) -> dict[str, dict[str, np.ndarray]]:
    """{graph name: {initializer: merged tensor}} for every graph a LoRA in `loras` touches (empty: none)."""
    overrides: dict[str, dict[str, np.ndarray]] = {}
    merged: dict[tuple, list[np.ndarray]] = {}  # graphs reading the same stored tensors share one merge
    for graph in bundle.manifest.graphs:
        for target in graph.lora_targets:
            factors = [lora.modules[target.module] for lora in loras if target.module in lora.modules]
            if factors:
                key = (target.module, target.layout, target.transposed, target.weight_at, target.scale_at)
                if key not in merged:
                    merged[key] = list(_target_overrides(bundle, target, factors).values())
                names = [target.weight] + ([target.scale] if target.layout != "float" else [])
                overrides.setdefault(graph.name, {}).update(zip(names, merged[key]))
    return overrides
