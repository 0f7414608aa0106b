"""The android target: the ONNX graphs (onnx_graphs) converted to ORT format with onnxruntime's own tool for
ARM (ort_format: `.ort` files, required_operators.config for a reduced build, a mobile usability report per
graph). Graphs over the 2 GB .ort limit stay .onnx + external data and run without prepacking. Each final
file is checked against torch, and each .ort against the .onnx it came from."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ralu_edge.manifest import GraphEntry
from ralu_export import onnx_graphs, ort_format
from ralu_export.parity import check_same_outputs
from ralu_export.plan import Plan

ORT_MATCHES_ONNX_REL = 1e-5  # .ort vs its .onnx: bit-identical expected (ENVIRONMENT.md); ARM-target fusions


def build(plan: Plan, root: Path) -> tuple[list[GraphEntry], dict[str, str]]:
    """Every graph of the android target under `root`; manifest entries and notes (graphs that stayed .onnx,
    and for .ort graphs the largest difference from the .onnx they came from)."""
    graphs = onnx_graphs.export_graphs(plan, root)
    onnx_outputs = {g.spec.name: _onnx_outputs(g) for g in graphs
                    if not ort_format.stays_onnx(g.path, list(g.data_files))}
    # The .ort bakes in the conversion's fusions: run it with the int8 graphs' session config, so weight-only
    # int8 MatMuls keep float activations (quantize.SESSION_CONFIG).
    session_config = {key: value for g in graphs for key, value in g.session_config.items()}
    converted = ort_format.convert_folder(root, {g.spec.name: (g.path, list(g.data_files)) for g in graphs},
                                          session_config=session_config)
    notes = {}
    for graph in graphs:
        graph.path = converted[graph.spec.name]
        graph.data_files = () if graph.path.suffix == ".ort" else graph.data_files
        if graph.path.suffix == ".onnx":
            notes[f"onnx_not_ort.{graph.spec.name}"] = ort_format.STAYS_ONNX_NOTE
            graph.session_config = {**graph.session_config, **ort_format.STAYS_ONNX_SESSION_CONFIG}
    entries = []
    for graph in graphs:
        run = onnx_graphs.runner(graph)
        entries.append(onnx_graphs.graph_entry(plan, root, graph, run))
        if graph.spec.name in onnx_outputs:
            cases = graph.references[0]
            difference = check_same_outputs(f"{graph.spec.name}.ort", run, onnx_outputs[graph.spec.name], cases,
                                            ORT_MATCHES_ONNX_REL, ".onnx")
            notes[f"ort_vs_onnx.{graph.spec.name}"] = (f"max abs difference {difference:.3g} over {len(cases)} "
                                                       "parity cases")
    return entries, notes


def _onnx_outputs(graph: onnx_graphs.ExportedGraph) -> list[list[np.ndarray]]:
    """The .onnx graph's outputs at its parity cases, with the session closed again: the .ort check needs the
    numbers, not a session holding the weights while the converter loads them too (issue 8)."""
    run = onnx_graphs.runner(graph)
    return [run({k: v.numpy() for k, v in example.items()}) for _, example in graph.references[0]]
