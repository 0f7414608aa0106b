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
    "measured leaner than one static session per stage (the EP prepacks weights per session; "
    "benchmarks/bench_export_choices.py 'packaging' rows) at equal or better latency. NPU EPs (NNAPI, QNN, "
    "Core ML EP) need static shapes: create one session per stage length with "
    "SessionOptions.add_free_dimension_override_by_name(token_dim, L) and (rope_token_dim, L + text_length); "
    "the stage lengths are in denoiser.stage_lengths."
)
STATIC_NOTE = (
    "one static graph (method) per RALU stage length: ExecuTorch's XNNPACK delegate and Core ML plan memory "
    "per static shape, and Core ML's Neural Engine needs fixed shapes."
)


@dataclass(frozen=True)
class TargetSpec:
    """How one target packages a bundle.

    graph_format: what the runtime loads; packaging: denoiser stage graphs ("dynamic" | "static");
    text_encoder_precision: default for the text encoders (issue 4: int8 on device targets);
    int8_methods: quantization method per graph role when that role is int8."""

    name: str
    graph_format: str
    packaging: str
    packaging_note: str
    text_encoder_precision: str
    int8_methods: dict[str, str]


# weight_qdq everywhere (bench 'int8 text encoders' and 'int8 denoiser' tables): the best output cosine of
# the three methods, the smallest files, float activations, so zeroth-order personalization through the
# int8 graphs still sees the loss move (zo fd cos ~0.999 vs ~0 for dynamic / static QDQ, which quantize
# activations), and with MatMulNBits at accuracy level 1 no slower than fp32.
_INT8 = {"denoiser": "weight_qdq", "denoiser_ids": "weight_qdq", "text_encoder": "weight_qdq"}

TARGET_SPECS: dict[str, TargetSpec] = {
    "desktop": TargetSpec("desktop", "onnx", "dynamic", DYNAMIC_NOTE, "fp32", _INT8),
    "android": TargetSpec("android", "ort", "dynamic", DYNAMIC_NOTE, "int8", _INT8),
    "executorch": TargetSpec("executorch", "pte", "static", STATIC_NOTE, "int8", _INT8),
    "ios": TargetSpec("ios", "mlpackage", "static", STATIC_NOTE, "int8", _INT8),
}


def target_spec(name: str) -> TargetSpec:
    """The spec of target `name`; UserError listing the targets otherwise."""
    if name not in TARGET_SPECS:
        raise UserError(f"unknown target {name!r}; choose one of {', '.join(TARGETS)}.")
    return TARGET_SPECS[name]
