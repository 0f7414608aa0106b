"""`ralu-export` as a library: validate an export request, build the bundle for one target in a temporary
folder beside the output, check every graph against torch, write the manifest last, and rename the folder
into place. A failed or interrupted export leaves nothing behind (the temporary folder is removed, and so
are the parent folders it created; a folder left by a killed export is removed by the next export to the same
path, told apart from a running one by its flock); an existing output is replaced only with force=True, and
only after the new bundle is complete.

Straight-line stages, one function each: plan_export (all user errors, before any model loads) ->
export graphs (ONNX + parity; onnx_export, quantize) -> target packaging (ort_format, executorch_export,
coreml_export) -> pipeline files and tokenizers (pipeline_files) -> manifest -> publish."""

from __future__ import annotations

import glob
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock, so stale temporary folders are left for the user to delete
    fcntl = None

from ralu_edge import presets as ralu_presets
from ralu_edge.errors import UserError
from ralu_edge.manifest import (
    BUNDLE_FORMAT, FORMAT_VERSION, DenoiserSpec, ExporterInfo, GraphEntry, Manifest, ModelInfo, PosEmbedSpec,
    PresetEntry,
    PresetStages, Resolution, RopeSpec, StageGraph, TextEncoderSpec, VaeSpec, file_entries, write_manifest,
)
from ralu_export.families import FamilySpec, Geometry, family_for
from ralu_export.models import RecordedSampling, recorded_sampling, resolve_model
from ralu_export.targets import PRECISIONS, TargetSpec, target_spec

log = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class Plan:
    """A validated request: the model folder, family, target, geometry, presets and the sampling settings
    the folder records (sampling.json)."""

    config: ExportConfig
    source: Path
    pipeline_class: str
    family: FamilySpec
    target: TargetSpec
    geometry: Geometry
    presets: tuple[ralu_presets.RaluPreset, ...]
    sampling: RecordedSampling = RecordedSampling()

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


def plan_export(config: ExportConfig) -> Plan:
    """Validate everything a user can get wrong, before any model loads; UserError names the fix."""
    target = target_spec(config.target)
    if config.precision not in PRECISIONS:
        raise UserError(f"unknown precision {config.precision!r}; choose one of {', '.join(PRECISIONS)}.")
    _check_out(Path(config.out), config.force)
    source = resolve_model(config.model)
    sampling = recorded_sampling(source)
    index = json.loads((source / "model_index.json").read_text())
    family = family_for(index.get("_class_name"))
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
    return Plan(config, source, index["_class_name"], family, target, geometry, chosen, sampling)


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is an existing file, not a folder; choose a folder path.")
    if out.exists() and not force:
        raise UserError(f"--out {out} already exists; pass --force to replace it or choose another folder.")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"--out {out}: {parent} is a file, not a folder; choose another path.")
            break


def build_bundle(config: ExportConfig) -> Path:
    """Export the bundle described by `config`; returns its path. See the module docstring for guarantees."""
    plan = plan_export(config)
    out = Path(config.out)
    made = _make_parents(out)
    try:
        _remove_stale_temporaries(out)
        tmp = Path(tempfile.mkdtemp(prefix=f"{out.name}.tmp-", dir=out.parent))
    except BaseException:
        _remove_empty(made)
        raise
    lock = _lock_folder(tmp)  # held until the bundle is published, so a later export can tell it is not stale
    try:
        graphs, extra = _build_graphs(plan, tmp)
        from ralu_export.pipeline_files import copy_pipeline_files, copy_tokenizers

        folders = {g.file.split("/")[0] for g in graphs} & _COMPONENT_FOLDERS
        copy_pipeline_files(plan.source, tmp, folders)
        tokenizers = copy_tokenizers(plan.source, tmp, plan.family, plan.geometry)
        from ralu_export.token_tables import write_token_embeddings

        tables = write_token_embeddings(plan.source, tmp, [e.graph for e in plan.family.encoders])
        manifest = _manifest(plan, tmp, graphs, tokenizers, extra, tables)
        write_manifest(tmp, manifest)
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_empty(made)
        raise
    finally:
        if lock is not None:
            os.close(lock)
    return out


def _make_parents(out: Path) -> list[Path]:
    """Create the missing parent folders of `out` (as `mkdir -p`); returns those created, deepest first."""
    missing = [p for p in out.parents if not p.exists()]
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--out {out}: cannot create {out.parent} ({e.strerror}); choose another path.") from None
    return missing


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            break


