"""`ralu-export` as a library: validate an export request, build the bundle for one target in a temporary
folder beside the output, check every graph against torch, write the manifest last, and rename the folder
into place. A failed or interrupted export leaves nothing behind (the temporary folder is removed, and so
are the parent folders it created; a folder left by a killed export is removed by the next export to the same
path, told apart from a running one by its flock); an existing output is replaced only with force=True, and
only after the new bundle is complete.

Straight-line stages, one function each: plan_export (plan.py: all user errors, before any model loads) ->
the target's build (targets/: export, package and check every graph) -> pipeline files and tokenizers
(pipeline_files) -> token tables -> manifest -> TeaCache calibration (cache_calibration: sampling runs through
the written bundle, manifest rewritten with the fit) -> publish."""

from __future__ import annotations

import dataclasses
import glob
import logging
import os
import shutil
import tempfile
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock, so stale temporary folders are left for the user to delete
    fcntl = None

from ralu_edge.errors import UserError
from ralu_edge.manifest import (
    BUNDLE_FORMAT, FORMAT_VERSION, DenoiserSpec, ExporterInfo, GraphEntry, Manifest, ModelInfo, PresetEntry,
    PresetStages, StageGraph, TextEncoderSpec, VaeSpec, file_entries, write_manifest,
)
from ralu_export import targets
from ralu_export.families.spec import expand
from ralu_export.plan import ExportConfig, Plan, plan_export

log = logging.getLogger(__name__)


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
        graphs, extra = targets.build(plan, tmp)
        from ralu_export.pipeline_files import copy_pipeline_files, copy_tokenizers

        copy_pipeline_files(plan.source, tmp, {spec.folder for spec in plan.graphs()})
        tokenizers = copy_tokenizers(plan.source, tmp, plan.family, plan.geometry)
        from ralu_export.token_tables import write_token_embeddings

        tables = write_token_embeddings(plan.source, tmp, [e.graph for e in plan.family.encoders])
        manifest = _manifest(plan, tmp, graphs, tokenizers, extra, tables)
        from ralu_export.lora_names import with_lora

        manifest = with_lora(plan, tmp, manifest)  # issue 17: what a LoRA may replace, found in the final files
        write_manifest(tmp, manifest)
        from ralu_export.cache_calibration import calibrate_cache

        calibration = calibrate_cache(tmp)  # runs the written bundle, so it follows its manifest
        if calibration is not None:
            write_manifest(tmp, dataclasses.replace(manifest, cache=calibration))
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
              token_tables: dict[str, str]) -> Manifest:
    g, family = plan.geometry, plan.family
    presets = tuple(
        PresetEntry(p.name, p.to_dict(), (PresetStages(g.height, g.width, p.num_selected(g.grid_height, g.grid_width),
                                                       p.stage_lengths(g.grid_height, g.grid_width)),))
        for p in plan.presets
    )
    return Manifest(
        format=BUNDLE_FORMAT, format_version=FORMAT_VERSION, exporter=_exporter_info(),
        model=ModelInfo(family.name, plan.config.model, family.pipeline_class),
        target=plan.config.target, precision=plan.config.precision, resolutions=(plan.resolution,),
        vae=VaeSpec(g.latent_channels, g.vae_factor, g.vae_scaling, g.vae_shift),
        text_length=g.text_length, rope=g.rope, denoiser=_denoiser(plan, graphs),
        text_encoders=_text_encoders(plan, graphs, token_tables), tokenizers=tokenizers, graphs=tuple(graphs),
        presets=presets, files=file_entries(root), notes=notes,
    )


def _denoiser(plan: Plan, graphs: list[GraphEntry]) -> DenoiserSpec:
    """The manifest's denoiser: its stage graphs as the target packages them, sizes and family conventions."""
    g, family, target = plan.geometry, plan.family, plan.target
    denoisers = [graph for graph in graphs if graph.role == "denoiser"]
    if target.packaging == "dynamic":
        stages = (StageGraph(denoisers[0].name),)
    else:
        stages = tuple(StageGraph(d.name, d.static_dims["num_image_tokens"]) for d in denoisers)
    return DenoiserSpec(
        packaging=target.packaging, packaging_note=target.packaging_note, token_dim="num_image_tokens",
        rope_token_dim="num_rope_tokens", stage_lengths=plan.stage_lengths, token_channels=g.token_channels,
        text_length=g.denoiser_text_length, text_dim=g.text_dim, pooled_dim=g.pooled_dim, guidance=g.guidance,
        timestep=family.timestep, stage_graphs=stages,
        full_res_graph=next((graph.name for graph in graphs if graph.role == "denoiser_ids"), None),
        positions=family.positions, pos_embed=g.pos_embed, output_order=family.output_order,
        guidance_scale=plan.guidance_scale, baseline_schedule=family.baseline_schedule,
        baseline_shift=g.scheduler_shift,
    )


def _text_encoders(plan: Plan, graphs: list[GraphEntry], token_tables: dict[str, str]) -> tuple[TextEncoderSpec, ...]:
    sizes = plan.geometry.sizes()
    out = []
    for e in plan.family.encoders:
        entry = next(graph for graph in graphs if graph.name == e.graph)
        out.append(TextEncoderSpec(
            name=e.graph, graph=e.graph, tokenizer=e.tokenizer, kind=e.kind, use=e.use,
            hidden_size=sizes[e.hidden_size], vocab_rows=sizes[e.vocab],
            sequence_output=_output_name(plan, entry, e.sequence_output.format(**sizes)),
            pooled_output=e.pooled_output,
            placeholder_ids_input="placeholder_ids", placeholder_embeds_input="placeholder_embeds",
            precision=entry.precision, placeholder_slots=plan.target.placeholder_slots,
            token_embeddings=token_tables.get(e.graph),
        ))
    return tuple(out)


def _output_name(plan: Plan, entry: GraphEntry, declared: str) -> str:
    """The name the graph file gives the output the family declares as `declared` (the same position: Core ML
    renames hidden_states.3 to hidden_states_3)."""
    names = [t.name for t in expand(plan.family.graph(entry.name).outputs, plan.geometry.sizes())]
    return entry.outputs[names.index(declared)].name


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
