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
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal

import numpy as np
import onnx
import onnx_ir as ir

QuantMethod = Literal["dynamic", "weight_qdq", "static_qdq", "nbits4", "nbits8"]
QUANT_METHODS: tuple[str, ...] = ("dynamic", "weight_qdq", "static_qdq", "nbits4", "nbits8")

# ORT >= 1.20 fuses DequantizeLinear -> MatMul into MatMulNBits, by default with accuracy_level 4 = int8
# activations: weight_qdq silently becomes W8A8 and zeroth-order differences collapse (bench 'zo fd cos').
# Accuracy level 1 keeps float activations (W8A16) with the int8 weights resident, and is faster than fp32.
SESSION_CONFIG: dict[str, dict[str, str]] = {
    "dynamic": {},
    "weight_qdq": {"session.qdq_matmulnbits_accuracy_level": "1"},
    "static_qdq": {},
    "nbits4": {},  # MatMulNBits carries its accuracy_level as a node attribute (NBITS below)
    "nbits8": {},
}
# Sessions that only generate may run the fused int8 MatMuls with int8 activations (MatMulNBits accuracy level
# 4: int8 dot products, AVX2/AVX-512 VNNI here, ARM dot-product on phones): at FLUX.1's width 0.64x fp32's
# step at 1024 tokens where level 1 takes 1.30x (docs/precision.md). Personalization keeps SESSION_CONFIG (its
# zeroth-order differences vanish at level 4). Only the denoiser takes it: the text encoders run once per image, and T5's
# activation outliers are what int8 activations handle worst.
GENERATION_SESSION_CONFIG: dict[str, dict[str, str]] = {
    "weight_qdq": {"session.qdq_matmulnbits_accuracy_level": "4"},
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


def _weight_matmuls_ir(graph: ir.Graph) -> list[ir.Node]:
    """weight_matmuls on an onnx_ir graph (the same rule)."""
    inputs = {v.name for v in graph.inputs}
    chosen = []
    for node in graph:
        if node.op_type not in ("MatMul", "Gemm") or node.domain not in ("", "ai.onnx") or len(node.inputs) < 2:
            continue
        weight = node.inputs[1]
        tensor = weight.const_value if weight is not None and weight.is_initializer() else None
        if (tensor is not None and weight.name not in inputs and tensor.dtype == ir.DataType.FLOAT
                and len(tensor.shape) == 2 and tensor.size >= MIN_WEIGHT_ELEMENTS):
            chosen.append(node)
    return chosen


def _channel_scale(weight: np.ndarray, axis: int) -> np.ndarray:
    """Symmetric int8 scale per channel along `axis` of a 2-D weight: absmax / 127 (1 for all-zero channels)."""
    absmax = np.max(np.abs(weight), axis=1 - axis)
    return np.where(absmax > 0, absmax / 127.0, 1.0).astype(np.float32)


def _int8(weight: np.ndarray, scale: np.ndarray, axis: int) -> np.ndarray:
    shape = (1, -1) if axis == 1 else (-1, 1)
    return np.clip(np.round(weight / scale.reshape(shape)), -127, 127).astype(np.int8)


def _lazy_int8(source, scale: np.ndarray, axis: int, name: str) -> ir.LazyTensor:
    """The int8 weight as a tensor computed when it is read (saving reads one tensor at a time), so an export
    never holds all int8 weights beside the float ones."""
    def compute():
        return ir.tensor(_int8(np.asarray(source.numpy(), dtype=np.float32), scale, axis), name=name)

    return ir.LazyTensor(compute, dtype=ir.DataType.INT8, shape=ir.Shape(source.shape), name=name)


def _quantize_weight_qdq_ir(model: ir.Model) -> ir.Model:
    """weight_qdq of an onnx_ir model: a clone (new nodes and values, the same tensor objects, so no weight is
    copied) quantized one weight at a time; a model whose float weights are views of torch parameters
    (onnx_export) never holds a float copy of them, and the int8 weights are computed when read (saving),
    one at a time. The float weights must stay alive until then."""
    model = model.clone()
    graph = model.graph
    done: dict[tuple[str, int], ir.Value] = {}
    dequantize_nodes = []
    for node in _weight_matmuls_ir(graph):
        trans_b = node.attributes.get("transB")
        axis = 0 if node.op_type == "Gemm" and trans_b is not None and trans_b.as_int() else 1
        weight = node.inputs[1]
        name = weight.name
        if (name, axis) not in done:
            source = weight.const_value
            scale = _channel_scale(np.asarray(source.numpy(), dtype=np.float32), axis)
            tensors = (_lazy_int8(source, scale, axis, f"{name}_int8"), ir.tensor(scale, name=f"{name}_scale"),
                       ir.tensor(np.zeros_like(scale, np.int8), name=f"{name}_zero_point"))
            values = []
            for tensor in tensors:
                value = ir.Value(name=tensor.name, shape=ir.Shape(tensor.shape), type=ir.TensorType(tensor.dtype),
                                 const_value=tensor)
                graph.register_initializer(value)
                values.append(value)
            dq = ir.node("DequantizeLinear", values, attributes={"axis": axis}, name=f"{name}_dequantize",
                         outputs=[ir.Value(name=f"{name}_dequantized")])
            dequantize_nodes.append(dq)
            done[(name, axis)] = dq.outputs[0]
        node.replace_input_with(1, done[(name, axis)])
        if not weight.uses() and name in graph.initializers:
            graph.initializers.pop(name)
    if dequantize_nodes:  # DequantizeLinear reads only initializers: first in the graph is topological
        graph.insert_before(next(iter(graph)), dequantize_nodes)
    return model


def quantize_weight_qdq(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` whose weight MatMul/Gemm inputs are int8 per output channel behind DequantizeLinear
    (MatMul B [K, N]: channel axis 1; Gemm with transB=1, B [N, K]: axis 0)."""
    return ir.serde.serialize_model(_quantize_weight_qdq_ir(ir.from_proto(model)))


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


@dataclass(frozen=True)
class NBitsConfig:
    """Block-wise weight quantization into com.microsoft MatMulNBits (ORT's kernel for 4/8-bit weights, the one
    its LLM stack uses): `bits` per weight, one float scale per block of at most `block_size` rows of K
    (symmetric: no zero points), and the kernel's `accuracy_level` (0/1 float compute; 4: activations quantized
    to int8 per block at run time, int8 dot products), which nodes whose K is under `int8_compute_min_k` do not
    take (they keep level 1)."""

    bits: int
    block_size: int
    accuracy_level: int
    symmetric: bool = True
    int8_compute_min_k: int = 0

    def block_for(self, k: int) -> int:
        """The block of a weight with `k` rows: the largest power of two up to block_size that divides k (at
        least 16, MatMulNBits' smallest), so no block is padded; block_size where none divides."""
        block = self.block_size
        while block > 16 and k % block:
            block //= 2
        return block if k % block == 0 else self.block_size

    def level_for(self, k: int) -> int:
        return self.accuracy_level if k >= self.int8_compute_min_k else 1


# Measured per weight shape (benchmarks/bench_nbits_kernel.py on an Intel Xeon, 1 thread; docs/precision.md):
# - block 128 (ORT's own quantizer default): at FLUX.1's width level 4 runs 0.67-0.75x fp32's MatMul at block 128
#   against 0.98-1.15x at block 32 (fewer per-block scales and activation quantizations; 256 is 0.60-0.66x but
#   coarser); output cosine to fp32 0.9947 vs 0.9963 on N(0, 1/K) weights.
# - The graph file's kernel (`file`, what personalization and android open) is level 1: level 4 (int8
#   activations) flattens zeroth-order finite differences to noise (direction cosine ~0.00 vs 0.96 at level 1 on
#   the built-in model's denoiser). Generation gets a second graph file over the same weights with level 4
#   (GraphEntry.generation_file), but only where K >= 2048: below that, level 4 is slower than level 1 (and than
#   fp32), 1.01-1.9x fp32 at the built-in and 1024-token models' widths where level 1 is 0.94-1.08x.
NBITS: dict[str, NBitsConfig] = {"nbits4": NBitsConfig(4, 128, 1), "nbits8": NBitsConfig(8, 32, 1)}
GENERATION_NBITS: dict[str, NBitsConfig] = {"nbits4": NBitsConfig(4, 128, 4, int8_compute_min_k=2048)}


def _nbits_pack(weight: np.ndarray, cfg: NBitsConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ORT's own packing (the C++ kernel MatMulNBitsQuantizer calls) of a [K, N] float weight in blocks of
    cfg.block_for(K): packed [N, K_blocks, blob] uint8, scales [N, K_blocks] float32, zero points
    [N, ceil(K_blocks / (8 / bits))] uint8."""
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits, quantize_matmul_8bits

    rows, cols = weight.shape
    pack = 8 // cfg.bits
    block = cfg.block_for(rows)
    blocks = (rows + block - 1) // block
    weight = np.pad(np.ascontiguousarray(weight, dtype=np.float32), ((0, blocks * block - rows), (0, 0)))
    packed = np.zeros((cols, blocks, (block + pack - 1) // pack), dtype=np.uint8)
    zero_points = np.zeros((cols, (blocks + pack - 1) // pack), dtype=np.uint8)
    scales = np.zeros((cols, blocks), dtype=np.float32)
    kernel = quantize_matmul_4bits if cfg.bits == 4 else quantize_matmul_8bits
    kernel(packed, weight, scales, zero_points, block, cols, rows, cfg.symmetric)
    return packed, scales, zero_points


def _quantize_nbits_ir(model: ir.Model, cfg: NBitsConfig) -> ir.Model:
    """The weight MatMul/Gemm nodes of a clone of `model` replaced by MatMulNBits (Gemm: its bias as an Add),
    each weight packed when it is read (saving), one at a time, as _quantize_weight_qdq_ir does: a multi-GB
    denoiser is quantized without a second copy of its weights. MatMulNBitsQuantizer itself takes a whole
    ModelProto (no graph over 2 GB) and only MatMul, while FLUX's AdaLN projections, a third of its weights, are
    Gemm."""
    model = model.clone()
    graph = model.graph
    model.opset_imports.setdefault("com.microsoft", 1)
    for node in _weight_matmuls_ir(graph):
        attrs = node.attributes
        if node.op_type == "Gemm" and (attrs.get("transA") is not None and attrs["transA"].as_int()
                                       or any(attrs.get(a) is not None and attrs[a].as_float() != 1.0
                                              for a in ("alpha", "beta"))):
            continue  # not a plain x @ W (+ b): left float
        trans_b = node.op_type == "Gemm" and attrs.get("transB") is not None and attrs["transB"].as_int()
        weight = node.inputs[1]
        source = weight.const_value
        rows, cols = (source.shape[1], source.shape[0]) if trans_b else tuple(source.shape)
        block = cfg.block_for(rows)
        blocks = (rows + block - 1) // block

        def packed_part(index, source=source, trans_b=trans_b, name=weight.name):
            def compute():
                w = np.asarray(source.numpy(), dtype=np.float32)
                return ir.tensor(_nbits_pack(w.T if trans_b else w, cfg)[index], name=f"{name}_nbits{index}")
            return compute

        shapes = ((cols, blocks, (block * cfg.bits + 7) // 8), (cols, blocks))
        dtypes = (ir.DataType.UINT8, ir.DataType.FLOAT)
        parts = []
        for index, (shape, dtype) in enumerate(zip(shapes, dtypes)):
            name = f"{weight.name}_nbits{cfg.bits}_{'q' if index == 0 else 'scales'}"
            tensor = ir.LazyTensor(packed_part(index), dtype=dtype, shape=ir.Shape(shape), name=name)
            value = ir.Value(name=name, shape=ir.Shape(shape), type=ir.TensorType(dtype), const_value=tensor)
            graph.register_initializer(value)
            parts.append(value)
        out = node.outputs[0]
        matmul = ir.node("MatMulNBits", [node.inputs[0], *parts], domain="com.microsoft",
                         attributes={"K": rows, "N": cols, "bits": cfg.bits, "block_size": block,
                                     "accuracy_level": cfg.level_for(rows)},
                         name=f"{node.name}_nbits", outputs=[ir.Value(name=f"{out.name}_nbits")])
        new_nodes = [matmul]
        result = matmul.outputs[0]
        if node.op_type == "Gemm" and len(node.inputs) > 2 and node.inputs[2] is not None:
            add = ir.node("Add", [result, node.inputs[2]], name=f"{node.name}_bias",
                          outputs=[ir.Value(name=f"{out.name}_biased")])
            new_nodes.append(add)
            result = add.outputs[0]
        graph.insert_after(node, new_nodes)
        result.shape, result.type = out.shape, out.type
        was_output, name = out.is_graph_output(), out.name
        out.replace_all_uses_with(result, replace_graph_outputs=True)
        if was_output:  # the graph output keeps its name
            out.name, result.name = f"{name}_float", name
        graph.remove(node, safe=True)
        if not weight.uses() and weight.name in graph.initializers:
            graph.initializers.pop(weight.name)
    return model


def quantize_nbits(model, cfg: NBitsConfig):
    """`model` (onnx.ModelProto or onnx_ir Model) with its weight MatMuls as MatMulNBits of `cfg`."""
    if isinstance(model, onnx.ModelProto):
        return ir.serde.serialize_model(_quantize_nbits_ir(ir.from_proto(model), cfg))
    return _quantize_nbits_ir(model, cfg)


def quantize(model, method: QuantMethod, calibration: Iterable[dict[str, np.ndarray]] | None = None):
    """The int8 variant of `model` (an onnx.ModelProto or an onnx_ir Model) by `method`; the input is not
    modified. weight_qdq of an IR model (onnx_export.export_graph: weights are views of torch parameters)
    returns an IR model and works one weight at a time, which is what keeps int8 exports of multi-GB
    denoisers within memory; the ORT quantizers ("dynamic", "static_qdq") take a proto of the whole float
    model, so an IR model is serialized first (fine for the text encoders, not for weights beyond 2 GB)."""
    if method == "weight_qdq":
        return quantize_weight_qdq(model) if isinstance(model, onnx.ModelProto) else _quantize_weight_qdq_ir(model)
    if method in NBITS:
        return quantize_nbits(model, NBITS[method])
    if not isinstance(model, onnx.ModelProto):
        model = ir.serde.serialize_model(model)
    if method in ("dynamic", "static_qdq"):
        return _ort_quantize(model, method, calibration)
    raise ValueError(f"unknown quantization method {method!r}; choose one of {QUANT_METHODS}")
