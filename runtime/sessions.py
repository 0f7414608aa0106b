"""ONNX Runtime sessions over bundle graphs: `.ort` files are preferred when the bundle has them (android),
thread count is configurable, and the CPU EP is used (NPU EPs need the static per-stage packaging).

Memory (issue 8): ORT memory-maps a graph's external data (the exporter aligns big tensors to 64 KiB), so
opening a session costs no copy of the weights; whether the CPU EP then prepacks them into anonymous memory
is the graph's `session_config` in the manifest (android graphs over 2 GB: `session.disable_prepacking`, so
their weights stay reclaimable file pages), measured in benchmarks/bench_large_weights.py: peak RSS of load
plus one denoiser step 1.05x the weights either way."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import onnxruntime as ort

from ralu_edge.errors import UserError
from ralu_edge.manifest import GraphEntry
from ralu_runtime.bundle import Bundle


@dataclass(frozen=True)
class SessionConfig:
    """threads: intra-op threads (0 = ORT's default, all cores). initializers: {graph name: {initializer name:
    array}} handed to ORT when that graph's session opens, in place of the graph's own tensors (issue 17: LoRA
    merges, runtime/lora.py); the arrays must outlive the session. purpose: "generate" sessions take each
    graph's `generation_session_config` over its `session_config` (the desktop int8 denoiser's int8-activation
    kernel); "personalize" sessions keep `session_config` alone, the float-activation kernels whose outputs
    move with zeroth-order perturbations."""

    threads: int = 0
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    initializers: dict = field(default_factory=dict)
    purpose: Literal["generate", "personalize"] = "generate"


def session_options(config: SessionConfig) -> ort.SessionOptions:
    so = ort.SessionOptions()
    if config.threads:
        so.intra_op_num_threads = config.threads
        so.inter_op_num_threads = 1
    so.log_severity_level = 4  # fatal only: ORT's error lines would precede our one-sentence UserError on stderr
    return so


@dataclass(frozen=True)
class GraphSession:
    """An ONNX Runtime session over one bundle graph. `run` refuses, naming the graph, inputs the graph rejects
    (a manifest whose sizes disagree with its graphs) and non-finite float outputs (a NaN turns into a black
    image downstream, or a ZO loss that never improves)."""

    label: str  # "<bundle folder>/<graph file>", for messages
    session: ort.InferenceSession
    overrides: tuple = ()  # the OrtValues given to add_initializer, kept alive as long as the session

    def run(self, outputs: list[str] | None, feeds: dict) -> list:
        try:
            results = self.session.run(outputs, feeds)
        except (ort.capi.onnxruntime_pybind11_state.InvalidArgument,
                ort.capi.onnxruntime_pybind11_state.Fail, ort.capi.onnxruntime_pybind11_state.RuntimeException) as e:
            raise UserError(f"{self.label}: ONNX Runtime refused the run ({_first_line(e)}); the manifest and the "
                            "graph disagree, re-export the bundle.") from None
        for name, value in zip(outputs or [o.name for o in self.session.get_outputs()], results):
            if value.dtype.kind == "f" and not np.isfinite(value).all():
                raise UserError(f"{self.label}: output {name!r} holds NaN or infinite values; the graph's weights "
                                "are damaged or out of range, re-export the bundle.")
        return results


def _first_line(error: Exception) -> str:
    return " ".join(str(error).split())[:200]


def open_session(bundle: Bundle, graph_name: str, config: SessionConfig) -> GraphSession:
    """A session over the graph the manifest names (its file is already verified), its inputs and outputs
    checked against the manifest."""
    graph = bundle.manifest.graph(graph_name)
    if graph.format not in ("onnx", "ort"):
        raise UserError(f"graph {graph_name!r} is {graph.format}, which ONNX Runtime cannot run; use a desktop "
                        "or android bundle (or the ExecuTorch backend for .pte).")
    so = session_options(config)
    given = config.initializers.get(graph_name, {})
    overrides = tuple(ort.OrtValue.ortvalue_from_numpy(array) for array in given.values())
    for name, value in zip(given, overrides):
        so.add_initializer(name, value)  # no copy: ORT uses the array as the weight (LoRA merges, issue 17)
    # The exporter records per-graph settings; weight-only int8 graphs need
    # session.qdq_matmulnbits_accuracy_level = 1, or ORT 1.32 quietly runs them with int8 activations
    # (which also stops zeroth-order personalization from seeing its perturbations).
    entries, file = dict(graph.session_config), graph.file
    if config.purpose == "generate":
        entries.update(graph.generation_session_config)
        file = graph.generation_file or file
    for key, value in entries.items():
        so.add_session_config_entry(key, str(value))
    if any(isinstance(dim, str) for spec in graph.inputs for dim in spec.shape):
        # ORT plans and keeps one memory pattern per distinct input shape; a dynamic-token denoiser serving
        # every RALU stage length piled them up (random 1024-token FLUX: all presets in one process 563 MB vs
        # 429 MB baseline-only; without patterns 349 vs 357 MB, same speed; benchmarks/results/runtime.md).
        so.enable_mem_pattern = False
    try:
        session = ort.InferenceSession(str(bundle.path(file)), sess_options=so,
                                       providers=list(config.providers), disabled_optimizers=_keep_qdq(graph, given))
    except Exception as e:  # ORT raises its own exception types for unreadable graphs
        raise UserError(f"{bundle.root.name}/{file}: ONNX Runtime could not load it ({str(e)[:160]}); "
                        "re-export the bundle.") from None
    check_session_io(graph, session, bundle.root.name)
    return GraphSession(f"{bundle.root.name}/{file}", session, overrides)


def _keep_qdq(graph: GraphEntry, overrides: dict) -> list[str]:
    """Optimizers to disable for a session given `overrides`: ORT's QDQ fusion (DequantizeLinear + MatMul ->
    MatMulNBits, QDQSelectorActionTransformer) reads a QDQ weight before user initializers replace it, so a
    LoRA-merged int8 weight would be ignored while its new scale is used (docs/lora.md: 9 dB against diffusers).
    Without the fusion the overrides apply; the bundle's own weights give the same outputs either way."""
    qdq = {t.weight for t in graph.lora_targets if t.layout == "qdq"}
    return ["QDQSelectorActionTransformer"] if qdq & set(overrides) else []


_ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64",
               "tensor(int32)": "int32", "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(bool)": "bool"}


def _dims_agree(actual, declared, static_dims: dict[str, int]) -> bool:
    """A graph's dim (int fixed, str or None symbolic) against the manifest's (int, or a symbolic name that the
    graph's static_dims may pin)."""
    if isinstance(declared, str):
        declared = static_dims.get(declared, declared)
    if isinstance(actual, int) and isinstance(declared, int):
        return actual == declared
    return not (isinstance(actual, int) and isinstance(declared, str))  # a fixed size described as free is a lie


def check_session_io(graph: GraphEntry, session, bundle_name: str) -> None:
    """UserError unless the graph file's inputs and outputs are the ones the manifest describes (names, dtypes,
    ranks, fixed dims): a manifest that disagrees with its graphs is refused at load, not by a failed run."""
    required = {a.name: a for a in session.get_inputs()}
    overridable = {a.name: a for a in session.get_overridable_initializers()}
    actual_outputs = {a.name: a for a in session.get_outputs()}

    def fail(problem: str) -> UserError:
        return UserError(f"{bundle_name}/{graph.file}: {problem}; the manifest and the graph disagree, "
                         "re-export the bundle.")

    for kind, specs, actual in (("input", graph.inputs, {**overridable, **required}),
                                ("output", graph.outputs, actual_outputs)):
        for spec in specs:
            arg = actual.get(spec.name)
            if arg is None:
                raise fail(f"the graph has no {kind} {spec.name!r}")
            if _ORT_DTYPES.get(arg.type, arg.type) != spec.dtype:
                raise fail(f"{kind} {spec.name!r} is {arg.type}, not {spec.dtype}")
            shape = arg.shape or []
            if len(shape) != len(spec.shape) or any(not _dims_agree(a, m, graph.static_dims)
                                                    for a, m in zip(shape, spec.shape)):
                raise fail(f"{kind} {spec.name!r} has shape {list(shape)}, not {list(spec.shape)}")
    declared = {spec.name for spec in graph.inputs}
    for name in required:
        if name not in declared:
            raise fail(f"the graph needs an input {name!r} that the manifest does not describe")
