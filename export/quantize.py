"""int8 variants of exported graphs. Only MatMul/Gemm nodes with a constant 2-D weight are quantized; the
attention activation x activation MatMuls and the placeholder product (its B is an overridable input) stay
float (ENVIRONMENT.md: static QDQ of everything is unusable, and quantized attention is slower).

Methods (QuantMethod):
- "dynamic": onnxruntime.quantization.quantize_dynamic (MatMulInteger, int8 weights per tensor, uint8
  activations quantized at run time: W8A8).
- "weight_qdq": our pass, int8 weights per output channel (absmax / 127, zero point 0) behind a
  DequantizeLinear, float activations (W8A16, spec/ZO_PERSONALIZATION.md §10.1 "QDQ notes").
- "static_qdq": onnxruntime.quantization.quantize_static in QDQ format, per-channel weights and calibrated
  uint8 activations around the same MatMuls (needs calibration feeds).
The measured comparison is benchmarks/bench_export_choices.py; the bundle defaults are chosen from it."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Iterable, Literal

import numpy as np
import onnx
from onnx import helper, numpy_helper

QuantMethod = Literal["dynamic", "weight_qdq", "static_qdq"]
QUANT_METHODS: tuple[str, ...] = ("dynamic", "weight_qdq", "static_qdq")

# ORT >= 1.20 fuses DequantizeLinear -> MatMul into MatMulNBits, by default with accuracy_level 4 = int8
# activations: weight_qdq silently becomes W8A8 and zeroth-order differences collapse (bench 'zo fd cos').
# Accuracy level 1 keeps float activations (W8A16) with the int8 weights resident, and is faster than fp32.
SESSION_CONFIG: dict[str, dict[str, str]] = {
    "dynamic": {},
    "weight_qdq": {"session.qdq_matmulnbits_accuracy_level": "1"},
    "static_qdq": {},
}
MIN_WEIGHT_ELEMENTS = 256  # smaller weights (tiny projections) are not worth a DequantizeLinear


def weight_matmuls(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """MatMul/Gemm nodes whose second input is a constant float 2-D initializer (not an overridable graph
    input) of at least MIN_WEIGHT_ELEMENTS; unnamed nodes get unique names."""
    inputs = {i.name for i in model.graph.input}
    weights = {t.name: t for t in model.graph.initializer if t.name not in inputs}
    chosen = []
    for index, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type.lower()}_{index}"
        if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2 or node.input[1] not in weights:
            continue
        tensor = weights[node.input[1]]
        if (tensor.data_type == onnx.TensorProto.FLOAT and len(tensor.dims) == 2
                and int(np.prod(tensor.dims)) >= MIN_WEIGHT_ELEMENTS):
            chosen.append(node)
    return chosen


def quantize_weight_qdq(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` whose weight MatMul/Gemm inputs are int8 per output channel behind DequantizeLinear
    (MatMul B [K, N]: channel axis 1; Gemm with transB=1, B [N, K]: axis 0)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    initializers = {t.name: t for t in model.graph.initializer}
    done: dict[tuple[str, int], str] = {}
    new_nodes, new_inits = [], []
    for node in weight_matmuls(model):
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        axis = 0 if node.op_type == "Gemm" and trans_b else 1
        name = node.input[1]
        if (name, axis) not in done:
            weight = numpy_helper.to_array(initializers[name]).astype(np.float32)
            absmax = np.max(np.abs(weight), axis=1 - axis)
            scale = np.where(absmax > 0, absmax / 127.0, 1.0).astype(np.float32)
            shape = (1, -1) if axis == 1 else (-1, 1)
            q = np.clip(np.round(weight / scale.reshape(shape)), -127, 127).astype(np.int8)
            new_inits += [numpy_helper.from_array(q, f"{name}_int8"),
                          numpy_helper.from_array(scale, f"{name}_scale"),
                          numpy_helper.from_array(np.zeros_like(scale, dtype=np.int8), f"{name}_zero_point")]
            new_nodes.append(helper.make_node("DequantizeLinear", [f"{name}_int8", f"{name}_scale",
                                                                   f"{name}_zero_point"],
                                              [f"{name}_dequantized"], name=f"{name}_dequantize", axis=axis))
            done[(name, axis)] = f"{name}_dequantized"
        node.input[1] = done[(name, axis)]
    used = {i for n in model.graph.node for i in n.input}
    kept = [t for t in model.graph.initializer if t.name in used or t.name in {i.name for i in model.graph.input}]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept + new_inits)
    nodes = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(new_nodes + nodes)  # DequantizeLinear nodes read only initializers: topological
    return model


@contextlib.contextmanager
def _scratch_dir():
    """ORT's quantizers leave `<uuid>.data` files in the working directory (ENVIRONMENT.md): run them in a
    temporary one."""
    with tempfile.TemporaryDirectory(prefix="ralu-quant-") as tmp, contextlib.chdir(tmp):
        yield Path(tmp)


def _ort_quantize(model: onnx.ModelProto, method: QuantMethod,
                  calibration: Iterable[dict[str, np.ndarray]] | None) -> onnx.ModelProto:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, \
        quantize_static

    model = onnx.ModelProto.FromString(model.SerializeToString())  # saving below mutates the proto
    names = [n.name for n in weight_matmuls(model)]
    with _scratch_dir() as tmp:
        src, dst = tmp / "src.onnx", tmp / "dst.onnx"
        onnx.save_model(model, str(src), save_as_external_data=True, location="src.onnx_data")
        if method == "dynamic":
            quantize_dynamic(src, dst, op_types_to_quantize=["MatMul", "Gemm"], nodes_to_quantize=names,
                             weight_type=QuantType.QInt8, use_external_data_format=True,
                             extra_options={"MatMulConstBOnly": True})
        else:
            feeds = list(calibration or [])
            if not feeds:
                raise ValueError("static_qdq needs calibration feeds")

            class Reader(CalibrationDataReader):
                def __init__(self):
                    self.items = iter(feeds)

                def get_next(self):
                    return next(self.items, None)

            quantize_static(src, dst, Reader(), quant_format=QuantFormat.QDQ, op_types_to_quantize=["MatMul", "Gemm"],
                            nodes_to_quantize=names, per_channel=True, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, use_external_data_format=True,
                            extra_options={"MatMulConstBOnly": True})
        return onnx.load_model(str(dst), load_external_data=True)


def quantize(model, method: QuantMethod,
             calibration: Iterable[dict[str, np.ndarray]] | None = None) -> onnx.ModelProto:
    """The int8 variant of `model` (an onnx.ModelProto or onnx_ir Model, weights in memory) by `method`; the
    input is not modified. An IR model is serialized to a proto first: quantization holds the float weights
    as a proto beside the module, which is fine for the text encoders and for denoisers under 2 GB (a larger
    int8 denoiser is not supported; see docs/real-checkpoints.md)."""
    if not isinstance(model, onnx.ModelProto):
        import onnx_ir as ir

        model = ir.serde.serialize_model(model)
    if method == "weight_qdq":
        return quantize_weight_qdq(model)
    if method in ("dynamic", "static_qdq"):
        return _ort_quantize(model, method, calibration)
    raise ValueError(f"unknown quantization method {method!r}; choose one of {QUANT_METHODS}")
