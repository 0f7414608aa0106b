"""What each export target ships, in one table (DESIGN.md "Bundles"): graph format, denoiser packaging and
the measurement behind it, the default precision of the text encoders, and the int8 method per role.
The choices cite benchmarks/bench_export_choices.py (results in benchmarks/results/export_choices.json)."""

from __future__ import annotations

from dataclasses import dataclass

from ralu_edge.errors import UserError

TARGETS = ("desktop", "android", "executorch", "ios")
PRECISIONS = ("fp32", "int8")

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


@dataclass(frozen=True)
class TargetSpec:
    """How one target packages a bundle.

    graph_format: what the runtime loads; packaging: denoiser stage graphs ("dynamic" | "static");
    text_encoder_precision: default for the text encoders (issue 4: int8 on device targets);
    int8_methods: quantization method per graph role when that role is int8; placeholder_slots: fixed
    number of learned-token slots of the text encoders, None for a dynamic (optional) input."""

    name: str
    graph_format: str
    packaging: str
    packaging_note: str
    text_encoder_precision: str
    int8_methods: dict[str, str]
    placeholder_slots: int | None = None


# weight_qdq for int8 ORT graphs (bench 'int8 text encoders' / 'int8 denoiser' tables, shapes): the best output
# cosine of the three methods (denoiser 0.99999 vs 0.9999 dynamic, 0.9997 static QDQ), the best image PSNR
# vs fp32 (18-step baseline: 44 dB vs 37 / 15 dB), the smallest files (7.3 MB vs 12.1 MB dynamic, 24.2 fp32),
# and float activations, so zeroth-order personalization through the int8 graphs still sees the loss move
# (zo fd cos 0.999 vs ~0 for dynamic and static QDQ, which quantize activations). Its price: 1.3-1.6x the
# fp32 latency on this AVX2 CPU (weights dequantized per run); dynamic int8 is 1.6x faster than fp32 but W8A8.
_INT8 = {"denoiser": "weight_qdq", "denoiser_ids": "weight_qdq", "text_encoder": "weight_qdq"}

TARGET_SPECS: dict[str, TargetSpec] = {
    "desktop": TargetSpec("desktop", "onnx", "dynamic", DYNAMIC_NOTE, "fp32", _INT8),
    "android": TargetSpec("android", "ort", "dynamic", DYNAMIC_NOTE, "int8", _INT8),
    "executorch": TargetSpec("executorch", "pte", "static", STATIC_NOTE, "int8",
                             dict.fromkeys(("denoiser", "text_encoder"), "xnnpack_dynamic"), placeholder_slots=4),
    "ios": TargetSpec("ios", "mlpackage", "static", STATIC_NOTE, "int8",
                      dict.fromkeys(("denoiser", "text_encoder"), "coreml_weight_int8"), placeholder_slots=4),
}


def target_spec(name: str) -> TargetSpec:
    """The spec of target `name`; UserError listing the targets otherwise."""
    if name not in TARGET_SPECS:
        raise UserError(f"unknown target {name!r}; choose one of {', '.join(TARGETS)}.")
    return TARGET_SPECS[name]
