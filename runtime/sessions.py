"""ONNX Runtime sessions over bundle graphs: `.ort` files are preferred when the bundle has them (android),
thread count is configurable, and the CPU EP is used (NPU EPs need the static per-stage packaging).

Memory (issue 8): ORT memory-maps a graph's external data (the exporter aligns big tensors to 64 KiB), so
opening a session costs no copy of the weights; whether the CPU EP then prepacks them into anonymous memory
is the graph's `session_config` in the manifest (android graphs over 2 GB: `session.disable_prepacking`, so
their weights stay reclaimable file pages), measured in benchmarks/bench_large_weights.py: peak RSS of load
plus one denoiser step 1.05x the weights either way."""

from __future__ import annotations

from dataclasses import dataclass

import onnxruntime as ort

from ralu_edge.errors import UserError
from ralu_runtime.bundle import Bundle


@dataclass(frozen=True)
class SessionConfig:
    """threads: intra-op threads (0 = ORT's default, all cores)."""

    threads: int = 0
    providers: tuple[str, ...] = ("CPUExecutionProvider",)


def session_options(config: SessionConfig) -> ort.SessionOptions:
    so = ort.SessionOptions()
    if config.threads:
        so.intra_op_num_threads = config.threads
        so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return so


def open_session(bundle: Bundle, graph_name: str, config: SessionConfig) -> ort.InferenceSession:
    """A session over the graph the manifest names (its file is already verified)."""
    graph = bundle.manifest.graph(graph_name)
    if graph.format not in ("onnx", "ort"):
        raise UserError(f"graph {graph_name!r} is {graph.format}, which ONNX Runtime cannot run; use a desktop "
                        "or android bundle (or the ExecuTorch backend for .pte).")
    so = session_options(config)
    # The exporter records per-graph settings; weight-only int8 graphs need
    # session.qdq_matmulnbits_accuracy_level = 1, or ORT 1.32 quietly runs them with int8 activations
    # (which also stops zeroth-order personalization from seeing its perturbations).
    for key, value in (getattr(graph, "session_config", None) or {}).items():
        so.add_session_config_entry(key, str(value))
    if any(isinstance(dim, str) for spec in graph.inputs for dim in spec.shape):
        # ORT plans and keeps one memory pattern per distinct input shape; a dynamic-token denoiser serving
        # every RALU stage length piled them up (random 1024-token FLUX: all presets in one process 563 MB vs
        # 429 MB baseline-only; without patterns 349 vs 357 MB, same speed; benchmarks/results/runtime.md).
        so.enable_mem_pattern = False
    try:
        return ort.InferenceSession(str(bundle.path(graph.file)), sess_options=so,
                                    providers=list(config.providers))
    except Exception as e:  # ORT raises its own exception types for unreadable graphs
        raise UserError(f"{bundle.root.name}/{graph.file}: ONNX Runtime could not load it ({str(e)[:160]}); "
                        "re-export the bundle.") from None
