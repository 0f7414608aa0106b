"""The ONNX-based targets' graph stage (desktop: .onnx + shared external data in optimum's layout;
android: .ort): export every graph the family declares for the target, quantize the roles the target runs
in int8, save graphs that wrap the same module into one weight file, convert for android, and check each
final graph file against its torch module at every parity case (every RALU stage length for the
denoiser). Returns the manifest's graph entries."""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ralu_edge.manifest import GraphEntry
from ralu_edge.rng import rng_for
from ralu_export import examples, onnx_export, onnx_files
from ralu_export.families import GraphSpec, boundary_module, present
from ralu_export.quantize import SESSION_CONFIG, quantize

log = logging.getLogger(__name__)
EXAMPLE_PROMPT = "a small red circle on a white background"
ORT_MATCHES_ONNX_REL = 1e-5  # .ort vs its .onnx: bit-identical expected (ENVIRONMENT.md); ARM-target fusions


@dataclass
class ExportedGraph:
    """One graph between export and the manifest: its spec, torch module, ONNX model (onnx_ir Model whose
    weights are views of the module's, or a quantized ModelProto), precision label and the ORT session
    config it needs; path/data_files once saved; the parity cases with the torch outputs (references)
    once computed, after which module and model are dropped (issue 8: never torch and ORT weights at once)."""

    spec: GraphSpec
    module: torch.nn.Module | None
    proto: object
    precision: str
    session_config: dict[str, str]
    path: Path | None = None
    data_files: tuple[Path, ...] = ()
    references: tuple[list, list] | None = None


def int8_method(plan, spec: GraphSpec) -> str | None:
    """The quantization method for this graph in this bundle, or None for float (targets.py table)."""
    if not spec.quantizable:
        return None
    if spec.role in ("denoiser", "denoiser_ids"):
        wanted = plan.config.precision == "int8"
    else:
        wanted = plan.config.precision == "int8" or plan.target.text_encoder_precision == "int8"
    return plan.target.int8_methods[spec.role] if wanted else None


def example_token_ids(pipe, plan) -> dict[str, np.ndarray]:
    """{encoder graph: [1, T] int64} ids of EXAMPLE_PROMPT from the pipeline's own tokenizers."""
    out = {}
    for encoder in plan.family.encoders:
        length = plan.geometry.clip_length if encoder.kind == "clip" else plan.geometry.text_length
        tokenizer = getattr(pipe, encoder.tokenizer)
        out[encoder.graph] = tokenizer([EXAMPLE_PROMPT], padding="max_length", max_length=length, truncation=True,
                                       return_tensors="np").input_ids.astype(np.int64)
    return out


def onnx_graphs(plan, root: Path) -> tuple[list[GraphEntry], dict[str, str]]:
    """Export, save, convert (android) and check every graph of the plan's target under `root`; returns the
    manifest entries and notes (for .ort graphs, the largest difference from the .onnx they came from)."""
    pipe = plan.family.load(plan.config.model)
    token_ids = example_token_ids(pipe, plan)
    specs = [s for s in plan.family.graphs if plan.config.target in s.targets]
    graphs = [_export(plan, spec, pipe, token_ids) for spec in tqdm(specs, desc="export", unit="graph", disable=None)]
    _save(root, graphs)
    for graph in graphs:  # torch outputs now, then free the torch weights before ORT maps the saved ones
        graph.references = _torch_references(plan, graph, token_ids)
        graph.module = graph.proto = None
    del pipe
    gc.collect()
    onnx_runs, notes = {}, {}
    if plan.target.graph_format == "ort":
        from ralu_export import ort_format

        onnx_runs = {g.spec.name: _onnx_outputs(g) for g in graphs
                     if not ort_format.stays_onnx(g.path, list(g.data_files))}
        converted = ort_format.convert_folder(root, {g.spec.name: (g.path, list(g.data_files)) for g in graphs},
                                              session_config=SESSION_CONFIG["weight_qdq"])
        for graph in graphs:
            graph.path = converted[graph.spec.name]
            graph.data_files = () if graph.path.suffix == ".ort" else graph.data_files
            if graph.path.suffix == ".onnx":
                notes[f"onnx_not_ort.{graph.spec.name}"] = ort_format.STAYS_ONNX_NOTE
                graph.session_config = {**graph.session_config, **ort_format.STAYS_ONNX_SESSION_CONFIG}
    entries = [_entry(plan, root, g, token_ids, onnx_runs.get(g.spec.name), notes) for g in graphs]
    return entries, notes


