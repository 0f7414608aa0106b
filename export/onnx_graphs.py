"""The ONNX stage that the desktop, android and web targets share: export every graph the family declares for
the target, quantize those the int8 policy names, save graphs that wrap the same module into one weight file
(optimum's layout: `<folder>/<stem>.onnx` + `<folder>/model.onnx_data`; the web target names the data file
after the folder), compute the torch references of every parity case and free the torch weights; then, per
final graph file, check it against those references (every RALU stage length for the denoiser) and describe
it for the manifest."""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ralu_edge.manifest import GraphEntry
from ralu_edge.rng import rng_for
from ralu_export import examples, onnx_export, onnx_files
from ralu_export.attention_fusion import fuse_attention
from ralu_export.families.spec import GraphSpec, boundary_module, present, tensor_specs
from ralu_export.int8_policy import precision_label
from ralu_export.parity import Run, check_parity, parity_rule
from ralu_export.plan import Plan
from ralu_export.quantize import (GENERATION_NBITS, GENERATION_SESSION_CONFIG, NBITS, SESSION_CONFIG, quantize,
                                  quantize_nbits)

log = logging.getLogger(__name__)


@dataclass
class ExportedGraph:
    """One graph between export and the manifest: its spec, torch module, ONNX model (onnx_ir Model whose
    weights are views of the module's, or a quantized ModelProto), precision label and the ORT session
    config it needs; path/data_files once saved; the parity cases with the torch outputs (references)
    once computed, after which module and model are dropped (issue 8: never torch and ORT weights at once).
    generation_session_config / generation_proto: what generation-only sessions take instead (config entries
    over session_config's; a second graph over the same weights, saved at generation_path), on targets whose
    runtime opens the graphs as written (TargetSpec.generation_kernels)."""

    spec: GraphSpec
    module: torch.nn.Module | None
    proto: object
    precision: str
    session_config: dict[str, str]
    path: Path | None = None
    data_files: tuple[Path, ...] = ()
    references: tuple[list, list] | None = None
    generation_session_config: dict[str, str] = field(default_factory=dict)
    generation_proto: object = None
    generation_path: Path | None = None


def export_graphs(plan: Plan, root: Path) -> list[ExportedGraph]:
    """Export, quantize and save every graph of the plan's target under `root`, with the torch outputs of
    their parity cases; the pipeline is freed before returning."""
    pipe = plan.family.load(plan.config.model)
    token_ids = examples.example_token_ids(pipe, plan.family, plan.geometry)
    specs = plan.graphs()
    graphs = [_export(plan, spec, pipe, token_ids) for spec in tqdm(specs, desc="export", unit="graph", disable=None)]
    _save(root, graphs, plan.target.weights_file)
    for graph in graphs:  # torch outputs now, then free the torch weights before ORT maps the saved ones
        graph.references = _torch_references(plan, graph, token_ids)
        graph.module = graph.proto = graph.generation_proto = None
    del pipe
    gc.collect()
    return graphs


def _export(plan: Plan, spec: GraphSpec, pipe, token_ids: dict[str, np.ndarray]) -> ExportedGraph:
    started = time.perf_counter()
    module = boundary_module(spec, pipe)
    rng = rng_for(0, f"export-trace-{spec.name}")
    example = examples.example_inputs(spec, plan.geometry, examples.trace_case(plan.geometry), rng, token_ids)
    proto = onnx_export.export_graph(spec, plan.family, module, example, plan.geometry.sizes(),
                                     optional_defaults=plan.target.placeholder_defaults)
    if plan.fused_attention and spec.role == "denoiser":  # before quantizing: every precision gets it
        proto, fused = fuse_attention(proto)
        log.info("%s: %d attentions fused into MultiHeadAttention", spec.name, fused)
    method = plan.int8_method(spec)
    float_proto = proto
    if method is not None:
        proto = quantize(proto, method)
    graph = ExportedGraph(spec, module, proto, precision_label(method), SESSION_CONFIG.get(method, {}))
    if plan.target.generation_kernels and spec.role == "denoiser":  # the text encoders run once per image
        graph.generation_session_config = GENERATION_SESSION_CONFIG.get(method, {})
        if method in GENERATION_NBITS:
            generation = quantize_nbits(float_proto, GENERATION_NBITS[method])
            levels = {n.attributes["accuracy_level"].as_int() for n in generation.graph if n.op_type == "MatMulNBits"}
            if levels != {NBITS[method].accuracy_level}:  # else no weight is wide enough for int8 activations
                graph.generation_proto = generation
    log.info("exported %s (%s) in %.1f s", spec.name, graph.precision, time.perf_counter() - started)
    return graph


