"""ONNX-level pieces of the exporter on tiny hand-built graphs (no torch): weights shared on disk between
graphs, and the int8 weight quantization pass (per-channel int8 behind DequantizeLinear) that keeps
activation x activation MatMuls and overridable inputs float."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ralu_export.onnx_files import ort_runner, save_sharing_weights
from ralu_export.parity import compare_outputs
from ralu_export.quantize import quantize, weight_matmuls


def _linear_model(weight: np.ndarray, bias_name: str = "b") -> onnx.ModelProto:
    """y = (x @ W) @ x^T-free attention-like product: MatMul(x, W) then MatMul(h, h^T) (act x act)."""
    k, n = weight.shape
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["h"], name="proj"),
        helper.make_node("Transpose", ["h"], ["ht"], perm=[1, 0]),
        helper.make_node("MatMul", ["h", "ht"], ["scores"], name="act_act"),
        helper.make_node("MatMul", ["x", "extra"], ["e"], name="overridable"),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", k]),
         helper.make_tensor_value_info("extra", TensorProto.FLOAT, [k, "p"])],
        [helper.make_tensor_value_info("h", TensorProto.FLOAT, ["rows", n]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["rows", "rows"]),
         helper.make_tensor_value_info("e", TensorProto.FLOAT, ["rows", "p"])],
        [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(np.zeros((k, 0), np.float32), "extra")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


def test_graphs_with_the_same_weights_store_them_once(tmp_path):
    weight = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)
    save_sharing_weights([(_linear_model(weight), tmp_path / "a.onnx"), (_linear_model(weight), tmp_path / "b.onnx")],
                         tmp_path / "model.onnx_data")
    assert (tmp_path / "model.onnx_data").stat().st_size == weight.nbytes
    x = np.ones((3, 64), np.float32)
    out_a = ort_runner(tmp_path / "a.onnx")({"x": x})
    out_b = ort_runner(tmp_path / "b.onnx")({"x": x})
    np.testing.assert_allclose(out_a[0], x @ weight, rtol=1e-5)
    np.testing.assert_array_equal(out_a[0], out_b[0])


def test_only_matmuls_with_constant_weights_are_quantized():
    model = _linear_model(np.ones((64, 32), np.float32))
    assert [n.name for n in weight_matmuls(model)] == ["proj"]


def test_weight_qdq_is_per_channel_int8_and_close_to_float(tmp_path):
    rng = np.random.default_rng(1)
    weight = (rng.standard_normal((64, 32)) * np.linspace(0.01, 3, 32)).astype(np.float32)  # columns differ
    quantized = quantize(_linear_model(weight), "weight_qdq")
    dq = [n for n in quantized.graph.node if n.op_type == "DequantizeLinear"]
    assert len(dq) == 1 and dq[0].attribute[0].i == 1
    q_weight = next(t for t in quantized.graph.initializer if t.data_type == TensorProto.INT8 and len(t.dims) == 2)
    assert list(q_weight.dims) == [64, 32]
    save_sharing_weights([(quantized, tmp_path / "q.onnx")], tmp_path / "q.onnx_data")
    x = rng.standard_normal((5, 64)).astype(np.float32)
    got = ort_runner(tmp_path / "q.onnx")({"x": x})[0]
    assert compare_outputs([(got, x @ weight)]).cosine > 0.9999
    # per-channel: the small columns keep their relative precision
    small = np.abs(got[:, 0] - (x @ weight)[:, 0]).max() / np.abs((x @ weight)[:, 0]).max()
    assert small < 1e-2


def test_dynamic_int8_runs_and_stays_close(tmp_path):
    rng = np.random.default_rng(2)
    weight = rng.standard_normal((64, 32)).astype(np.float32)
    quantized = quantize(_linear_model(weight), "dynamic")
    assert any(n.op_type == "MatMulInteger" for n in quantized.graph.node)
    assert sum(n.op_type == "MatMul" for n in quantized.graph.node) == 2  # act x act and the overridable one
    save_sharing_weights([(quantized, tmp_path / "d.onnx")], tmp_path / "d.onnx_data")
    x = rng.standard_normal((5, 64)).astype(np.float32)
    assert compare_outputs([(ort_runner(tmp_path / "d.onnx")({"x": x})[0], x @ weight)]).cosine > 0.999


def test_compare_outputs_reports_relative_error_and_cosine():
    ref = np.array([1.0, -2.0, 4.0])
    result = compare_outputs([(ref + [0.0, 0.0, 0.4], ref)])
    assert np.isclose(result.max_abs_error, 0.4) and np.isclose(result.max_rel_error, 0.1)
    assert 0.99 < result.cosine < 1.0