def _export(plan, spec: GraphSpec, pipe, token_ids: dict[str, np.ndarray]) -> ExportedGraph:
    started = time.perf_counter()
    module = boundary_module(spec, pipe)
    rng = rng_for(0, f"export-trace-{spec.name}")
    example = examples.example_inputs(spec, plan.geometry, examples.trace_case(plan.geometry), rng, token_ids)
    proto = onnx_export.export_graph(spec, plan.family, module, example, plan.geometry.sizes())
    method = int8_method(plan, spec)
    if method is not None:
        proto = quantize(proto, method)
    graph = ExportedGraph(spec, module, proto, f"int8-{method}" if method else "fp32", SESSION_CONFIG.get(method, {}))
    log.info("exported %s (%s) in %.1f s", spec.name, graph.precision, time.perf_counter() - started)
    return graph


def _save(root: Path, graphs: list[ExportedGraph]) -> None:
    """Write the graphs, one external data file `<folder>/model.onnx_data` per weight-sharing group."""
    groups: dict[str, list[ExportedGraph]] = {}
    for graph in graphs:
        groups.setdefault(graph.spec.shares_weights or graph.spec.name, []).append(graph)
    for members in groups.values():
        folder = root / members[0].spec.folder
        folder.mkdir(parents=True, exist_ok=True)
        data = folder / "model.onnx_data"
        for graph in members:
            graph.path, graph.data_files = root / graph.spec.path, (data,)
        onnx_files.save_sharing_weights([(g.proto, g.path) for g in members], data)


def _torch_references(plan, graph: ExportedGraph, token_ids: dict[str, np.ndarray]) -> tuple[list, list]:
    """The graph's parity cases (fewer for multi-GB graphs: onnx_export.affordable_cases) and the torch
    module's outputs on each."""
    spec = graph.spec
    rng = rng_for(0, f"export-parity-{spec.name}")
    cases = [(label, examples.example_inputs(spec, plan.geometry, dims, rng, token_ids))
             for label, dims in examples.parity_cases(spec, plan.geometry, list(plan.stage_lengths))]
    cases = onnx_export.affordable_cases(cases, onnx_export.parameter_bytes(graph.module))
    return cases, onnx_export.torch_references(graph.module, cases)


def _entry(plan, root: Path, graph: ExportedGraph, token_ids: dict[str, np.ndarray], onnx_reference,
           notes: dict[str, str]) -> GraphEntry:
    """Check the final graph file against torch (and, for .ort, against its .onnx) and describe it."""
    spec, tolerances = graph.spec, plan.family.tolerances
    if graph.precision == "fp32":
        metric, tolerance = "max_rel", tolerances.fp32_rel
    else:
        metric, tolerance = "cosine", tolerances.int8_cosine
    cases, expected = graph.references
    run = onnx_files.ort_runner(graph.path, config=graph.session_config)
    parity = onnx_export.check_parity(spec.name, run, expected, cases, metric, tolerance)
    if onnx_reference is not None:
        difference = _ort_vs_onnx(spec.name, run, onnx_reference, cases)
        notes[f"ort_vs_onnx.{spec.name}"] = f"max abs difference {difference:.3g} over {len(cases)} parity cases"
    sizes = plan.geometry.sizes()
    return GraphEntry(
        name=spec.name, role=spec.role, file=graph.path.relative_to(root).as_posix(),
        format="ort" if graph.path.suffix == ".ort" else "onnx", precision=graph.precision,
        inputs=onnx_export.tensor_specs(present(spec.inputs, plan.geometry), sizes),
        outputs=onnx_export.tensor_specs(spec.outputs, sizes),
        data_files=tuple(d.relative_to(root).as_posix() for d in graph.data_files),
        session_config=graph.session_config, parity=parity,
    )


def _onnx_outputs(graph: ExportedGraph) -> list[list[np.ndarray]]:
    """The .onnx graph's outputs at its parity cases, with the session closed again: the .ort check needs the
    numbers, not a session holding the weights while the converter loads them too (issue 8)."""
    run = onnx_files.ort_runner(graph.path, config=graph.session_config)
    return [run({k: v.numpy() for k, v in example.items()}) for _, example in graph.references[0]]


def _ort_vs_onnx(name: str, run_ort, onnx_outputs: list[list[np.ndarray]], cases) -> float:
    """issue 4: every .ort gives the same outputs as its .onnx; returns the largest absolute difference."""
    pairs = []
    for (_, example), expected in zip(cases, onnx_outputs):
        feeds = {k: v.numpy() for k, v in example.items()}
        pairs.extend(zip(run_ort(feeds), expected))
    result = onnx_files.compare_outputs(pairs)
    if result.max_rel_error > ORT_MATCHES_ONNX_REL:
        raise onnx_files.ParityError(f"{name}.ort differs from its .onnx by {result.max_rel_error:.3g} relative "
                                     f"(limit {ORT_MATCHES_ONNX_REL}); no bundle was written.")
    return result.max_abs_error
