"""An export request and its validated plan: `plan_export` turns an ExportConfig (the CLI's arguments) into a
Plan — model folder, family, target, geometry, presets, recorded sampling — raising every error a user can
cause before any model loads. Every stage after it (targets/, onnx_graphs, static_programs, bundle) takes
the typed Plan. Imports no torch and no target module."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ralu_edge import presets as ralu_presets
from ralu_edge.errors import UserError
from ralu_edge.manifest import Resolution
from ralu_export.families import family_for
from ralu_export.families.spec import FamilySpec, Geometry, GraphSpec
from ralu_export.int8_policy import INT4_METHODS, Int8Method, int8_method
from ralu_export.models import RecordedSampling, recorded_sampling, resolve_model
from ralu_export.targets import PRECISIONS, TargetSpec, target_spec


@dataclass(frozen=True)
class ExportConfig:
    """One export request (the CLI's arguments). height/width default to the model's native size,
    presets to the family's defaults."""

    model: str
    target: str
    out: Path
    precision: str = "fp32"
    height: int | None = None
    width: int | None = None
    presets: tuple[str, ...] | None = None
    force: bool = False
    attention: str | None = None  # "fused" | "unfused"; None: the target's choice (TargetSpec.fused_attention)


@dataclass(frozen=True)
class Plan:
    """A validated request: the model folder, family, target, geometry, presets and the sampling settings
    the folder records (sampling.json)."""

    config: ExportConfig
    source: Path
    family: FamilySpec
    target: TargetSpec
    geometry: Geometry
    presets: tuple[ralu_presets.RaluPreset, ...]
    sampling: RecordedSampling = RecordedSampling()

    @property
    def fused_attention(self) -> bool:
        """Whether the denoiser's attentions become MultiHeadAttention (attention_fusion)."""
        if self.config.attention is None:
            return self.target.fused_attention
        return self.config.attention == "fused"

    @property
    def pipeline_class(self) -> str:
        return self.family.pipeline_class

    @property
    def guidance_scale(self) -> float | None:
        """The manifest's classifier-free guidance scale: the model's recorded true_cfg_scale, else the
        family's default (SD3 7.0 as diffusers; FLUX None, no CFG)."""
        return self.sampling.true_cfg_scale if self.sampling.guided else self.family.guidance_scale

    @property
    def resolution(self) -> Resolution:
        g = self.geometry
        return Resolution(g.height, g.width, g.latent_height, g.latent_width, g.grid_height, g.grid_width)

    @property
    def stage_lengths(self) -> tuple[int, ...]:
        """Every image-token count a denoiser graph must serve, ascending (full resolution included)."""
        g = self.geometry
        lengths = {g.grid_height * g.grid_width}
        for preset in self.presets:
            lengths.update(preset.stage_lengths(g.grid_height, g.grid_width))
        return tuple(sorted(lengths))

    def graphs(self) -> list[GraphSpec]:
        """The family's graphs that the target ships, in declaration order."""
        return [spec for spec in self.family.graphs if self.target.name in spec.targets]

    def int8_method(self, spec: GraphSpec) -> Int8Method | None:
        """How this bundle quantizes the graph of `spec`, None for float (int8_policy.py)."""
        return int8_method(self.target.name, self.config.precision, spec)


def plan_export(config: ExportConfig) -> Plan:
    """Validate everything a user can get wrong, before any model loads; UserError names the fix."""
    target = target_spec(config.target)
    if config.precision not in PRECISIONS:
        raise UserError(f"unknown precision {config.precision!r}; choose one of {', '.join(PRECISIONS)}.")
    if config.precision == "int4" and target.name not in INT4_METHODS:
        raise UserError(f"precision int4 (ONNX Runtime's MatMulNBits) is for the {' and '.join(INT4_METHODS)} "
                        f"targets; export the {target.name} bundle with --precision int8 or fp32.")
    if config.attention not in (None, "fused", "unfused"):
        raise UserError(f"unknown attention {config.attention!r}; choose fused or unfused.")
    if config.attention == "fused" and not target.fused_attention:
        raise UserError(f"--attention fused (ONNX Runtime's MultiHeadAttention) is for the desktop target; the "
                        f"{target.name} bundle keeps the attention ops as exported.")
    check_out(Path(config.out), config.force)
    source = resolve_model(config.model)
    sampling = recorded_sampling(source)
    family = family_for(json.loads((source / "model_index.json").read_text()).get("_class_name"))
    vae_config = json.loads((source / "vae" / "config.json").read_text())
    native = int(vae_config.get("sample_size", 1024))
    height = native if config.height is None else config.height
    width = native if config.width is None else config.width
    geometry = family.geometry(source, height, width)
    step = geometry.vae_factor * geometry.patch * 2
    for label, value in (("height", height), ("width", width)):
        if not isinstance(value, int) or value < step or value % step:
            raise UserError(f"{label} {value} is not a positive multiple of {step} (VAE factor "
                            f"{geometry.vae_factor} x 2x2 packing x 2 for RALU's low-res grid); try {native}.")
    names = config.presets if config.presets is not None else family.default_presets
    if not names:
        raise UserError("no RALU preset requested; pass e.g. --presets flux-4x.")
    chosen = tuple(ralu_presets.get(name) for name in names)
    plan = Plan(config, source, family, target, geometry, chosen, sampling)
    if target.max_weight_bytes is not None:
        weights = weight_bytes(plan)
        if weights > target.max_weight_bytes:
            raise UserError(f"the {target.name} bundle of {source.name} would hold {_size(weights)} of weights "
                            f"({config.precision}), over the {_size(target.max_weight_bytes)} its runtime can "
                            "hold; export with --precision int8 or a smaller model.")
    return plan


def _size(n: int) -> str:
    return f"{n / 1024**3:.1f} GiB" if n >= 1024**3 else f"{n / 1024**2:.0f} MiB"


def weight_bytes(plan: Plan) -> int:
    """Bytes of weights the plan's graphs will hold, from the safetensors headers of the model folder (no tensor
    is read): each source component once, 4 bytes per parameter for a float graph, 1 for an int8 one."""
    from safetensors import safe_open

    per_source: dict[str, int] = {}
    for spec in plan.graphs():
        width = 4 if plan.int8_method(spec) is None else 1
        per_source[spec.source] = max(per_source.get(spec.source, 0), width)
    total = 0
    for source, width in per_source.items():
        for path in sorted((plan.source / source).glob("*.safetensors")):
            with safe_open(str(path), framework="np") as f:
                total += width * sum(int(np.prod(f.get_slice(k).get_shape())) for k in f.keys())
    return total


def check_out(out: Path, force: bool) -> None:
    """UserError, before any work, for an --out that this run may not replace (ralu-export, ralu-fleet)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is an existing file, not a folder; choose a folder path.")
    if out.exists() and not force:
        raise UserError(f"--out {out} already exists; pass --force to replace it or choose another folder.")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"--out {out}: {parent} is a file, not a folder; choose another path.")
            break
