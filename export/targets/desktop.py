"""The desktop target: `.onnx` graphs with their weights in `<folder>/model.onnx_data`, in optimum's layout
(ORTDiffusionPipeline opens the bundle), one denoiser session over a dynamic token axis, each graph checked
against torch on ONNX Runtime's CPU EP (onnx_graphs)."""

from __future__ import annotations

from pathlib import Path

from ralu_edge.manifest import GraphEntry
from ralu_export import onnx_graphs
from ralu_export.plan import Plan


def build(plan: Plan, root: Path) -> tuple[list[GraphEntry], dict[str, str]]:
    """Every graph of the desktop target under `root`; manifest entries and (no) notes."""
    graphs = onnx_graphs.export_graphs(plan, root)
    return [onnx_graphs.graph_entry(plan, root, graph, onnx_graphs.runner(graph)) for graph in graphs], {}
