"""Export targets: what each ships, in one table (DESIGN.md "Bundles"), and one module per target named as
the target (desktop.py, android.py, executorch.py, ios.py, web.py), each with `build(plan, root)`. A target module
imports no other target: what two targets share lives in a stage module (onnx_graphs.py for desktop,
android and web, static_programs.py for executorch and ios). Which graphs are int8 is int8_policy.py; how each
target's graphs are checked is parity.py. The packaging choices cite benchmarks/bench_export_choices.py
(results in benchmarks/results/export_choices.json)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Optional

from ralu_edge.errors import UserError
from ralu_edge.manifest import GraphEntry

if TYPE_CHECKING:
    from ralu_export.plan import Plan

TARGETS = ("desktop", "android", "executorch", "ios", "web")
PRECISIONS = ("fp32", "int8", "int4")

# benchmarks/results/export_choices.json, shapes model, ORT 1.32 CPU EP, 2 threads (this machine kind).
DYNAMIC_NOTE = (
    "one session over a dynamic num_image_tokens axis serves all RALU stage lengths: on ORT's CPU EP it "
    "measured half the memory of one static session per stage (shapes, flux-4x lengths 64/121/256: RSS "
    "+68 MB vs +139 MB fp32, +53 MB vs +95 MB int8; the EP prepacks the weights once per session, so the gap "
    "grows with the model) at latency within run-to-run noise (benchmarks/bench_export_choices.py, "
    "'packaging' table). NPU EPs (NNAPI, QNN, Core ML EP) need static shapes: create one session per stage "
    "length with SessionOptions.add_free_dimension_override_by_name(token_dim, L) and (rope_token_dim, "
    "L + text_length); the lengths are in denoiser.stage_lengths."
)
STATIC_NOTE = (
    "one static graph (method or function) per RALU stage length: ExecuTorch's XNNPACK delegate and Core ML "
    "plan memory per static shape, and Core ML's Neural Engine needs fixed shapes. The weights are stored "
    "once: XNNPACK shares them between the methods of one .pte (23.4 MB for 3 methods vs 23.0 MB for 1 on "
    "shapes); Core ML multifunction packages share them between functions."
)

# onnxruntime-web's WASM backend copies every session's weights into one 32-bit WebAssembly memory, at most 4 GiB
# (the wasm32 address space; activations and the runtime need part of it too).
WASM32_MEMORY_BYTES = 4 * 1024**3
# docs/web.md; web_demo/src/runtime/backends.js is the runtime that loads these graphs.
WEB_NOTE = (
    "one session over a dynamic num_image_tokens axis serves all RALU stage lengths, as on the desktop; "
    "onnxruntime-web (WASM) runs the same opset-18 graphs. Its layout differs in two ways: the learned-token "
    "inputs (placeholder_ids, placeholder_embeds) are plain inputs without an in-graph default, since "
    "onnxruntime-web 1.30 lists only non-initializer inputs and refuses a feed for an overridable one; and "
    "each folder's external weights file is named after the folder (transformer/transformer.onnx_data), since "
    "onnxruntime-web mounts external data in one table keyed by the referenced file name. No VAE encoder: "
    "the page samples and loads learned embeddings; personalization runs on a desktop or android bundle."
)


@dataclass(frozen=True)
class TargetSpec:
    """How one target packages a bundle.

    graph_format: what the runtime loads; packaging: denoiser stage graphs ("dynamic" | "static");
    placeholder_slots: fixed number of learned-token slots of the text encoders (unused slots take id -1),
    None for a dynamic input; placeholder_defaults: dynamic placeholder inputs carry an empty in-graph
    default (optional inputs, which optimum never feeds) or are plain required inputs; weights_file: the
    name of each ONNX folder's external data file ({folder} is the folder's name); max_weight_bytes: the
    most weight bytes all the bundle's graphs may hold together (checked before export), None for no limit;
    generation_kernels: the runtime opens the graphs as they are written, so generation sessions may take the
    faster kernels personalization cannot use (int8 activations: quantize.GENERATION_SESSION_CONFIG and
    GENERATION_NBITS) — not where a conversion fixes the kernels (.ort) or where they are unmeasured (web);
    fused_attention: the denoiser's attentions become ONNX Runtime's MultiHeadAttention (attention_fusion:
    flash attention on the CPU EP) — not yet where a build may lack contrib operators or their kernels are
    unmeasured (android's reduced builds, onnxruntime-web)."""

    name: str
    graph_format: Literal["onnx", "ort", "pte", "mlpackage"]
    packaging: Literal["dynamic", "static"]
    packaging_note: str
    placeholder_slots: Optional[int] = None
    placeholder_defaults: bool = True
    weights_file: str = "model.onnx_data"
    max_weight_bytes: Optional[int] = None
    generation_kernels: bool = False
    fused_attention: bool = False


TARGET_SPECS: dict[str, TargetSpec] = {
    "desktop": TargetSpec("desktop", "onnx", "dynamic", DYNAMIC_NOTE, generation_kernels=True,
                          fused_attention=True),
    "android": TargetSpec("android", "ort", "dynamic", DYNAMIC_NOTE),
    "executorch": TargetSpec("executorch", "pte", "static", STATIC_NOTE, placeholder_slots=4),
    "ios": TargetSpec("ios", "mlpackage", "static", STATIC_NOTE, placeholder_slots=4),
    "web": TargetSpec("web", "onnx", "dynamic", WEB_NOTE, placeholder_defaults=False,
                      weights_file="{folder}.onnx_data", max_weight_bytes=WASM32_MEMORY_BYTES),
}


def target_spec(name: str) -> TargetSpec:
    """The spec of target `name`; UserError listing the targets otherwise."""
    if name not in TARGET_SPECS:
        raise UserError(f"unknown target {name!r}; choose one of {', '.join(TARGETS)}.")
    return TARGET_SPECS[name]


def build(plan: "Plan", root: Path) -> tuple[list[GraphEntry], dict[str, str]]:
    """Export, check and package every graph of the plan's target under `root` (the target's module, imported
    only now: the targets' libraries are heavy); returns the manifest's graph entries and notes."""
    module = importlib.import_module(f"ralu_export.targets.{plan.target.name}")
    return module.build(plan, root)
