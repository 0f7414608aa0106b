"""The web target: `.onnx` graphs for onnxruntime-web (web_demo/, docs/web.md): the desktop target's graphs
and checks (onnx_graphs), laid out the way onnxruntime-web loads them (TargetSpec "web": learned-token
inputs without in-graph defaults, one external weights file name per folder) and without the VAE encoder,
which only personalization uses. Parity is checked on ONNX Runtime's CPU EP, which runs the same kernels
onnxruntime-web compiles to WebAssembly; web_demo's browser test compares the page's images with ralu-run's."""

from __future__ import annotations

from pathlib import Path

from ralu_edge.manifest import GraphEntry
from ralu_export import onnx_graphs
from ralu_export.plan import Plan


def build(plan: Plan, root: Path) -> tuple[list[GraphEntry], dict[str, str]]:
    """Every graph of the web target under `root`; manifest entries and the layout note."""
    graphs = onnx_graphs.export_graphs(plan, root)
    entries = [onnx_graphs.graph_entry(plan, root, graph, onnx_graphs.runner(graph)) for graph in graphs]
    notes = {"web.layout": "learned-token inputs are required (feed at least one row: id -1 and a zero "
                           "embedding when no token is loaded); external weights in <folder>/<folder>.onnx_data"}
    return entries, notes