def _save(root: Path, graphs: list[ExportedGraph], weights_file: str) -> None:
    """Write the graphs, one external data file per weight-sharing group: `<folder>/<weights_file>`, the
    target's name pattern ({folder}: the folder's name; optimum's `model.onnx_data` on the desktop)."""
    groups: dict[str, list[ExportedGraph]] = {}
    for graph in graphs:
        groups.setdefault(graph.spec.shares_weights or graph.spec.name, []).append(graph)
    for members in groups.values():
        folder = root / members[0].spec.folder
        folder.mkdir(parents=True, exist_ok=True)
        data = folder / weights_file.format(folder=folder.name)
        for graph in members:
            graph.path, graph.data_files = root / graph.spec.path, (data,)
            if graph.generation_proto is not None:
                graph.generation_path = graph.path.with_name(f"{graph.path.stem}_generation{graph.path.suffix}")
        onnx_files.save_sharing_weights([(g.proto, g.path) for g in members]
                                        + [(g.generation_proto, g.generation_path) for g in members
                                           if g.generation_proto is not None], data)


def _torch_references(plan: Plan, graph: ExportedGraph, token_ids: dict[str, np.ndarray]) -> tuple[list, list]:
    """The graph's parity cases (fewer for multi-GB graphs: onnx_export.affordable_cases) and the torch
    module's outputs on each."""
    spec = graph.spec
    rng = rng_for(0, f"export-parity-{spec.name}")
    cases = [(label, examples.example_inputs(spec, plan.geometry, dims, rng, token_ids))
             for label, dims in examples.parity_cases(spec, plan.geometry, list(plan.stage_lengths))]
    cases = onnx_export.affordable_cases(cases, onnx_export.parameter_bytes(graph.module))
    return cases, examples.torch_references(graph.module, cases)


def runner(graph: ExportedGraph, generation: bool = False) -> Run:
    """`run(feeds) -> outputs` over a CPU ORT session of the graph's current file (.onnx or .ort), opened as
    the runtime's personalization sessions open it, or (`generation`) as its generation sessions do."""
    if not generation:
        return onnx_files.ort_runner(graph.path, config=graph.session_config)
    return onnx_files.ort_runner(graph.generation_path or graph.path,
                                 config={**graph.session_config, **graph.generation_session_config})


def graph_entry(plan: Plan, root: Path, graph: ExportedGraph, run: Run) -> GraphEntry:
    """Check the final graph file (run by `run`) against torch at every parity case and describe it."""
    spec = graph.spec
    cases, expected = graph.references
    rule = parity_rule(plan.family.tolerances, "onnxruntime", graph.precision)
    parity = check_parity(spec.name, run, expected, cases, rule)
    generation_parity = (check_parity(f"{spec.name} (generation sessions)", runner(graph, generation=True),
                                      expected, cases, rule)
                         if graph.generation_session_config or graph.generation_path else None)
    sizes = plan.geometry.sizes()
    inputs = tensor_specs(present(spec.inputs, plan.geometry), sizes)
    if not plan.target.placeholder_defaults:  # exported without in-graph defaults: every input is required
        inputs = tuple(replace(t, optional=False) for t in inputs)
    return GraphEntry(
        name=spec.name, role=spec.role, file=graph.path.relative_to(root).as_posix(),
        format="ort" if graph.path.suffix == ".ort" else "onnx", precision=graph.precision,
        inputs=inputs,
        outputs=tensor_specs(spec.outputs, sizes),
        data_files=tuple(d.relative_to(root).as_posix() for d in graph.data_files),
        session_config=graph.session_config, parity=parity,
        generation_session_config=graph.generation_session_config, generation_parity=generation_parity,
        generation_file=graph.generation_path.relative_to(root).as_posix() if graph.generation_path else None,
    )