def _lock_folder(folder: Path) -> int | None:
    """An open descriptor holding an exclusive flock on `folder` (released by the kernel when the process
    ends, however it ends); None where flock does not exist."""
    if fcntl is None:
        return None
    fd = os.open(folder, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def _remove_stale_temporaries(out: Path) -> None:
    """Delete `<out>.tmp-*` folders left by exports that were killed (SIGKILL, power loss: no cleanup ran).
    A folder whose lock can be taken has no live exporter; one still locked belongs to a running export."""
    if fcntl is None:
        return
    for folder in out.parent.glob(f"{glob.escape(out.name)}.tmp-*"):
        if not folder.is_dir() or folder.is_symlink():
            continue
        try:
            fd = os.open(folder, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # a running export holds it
        finally:
            os.close(fd)
        log.info("removing %s, left by an export that did not finish", folder)
        shutil.rmtree(folder, ignore_errors=True)


_COMPONENT_FOLDERS = {"transformer", "text_encoder", "text_encoder_2", "text_encoder_3", "vae_decoder", "vae_encoder"}


def _build_graphs(plan: Plan, root: Path) -> tuple[list[GraphEntry], dict[str, str]]:
    """Export, check and package every graph of the target; returns manifest entries and notes."""
    if plan.target.graph_format in ("onnx", "ort"):
        from ralu_export import graph_build

        return graph_build.onnx_graphs(plan, root)
    if plan.target.graph_format == "pte":
        from ralu_export import executorch_export

        return executorch_export.build(plan, root)
    from ralu_export import coreml_export

    return coreml_export.build(plan, root)


def _publish(tmp: Path, out: Path) -> None:
    """Move the finished bundle into place; an old bundle (force) is swapped out first, then removed."""
    old = None
    if out.exists():
        old = out.with_name(f"{out.name}.old-{tmp.name.rsplit('-', 1)[-1]}")
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _manifest(plan: Plan, root: Path, graphs: list[GraphEntry], tokenizers, notes: dict[str, str],
              token_tables: dict[str, str] | None = None) -> Manifest:
    g, family, target = plan.geometry, plan.family, plan.target
    by_role = {}
    for graph in graphs:
        by_role.setdefault(graph.role, []).append(graph)
    denoisers = by_role.get("denoiser", [])
    if target.packaging == "dynamic":
        stages = (StageGraph(denoisers[0].name),)
    else:
        stages = tuple(StageGraph(d.name, d.static_dims["num_image_tokens"]) for d in denoisers)
    full_res = next((gr.name for gr in by_role.get("denoiser_ids", [])), None)
    sizes = g.sizes()
    encoders = tuple(
        TextEncoderSpec(
            name=e.graph, graph=e.graph, tokenizer=e.tokenizer, kind=e.kind, use=e.use,
            hidden_size=sizes[e.hidden_size] if e.hidden_size else (g.pooled_dim if e.kind == "clip" else g.text_dim),
            vocab_rows=sizes[e.vocab] if e.vocab else (g.clip_vocab if e.kind == "clip" else g.t5_vocab),
            sequence_output=_output_name(graphs, e.graph, e.sequence_output.format(**sizes)),
            pooled_output=e.pooled_output,
            placeholder_ids_input="placeholder_ids", placeholder_embeds_input="placeholder_embeds",
            precision=next(gr.precision for gr in graphs if gr.name == e.graph),
            placeholder_slots=target.placeholder_slots,
            token_embeddings=(token_tables or {}).get(e.graph),
        ) for e in family.encoders
    )
    presets = tuple(
        PresetEntry(p.name, p.to_dict(), (PresetStages(g.height, g.width, p.num_selected(g.grid_height, g.grid_width),
                                                       p.stage_lengths(g.grid_height, g.grid_width)),))
        for p in plan.presets
    )
    return Manifest(
        format=BUNDLE_FORMAT, format_version=FORMAT_VERSION, exporter=_exporter_info(),
        model=ModelInfo(family.name, plan.config.model, plan.pipeline_class),
        target=plan.config.target, precision=plan.config.precision, resolutions=(plan.resolution,),
        vae=VaeSpec(g.latent_channels, g.vae_factor, g.vae_scaling, g.vae_shift),
        text_length=g.text_length,
        rope=RopeSpec(tuple(g.axes_dim), g.theta, g.head_dim) if family.positions == "rope" else None,
        denoiser=DenoiserSpec(
            packaging=target.packaging, packaging_note=target.packaging_note, token_dim="num_image_tokens",
            rope_token_dim="num_rope_tokens", stage_lengths=plan.stage_lengths,
            token_channels=g.token_channels, text_length=sizes.get("joint_text_length", g.text_length),
            text_dim=g.text_dim, pooled_dim=g.pooled_dim, guidance=g.guidance, timestep=family.timestep,
            stage_graphs=stages, full_res_graph=full_res, guidance_scale=plan.guidance_scale,
            **_sd3_denoiser_fields(family, g),
        ),
        text_encoders=encoders, tokenizers=tokenizers, graphs=tuple(graphs), presets=presets,
        files=file_entries(root), notes=notes,
    )


def _output_name(graphs: list[GraphEntry], graph: str, name: str) -> str:
    """`name` as the graph file has it: Core ML packages rename hidden_states.3 to hidden_states_3."""
    outputs = {o.name for g in graphs if g.name == graph for o in g.outputs}
    if name not in outputs:
        from ralu_export.coreml_export import coreml_name

        return coreml_name(name) if coreml_name(name) in outputs else name
    return name


def _sd3_denoiser_fields(family: FamilySpec, g: Geometry) -> dict:
    """The DenoiserSpec fields of SD3-class families (absolute positions, output layout, plain schedule);
    empty for FLUX, whose defaults they are."""
    if family.positions != "sincos":
        return {}
    sizes = g.sizes()
    return {"positions": "sincos", "output_order": family.output_order, "baseline_schedule": family.baseline_schedule,
            "baseline_shift": g.scheduler_shift,
            "pos_embed": PosEmbedSpec(sizes["inner_dim"], sizes["pos_embed_max_size"], sizes["pos_base_size"], 1.0)}


def _exporter_info() -> ExporterInfo:
    from importlib.metadata import PackageNotFoundError, version

    import ralu_export

    tools = {}
    for name in ("torch", "onnx", "onnxruntime", "diffusers", "transformers", "executorch", "coremltools"):
        try:
            tools[name] = version(name)
        except PackageNotFoundError:
            continue
    return ExporterInfo("ralu-export", ralu_export.__version__, tools)
