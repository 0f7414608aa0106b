"""Attention as ONNX Runtime's fused kernel: every scaled dot-product attention of an exported graph
(torch's decomposition: MatMul(q, kᵀ) -> Softmax -> MatMul(·, v), with its scalings) becomes one
`com.microsoft::MultiHeadAttention`, whose CPU kernel runs MLAS flash attention — L2-sized tiles of q and k
with an online softmax, so the [heads, tokens, tokens] score matrix is never held. At FLUX.1's width and 4096
image tokens that matrix is ~2 GB per block call; the fused kernel holds a few MB and takes ~0.3x the time of
the unfused ops (benchmarks/bench_attention.py).

The rewrite is onnxscript's own (`ort_fusions.sdpa` recognises the patterns torch's exporter writes,
`sdpa_via_mha` maps them to MultiHeadAttention; what `optimize_for_ort` runs among its other fusions). Only
those two rules run here: the other fusions change nothing else the int8 / int4 passes select weights from.
"""

from __future__ import annotations

import logging

import onnx_ir as ir

log = logging.getLogger(__name__)

_FUSION_DOMAIN = "ai.onnxruntime._fusion"  # onnxscript's intermediate SDPA op; ORT cannot run it


def fuse_attention(model: ir.Model) -> tuple[ir.Model, int]:
    """`model` with its attentions as MultiHeadAttention and how many were fused. All or nothing: where some
    attention matched onnxscript's SDPA pattern but could not become MultiHeadAttention (a shape the kernel
    does not take), the model is returned unchanged (its weights are shared, not copied)."""
    from onnxscript.rewriter import pattern
    from onnxscript.rewriter.ort_fusions.sdpa import SDPA
    from onnxscript.rewriter.ort_fusions.sdpa_via_mha import SDPAImplementation

    # Rules made here, not onnxscript's module-level fuse_sdpa / replace_sdpa_by_mha: their matchers keep the last
    # node they looked at, hence the whole graph, whose initializers are views of the torch weights; the export
    # would then hold those weights while ORT maps the saved graph (+1x the weights at peak: 5.3 vs 3.3 GB on
    # the 2.1 GB real-width FLUX).
    fused = model.clone()
    found = pattern.RewriteRuleSet([SDPA.rule()]).apply_to_model(fused)
    if found == 0:
        return model, 0
    replaced = pattern.RewriteRuleSet([SDPAImplementation.rule()]).apply_to_model(fused)
    left = sum(node.domain == _FUSION_DOMAIN for node in fused.graph.all_nodes())
    if replaced != found or left:
        log.warning("attention fusion: %d of %d attentions could become MultiHeadAttention; graph left unfused",
                    replaced, found)
        return model, 0
    fused.opset_imports.pop(_FUSION_DOMAIN, None)
    fused.opset_imports.setdefault("com.microsoft", 1)
    ir.passes.common.RemoveUnusedNodesPass()(fused)
    return fused, replaced


def torch_attention_graph(heads: int | str, head_dim: int) -> "onnx.ModelProto":
    """One attention as torch's exporter writes FLUX's (the pattern fuse_attention rewrites): q, k, v
    [1, heads, S, head_dim] -> softmax(q kᵀ · head_dim^-0.5) v -> [1, S, heads · head_dim]. `heads` may be a
    symbolic name. For tests and benchmarks/bench_attention.py."""
    from onnx import TensorProto, helper

    q, k, v = (helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, heads, "S", head_dim]) for n in "qkv")
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, "S", None])
    nodes = [helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
             helper.make_node("MatMul", ["q", "kt"], ["scores"]),
             helper.make_node("Mul", ["scores", "scale"], ["scaled"]),
             helper.make_node("Softmax", ["scaled"], ["probs"], axis=-1),
             helper.make_node("MatMul", ["probs", "v"], ["heads_out"]),
             helper.make_node("Transpose", ["heads_out"], ["tokens_out"], perm=[0, 2, 1, 3]),
             helper.make_node("Reshape", ["tokens_out", "shape"], ["out"])]
    inits = [helper.make_tensor("scale", TensorProto.FLOAT, [], [head_dim ** -0.5]),
             helper.make_tensor("shape", TensorProto.INT64, [3], [0, 0, -1])]
    return helper.make_model(helper.make_graph(nodes, "attention", [q, k, v], [out], inits),
                             opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
