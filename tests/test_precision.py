"""--precision int4 (issue 15): the MatMulNBits pass against ORT's own quantizer, its Gemm handling, the plan's
refusals, and (slow) int4 bundles of the built-in model through the runtime."""

import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from ralu_edge.errors import UserError
from ralu_export.quantize import NBITS, NBitsConfig, quantize, quantize_nbits

from tests.conftest import exported_bundle


def _matmul_graph(weight: np.ndarray, gemm: bool = False) -> onnx.ModelProto:
    """x [B, K] -> x @ W (MatMul, W [K, N]) or Gemm(x, W^T stored [N, K], bias, transB=1)."""
    k, n = weight.shape
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", k])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", n])
    if gemm:
        inits = [numpy_helper.from_array(np.ascontiguousarray(weight.T), "w"),
                 numpy_helper.from_array(np.linspace(-1, 1, n, dtype=np.float32), "b")]
        node = helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1, name="gemm")
    else:
        inits = [numpy_helper.from_array(weight, "w")]
        node = helper.make_node("MatMul", ["x", "w"], ["y"], name="matmul")
    graph = helper.make_graph([node], "g", [x], [y], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def _initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


@pytest.fixture(scope="module")
def weight():
    return np.random.default_rng(0).standard_normal((96, 80)).astype(np.float32)


@pytest.mark.parametrize("method", ["nbits4", "nbits8"])
def test_the_nbits_pass_packs_exactly_as_onnxruntimes_own_quantizer(weight, method):
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    cfg = NBITS[method]
    ours = quantize(_matmul_graph(weight), method)
    reference = MatMulNBitsQuantizer(_matmul_graph(weight), bits=cfg.bits, block_size=cfg.block_for(len(weight)),
                                     is_symmetric=cfg.symmetric, accuracy_level=cfg.accuracy_level)
    reference.process()
    ref = reference.model.model
    (node,), (ref_node,) = ours.graph.node, ref.graph.node
    assert node.op_type == ref_node.op_type == "MatMulNBits" and node.domain == "com.microsoft"
    assert {a.name: helper.get_attribute_value(a) for a in node.attribute} == \
        {a.name: helper.get_attribute_value(a) for a in ref_node.attribute}
    got, want = _initializers(ours), _initializers(ref)
    for ours_name, ref_name in zip(node.input[1:], ref_node.input[1:]):
        np.testing.assert_array_equal(got[ours_name], want[ref_name])
    x = np.random.default_rng(1).standard_normal((3, 96)).astype(np.float32)
    np.testing.assert_array_equal(_run(ours, x), _run(ref, x))


@pytest.mark.parametrize("method, floor", [("nbits4", 0.99), ("nbits8", 0.9999)])
def test_a_gemm_with_transposed_weight_and_bias_becomes_matmulnbits_plus_add(weight, method, floor):
    model = _matmul_graph(weight, gemm=True)
    quantized = quantize(model, method)
    assert [n.op_type for n in quantized.graph.node] == ["MatMulNBits", "Add"]
    assert "w" not in _initializers(quantized)  # the float weight is gone, not stored beside its blocks
    x = np.random.default_rng(2).standard_normal((4, 96)).astype(np.float32)
    ref, got = _run(model, x).ravel(), _run(quantized, x).ravel()
    assert ref @ got / (np.linalg.norm(ref) * np.linalg.norm(got)) > floor


def test_int4_weights_take_under_a_sixth_of_the_float_bytes(weight):
    big = np.random.default_rng(3).standard_normal((1024, 256)).astype(np.float32)
    sizes = {m: sum(t.nbytes for t in _initializers(quantize(_matmul_graph(big), m)).values())
             for m in ("nbits4", "nbits8")}
    assert sizes["nbits4"] < big.nbytes / 6 and sizes["nbits4"] < sizes["nbits8"] < big.nbytes / 3


def test_an_nbits_config_block_must_divide_into_whole_bytes():
    assert all((cfg.block_size * cfg.bits) % 8 == 0 for cfg in NBITS.values())
    assert NBitsConfig(4, 128, 1) == NBITS["nbits4"]  # the measured choice (docs/precision.md)


@pytest.mark.parametrize("k, block", [(3072, 128), (15360, 128), (192, 64), (960, 64), (96, 32), (80, 16),
                                      (100, 128)])
def test_each_weight_takes_the_largest_block_up_to_128_that_divides_its_rows(k, block):
    assert NBITS["nbits4"].block_for(k) == block  # 100: no power of two >= 16 divides it, so 128 rows, padded


def test_generation_kernels_take_int8_activations_only_on_wide_weights():
    from ralu_export.quantize import GENERATION_NBITS, quantize_nbits

    cfg = GENERATION_NBITS["nbits4"]
    for k, level in ((2048, 4), (192, 1)):
        w = np.random.default_rng(4).standard_normal((k, 32)).astype(np.float32)
        (node,) = quantize_nbits(_matmul_graph(w), cfg).graph.node
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        assert (attrs["accuracy_level"], attrs["block_size"]) == (level, cfg.block_for(k)), k


@pytest.mark.parametrize("target", ["executorch", "ios"])
def test_int4_is_refused_for_targets_without_matmulnbits_before_any_model_loads(tmp_path, target):
    from ralu_export.plan import ExportConfig, plan_export

    with pytest.raises(UserError, match="precision int4 .* is for the desktop and android targets"):
        plan_export(ExportConfig(model="shapes", target=target, out=tmp_path / "b", precision="int4"))


@pytest.mark.slow  # a fresh interpreter importing the exporter: ~10 s
def test_ralu_export_refuses_int4_for_ios_with_exit_status_2(tmp_path):
    done = subprocess.run([sys.executable, "-m", "ralu_export.cli", "--model", "shapes", "--target", "ios",
                           "--precision", "int4", "--out", str(tmp_path / "b")], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "int4" in done.stderr
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
@pytest.mark.parametrize("target", ["desktop", "android"])
def test_an_int4_bundle_runs_matmulnbits_and_keeps_int8_text_encoders(request, target, tmp_path):
    bundle = exported_bundle(request, target, "int4")
    manifest = json.loads((bundle / "ralu_config.json").read_text())
    assert manifest["precision"] == "int4"
    graphs = {g["name"]: g for g in manifest["graphs"]}
    assert graphs["denoiser"]["precision"] == "int4-matmul_nbits" and graphs["denoiser"]["parity"]["passed"]
    assert all(g["precision"] == "int8-weight_qdq" for g in graphs.values() if g["role"] == "text_encoder")
    if target == "android":
        ops = (bundle / "required_operators.config").read_text()
        assert "MatMulNBits" in ops and graphs["denoiser"]["file"].endswith(".ort")
        assert graphs["denoiser"]["generation_file"] is None  # the .ort's kernels are fixed at conversion
    else:
        model = onnx.load(str(bundle / graphs["denoiser"]["file"]), load_external_data=False)
        assert sum(n.op_type == "MatMulNBits" for n in model.graph.node) > 40
    done = subprocess.run([sys.executable, "-m", "ralu_runtime.cli_run", "--bundle", str(bundle), "--prompt",
                           "a large red circle on the left", "--mode", "ralu-4x", "--threads", "1", "--out",
                           str(tmp_path), "--json"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["seconds_load"] > 0


@pytest.mark.parametrize("target", ["desktop", "android"])
def test_an_int4_bundle_quantizes_denoisers_to_4_bits_and_text_encoders_as_int8_bundles_do(target):
    from ralu_export.families import FAMILIES
    from ralu_export.int8_policy import int8_method, precision_label

    for family in FAMILIES.values():
        for spec in family.graphs:
            method = int8_method(target, "int4", spec)
            if spec.role in ("denoiser", "denoiser_ids"):
                assert precision_label(method) == "int4-matmul_nbits", spec.name
            elif spec.role == "text_encoder":
                assert method == int8_method(target, "int8", spec) == "weight_qdq", spec.name
            else:
                assert method is None, spec.name


def _denoiser_feeds(session, rng: np.random.Generator, tokens: int = 256) -> dict[str, np.ndarray]:
    """Random feeds for a bundle's denoiser session at `tokens` image tokens (RoPE rows: text + image)."""
    feeds = {}
    for spec in session.session.get_inputs():
        if spec.name in ("timestep", "guidance"):
            feeds[spec.name] = np.array([0.6], np.float32)
        elif spec.name.startswith("rope"):
            text = feeds["encoder_hidden_states"].shape[1]
            angles = rng.uniform(0, 6, (text + tokens, spec.shape[1]))
            feeds[spec.name] = (np.cos(angles) if spec.name.endswith("cos") else np.sin(angles)).astype(np.float32)
        else:
            shape = [d if isinstance(d, int) else tokens for d in spec.shape]
            feeds[spec.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


@pytest.mark.slow
@pytest.mark.parametrize("precision, zo_floor", [("int8", 0.99), ("int4", 0.9)])
def test_a_desktop_quantized_denoiser_generates_with_int8_activations_and_personalizes_with_float_ones(
        request, desktop_bundle, precision, zo_floor):
    """int8: generation sessions run MatMulNBits at accuracy level 4 (int8 dot products) through the manifest's
    generation_session_config (the QDQ graph's fusion takes the level from the session); personalization sessions
    keep level 1, so a zeroth-order perturbation of the text states (mu 1e-3) moves their output as it moves
    fp32's, which level 4 rounds away (docs/precision.md: ZO direction cosine 0.999 int8, 0.96 int4). int4 takes
    level 4 only on weights with K >= 2048 (quantize.GENERATION_NBITS); the built-in model has none, so its int4
    bundle has no generation file and both sessions keep the ZO direction."""
    from ralu_runtime.bundle import open_bundle
    from ralu_runtime.sessions import SessionConfig, open_session

    bundle = open_bundle(exported_bundle(request, "desktop", precision))
    graph = bundle.manifest.graph("denoiser")
    if precision == "int8":
        assert graph.session_config == {"session.qdq_matmulnbits_accuracy_level": "1"}
        assert graph.generation_session_config == {"session.qdq_matmulnbits_accuracy_level": "4"}
        assert graph.generation_file is None
        assert graph.generation_parity.passed and graph.generation_parity.cosine >= graph.parity.tolerance
    else:
        assert graph.generation_file is None and graph.generation_parity is None
        assert {a.i for n in onnx.load(str(bundle.path(graph.file)), load_external_data=False).graph.node
                if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "accuracy_level"} == {1}
    assert all(not g.generation_session_config and g.generation_file is None
               for g in bundle.manifest.graphs if g.role != "denoiser")
    sessions = {purpose: open_session(bundle, "denoiser", SessionConfig(threads=1, purpose=purpose))
                for purpose in ("generate", "personalize")}
    reference = open_session(open_bundle(desktop_bundle), "denoiser", SessionConfig(threads=1))
    rng = np.random.default_rng(0)
    feeds = _denoiser_feeds(reference, rng)
    moved = dict(feeds, encoder_hidden_states=(feeds["encoder_hidden_states"] + 1e-3 * rng.standard_normal(
        feeds["encoder_hidden_states"].shape)).astype(np.float32))

    def difference(session) -> np.ndarray:
        return (session.run(None, moved)[0].astype(np.float64) - session.run(None, feeds)[0]).ravel()

    def cosine(a, b):
        return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))

    fp32 = difference(reference)
    assert cosine(difference(sessions["personalize"]), fp32) > zo_floor
    if precision == "int8":
        assert abs(cosine(difference(sessions["generate"]), fp32)) < 0.5
    else:
        assert cosine(difference(sessions["generate"]), fp32) > zo_floor
    outputs = {p: s.run(None, feeds)[0].astype(np.float64).ravel() for p, s in sessions.items()}
    assert cosine(outputs["generate"], outputs["personalize"]) > 0.99


def test_int4_generation_kernels_round_a_zeroth_order_perturbation_away_where_personalization_keeps_it():
    """On a weight wide enough for level 4 (K >= 2048): the generation graph's int8 activations flatten a 1e-3
    perturbation of the input to noise, the personalization graph's float activations move with it as fp32 does,
    and both compute the same product."""
    from ralu_export.quantize import GENERATION_NBITS

    rng = np.random.default_rng(5)
    w = (rng.standard_normal((2048, 64)) / np.sqrt(2048)).astype(np.float32)
    graphs = {"fp32": _matmul_graph(w), "personalize": quantize(_matmul_graph(w), "nbits4"),
              "generate": quantize_nbits(_matmul_graph(w), GENERATION_NBITS["nbits4"])}
    x = rng.standard_normal((16, 2048)).astype(np.float32)
    moved = (x + 1e-3 * rng.standard_normal(x.shape)).astype(np.float32)
    diff = {name: (_run(m, moved).astype(np.float64) - _run(m, x)).ravel() for name, m in graphs.items()}

    def cosine(a, b):
        return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))

    assert cosine(diff["personalize"], diff["fp32"]) > 0.9
    assert abs(cosine(diff["generate"], diff["fp32"])) < 0.5
    assert cosine(_run(graphs["generate"], x).ravel(), _run(graphs["personalize"], x).ravel()) > 0.99
