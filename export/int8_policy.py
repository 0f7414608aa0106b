"""Which graphs of a bundle are int8, and by which method: the one table (issue 14). A graph is int8 when
its target quantizes its role (INT8_METHODS) and either the bundle is int8 (`--precision int8`) or the
target makes that role int8 by default (INT8_BY_DEFAULT: text encoders on device targets, issue 4), unless
the method cannot take the graph's boundary module (METHOD_REFUSES). The VAE is float everywhere.

Methods: "weight_qdq" (ORT graphs, quantize.py: int8 weights per output channel behind DequantizeLinear,
float activations), "xnnpack_dynamic" (ExecuTorch pt2e, XNNPACKQuantizer: per-channel weights, activations
quantized per run), "coreml_weight_int8" (coremltools.optimize linear_quantize_weights: weight-only,
per-channel). A graph's precision label in the manifest is "fp32" or "int8-<method>"."""

from __future__ import annotations

from typing import Literal, Optional

from ralu_export.families.spec import GraphSpec

Int8Method = Literal["weight_qdq", "xnnpack_dynamic", "coreml_weight_int8", "nbits4", "nbits8"]

# weight_qdq for int8 ORT graphs, chosen by benchmarks/bench_export_choices.py (results/export_choices.json,
# tables `text_encoders` and `denoiser`, shapes): of the three methods it gives the best output cosine, the best
# image PSNR against fp32 and the smallest files, and it keeps activations float, so zeroth-order
# personalization through the int8 graphs still sees the loss move (dynamic and static QDQ quantize
# activations and flatten the ZO finite differences). Its price, recorded there too: it is slower than fp32 on
# an AVX2 CPU (weights dequantized per run), while dynamic int8 is faster but W8A8.
_ORT = {"denoiser": "weight_qdq", "denoiser_ids": "weight_qdq", "text_encoder": "weight_qdq"}

INT8_METHODS: dict[str, dict[str, Int8Method]] = {  # target -> graph role -> method
    "desktop": _ORT,
    "android": _ORT,
    "executorch": {"denoiser": "xnnpack_dynamic", "text_encoder": "xnnpack_dynamic"},
    "ios": {"denoiser": "coreml_weight_int8", "text_encoder": "coreml_weight_int8"},
    "web": _ORT,
}
INT8_BY_DEFAULT: dict[str, tuple[str, ...]] = {  # target -> roles that are int8 in an fp32 bundle too
    "desktop": (),
    "android": ("text_encoder",),
    "executorch": ("text_encoder",),
    "ios": ("text_encoder",),
    "web": (),
}
# pt2e preparation turns T5's integer relative-position buckets into floats, and a constant bias breaks
# XNNPACK's broadcast: ExecuTorch's T5 programs stay fp32.
METHOD_REFUSES: dict[Int8Method, tuple[str, ...]] = {"xnnpack_dynamic": ("T5TextEncoder",)}


# --precision int4 (issue 15): the denoiser's weight MatMul/Gemm become ORT's MatMulNBits with 4-bit blocks
# (quantize.NBITS, settings chosen in docs/precision.md); the text encoders stay as in an int8 bundle
# (weight_qdq, float activations), since ZO's perturbations of the injected token rows must reach the loss.
# ExecuTorch and Core ML have no int4 row: their 4-bit paths (torchao, palettization) were not adopted.
_ORT_INT4 = {"denoiser": "nbits4", "denoiser_ids": "nbits4"}
INT4_METHODS: dict[str, dict[str, Int8Method]] = {"desktop": _ORT_INT4, "android": _ORT_INT4}


def int8_method(target: str, precision: str, graph: GraphSpec) -> Optional[Int8Method]:
    """The method quantizing `graph` in a `precision` bundle for `target`, or None for a float graph."""
    if precision == "int4" and graph.role in INT4_METHODS.get(target, {}):
        return INT4_METHODS[target][graph.role]
    method = INT8_METHODS[target].get(graph.role)
    wanted = precision in ("int8", "int4") or graph.role in INT8_BY_DEFAULT[target]
    if method is None or not wanted or graph.module in METHOD_REFUSES.get(method, ()):
        return None
    return method


def precision_label(method: Optional[Int8Method]) -> str:
    """The manifest's precision of a graph quantized by `method` (None: float)."""
    if method is None:
        return "fp32"
    return f"int{method[len('nbits'):]}-matmul_nbits" if method.startswith("nbits") else f"int8-{method}"
