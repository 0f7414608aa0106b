"""Attention fusion (export/attention_fusion.py): desktop denoisers run ONNX Runtime's MultiHeadAttention (flash
attention on the CPU) in place of torch's MatMul/Softmax/MatMul; other targets keep the exported ops."""

import json

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

from ralu_edge.errors import UserError
from tests.conftest import exported_bundle, tiny_model_bundle


def _attention_graph(heads) -> onnx.ModelProto:
    from ralu_export.attention_fusion import torch_attention_graph

    return torch_attention_graph(heads, 16)


def _run(model: onnx.ModelProto, feeds: dict) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def test_an_attention_becomes_one_multiheadattention_with_the_same_output():
    from ralu_export.attention_fusion import fuse_attention

    source = _attention_graph(4)
    fused, count = fuse_attention(ir.from_proto(source))
    proto = ir.serde.serialize_model(fused)
    ops = [n.op_type for n in proto.graph.node]
    assert count == 1 and ops.count("MultiHeadAttention") == 1 and "Softmax" not in ops
    rng = np.random.default_rng(0)
    feeds = {n: rng.standard_normal((1, 4, 70, 16)).astype(np.float32) for n in "qkv"}
    np.testing.assert_allclose(_run(proto, feeds), _run(source, feeds), rtol=1e-5, atol=1e-6)


def test_the_fusion_keeps_no_reference_to_the_graph_it_rewrote():
    """An exported graph's initializers are views of the torch weights; the export frees those weights once the
    graph is saved, which it cannot if the fusion (onnxscript's matchers) still holds the graph."""
    import gc
    import weakref

    from ralu_export.attention_fusion import fuse_attention

    fused, count = fuse_attention(ir.from_proto(_attention_graph(4)))
    graph = weakref.ref(fused.graph)
    del fused
    gc.collect()
    assert count == 1 and graph() is None


def test_a_graph_whose_attention_cannot_become_multiheadattention_is_left_as_it_was():
    """MultiHeadAttention needs the head count; with a symbolic one the SDPA pattern still matches, so the
    fusion must hand back the original graph rather than one holding onnxscript's intermediate op."""
    from ralu_export.attention_fusion import fuse_attention

    source = ir.from_proto(_attention_graph("heads"))
    fused, count = fuse_attention(source)
    assert count == 0 and fused is source
    assert [n.op_type for n in fused.graph].count("Softmax") == 1
    assert all(n.domain in ("", "ai.onnx") for n in fused.graph)


def _ops(bundle, graph_name: str = "denoiser") -> list[str]:
    manifest = json.loads((bundle / "ralu_config.json").read_text())
    graph = next(g for g in manifest["graphs"] if g["name"] == graph_name)
    return [n.op_type for n in onnx.load(str(bundle / graph["file"]), load_external_data=False).graph.node]


def test_the_desktop_denoiser_runs_multiheadattention_and_other_graphs_keep_their_ops(desktop_bundle):
    ops = _ops(desktop_bundle)
    assert ops.count("MultiHeadAttention") >= 2 and "Softmax" not in ops
    assert "MultiHeadAttention" not in _ops(desktop_bundle, "text_encoder")


@pytest.mark.parametrize("kind", ["flux", "sd3"])
def test_fused_and_unfused_exports_of_a_model_make_the_same_image(request, kind):
    from ralu_runtime.pipeline import Pipeline

    paths = tiny_model_bundle(request, kind, "desktop"), tiny_model_bundle(request, kind, "desktop", "--attention",
                                                                           "unfused")
    assert "MultiHeadAttention" in _ops(paths[0]) and "MultiHeadAttention" not in _ops(paths[1])
    fused, unfused = (Pipeline.from_bundle(p, threads=1) for p in paths)
    assert fused.bundle.manifest.graph("denoiser").parity.passed
    for mode in ("baseline", fused.modes[-1]):
        a, b = (p("a red circle", mode=mode, steps=4, seed=3).image.astype(np.int16) for p in (fused, unfused))
        moved = np.abs(a - b)
        assert moved.max() <= 1 and (moved > 0).mean() < 1e-3, (mode, moved.max(), (moved > 0).mean())


@pytest.mark.parametrize("target", ["android", "web", "executorch", "ios"])
def test_fused_attention_is_refused_for_other_targets_before_any_model_loads(tmp_path, target):
    from ralu_export.plan import ExportConfig, plan_export

    with pytest.raises(UserError, match="--attention fused .* is for the desktop target"):
        plan_export(ExportConfig(model="shapes", target=target, out=tmp_path / "b", attention="fused"))
    assert not (tmp_path / "b").exists()


def test_the_android_bundle_keeps_the_exported_attention(request):
    operators = (exported_bundle(request, "android") / "required_operators.config").read_text()
    assert "MultiHeadAttention" not in operators and "Softmax" in operators
