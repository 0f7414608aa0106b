"""What a bundle records so that the runtime can apply a LoRA without torch and without re-export (issue 17,
docs/lora.md): for every final graph file, the tensors that hold the weight of a diffusers Linear a LoRA may
address (found by value, in whichever form the target left them: float W or W^T, int8 QDQ, or ORT's
MatMulNBits), with the byte offsets of their base values in the graph's own files; and for the bundle, the
components diffusers loads LoRAs into and the aliases of other formats (kohya's `lora_unet_...`), taken from
diffusers' own converter at export time rather than re-implemented as name rules in the runtime.

Matching by value, not by name: the ONNX exporter names a constant-folded W^T `val_123`, the quantizer
renames it, and ORT's format conversion fuses and renames it again; the weights' bytes survive all of it."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ralu_edge.manifest import (
    GraphEntry, LoraAlias, LoraAliasPart, LoraSpec, LoraTarget, Manifest, TensorLocation,
)

log = logging.getLogger(__name__)

# ONNX TensorProto data types -> manifest dtypes (only those a LoRA target can hold)
_ONNX_DTYPES = {1: "float32", 2: "uint8", 3: "int8"}
_WEIGHT_OPS = {"MatMul", "Gemm", "FusedMatMul", "DequantizeLinear", "MatMulNBits"}
EXECUTORCH_NOTE = ("ExecuTorch and Core ML programs carry their weights packed inside the program with no way to "
                   "replace them at load time, so these bundles take no LoRA: merge it into the model with "
                   "diffusers (load_lora_weights, fuse_lora, save_pretrained) and export again.")


def _sha(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def _channel_scale(weight_out_in: np.ndarray) -> np.ndarray:
    """quantize.py's weight_qdq scale per output channel (absmax / 127; 1 for an all-zero channel), [out]."""
    absmax = np.max(np.abs(weight_out_in), axis=1)
    return np.where(absmax > 0, absmax / 127.0, 1.0).astype(np.float32)


def _int8(weight_out_in: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return np.clip(np.round(weight_out_in / scale[:, None]), -127, 127).astype(np.int8)


@dataclass(frozen=True)
class _Form:
    module: str
    layout: str
    transposed: bool
    scale: np.ndarray | None


def module_weights(source: Path, components: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Every 2-D `*.weight` of the pipeline folder's LoRA-loadable components, as float32 [out, in] under its
    diffusers name with the component prefix ("transformer.transformer_blocks.0.attn.to_q")."""
    from safetensors import safe_open

    weights = {}
    for component in components:
        for path in sorted((source / component).glob("*.safetensors")):
            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():
                    if key.endswith(".weight") and len(f.get_slice(key).get_shape()) == 2:
                        weights[f"{component}.{key[:-len('.weight')]}"] = f.get_tensor(key).float().numpy()
    return weights


def _forms(weights: dict[str, np.ndarray]) -> dict[str, list[_Form]]:
    """sha256 of each form a module's weight can take in a graph -> the module(s) with those bytes."""
    forms: dict[str, list[_Form]] = {}
    for module, w in weights.items():
        scale = _channel_scale(w)
        q = _int8(w, scale)
        for array, layout, transposed, s in ((w, "float", False, None), (w.T, "float", True, None),
                                             (q, "qdq", False, scale), (q.T, "qdq", True, scale),
                                             ((q.astype(np.int16) + 128).astype(np.uint8), "nbits", False, scale)):
            forms.setdefault(_sha(array), []).append(_Form(module, layout, transposed, s))
    return forms


@dataclass
class _GraphFile:
    """A graph file's initializers {name: (dtype code, dims, file, offset)} and nodes [(op, inputs, attrs)]."""

    tensors: dict
    nodes: list


def _read_onnx(root: Path, rel: str) -> _GraphFile:
    import onnx

    path = root / rel
    model = onnx.load(str(path), load_external_data=False)
    blob = path.read_bytes()
    tensors = {}
    for t in model.graph.initializer:
        if t.data_type not in _ONNX_DTYPES or len(t.dims) not in (1, 2, 3):
            continue
        if t.data_location == onnx.TensorProto.EXTERNAL:
            info = {e.key: e.value for e in t.external_data}
            tensors[t.name] = (t.data_type, tuple(t.dims), (Path(rel).parent / info["location"]).as_posix(),
                               int(info.get("offset", 0)))
        elif t.raw_data:
            tensors[t.name] = (t.data_type, tuple(t.dims), rel, blob.find(t.raw_data))
    nodes = [(n.op_type, list(n.input), {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute})
             for n in model.graph.node]
    return _GraphFile(tensors, nodes)


def _read_ort(root: Path, rel: str) -> _GraphFile:
    from onnxruntime.tools.ort_format_model.ort_flatbuffers_py import fbs

    blob = (root / rel).read_bytes()
    graph = fbs.InferenceSession.InferenceSession.GetRootAs(bytearray(blob), 0).Model().Graph()
    tensors = {}
    for i in range(graph.InitializersLength()):
        t = graph.Initializers(i)
        dims = tuple(t.Dims(j) for j in range(t.DimsLength()))
        if t.DataType() in _ONNX_DTYPES and len(dims) in (1, 2, 3) and t.RawDataLength():
            tensors[t.Name().decode()] = (t.DataType(), dims, rel, blob.find(t.RawDataAsNumpy().tobytes()))
    nodes = []
    for i in range(graph.NodesLength()):
        n = graph.Nodes(i)
        attrs = {n.Attributes(j).Name().decode(): n.Attributes(j).I() for j in range(n.AttributesLength())}
        nodes.append((n.OpType().decode(), [n.Inputs(j).decode() for j in range(n.InputsLength())], attrs))
    return _GraphFile(tensors, nodes)


def _values(root: Path, entry) -> np.ndarray:
    code, dims, rel, offset = entry
    dtype = np.dtype(_ONNX_DTYPES[code])
    count = int(np.prod(dims))
    with open(root / rel, "rb") as f:
        f.seek(offset)
        return np.frombuffer(f.read(count * dtype.itemsize), dtype=dtype).reshape(dims)


def _location(entry) -> TensorLocation:
    code, dims, rel, offset = entry
    return TensorLocation(rel, offset, _ONNX_DTYPES[code], tuple(int(d) for d in dims))


def graph_targets(root: Path, graph: GraphEntry, forms: dict[str, list[_Form]]) -> tuple[LoraTarget, ...]:
    """The LoRA targets of one final graph file (see the module docstring); a tensor whose bytes several
    modules share is left out (a LoRA on one of them must not change the other)."""
    if graph.format not in ("onnx", "ort"):
        return ()
    parsed = (_read_ort if graph.format == "ort" else _read_onnx)(root, graph.file)
    weight_inputs: dict[str, tuple[str, list, dict]] = {}
    for op, inputs, attrs in parsed.nodes:
        position = 0 if op == "DequantizeLinear" else 1  # the weight operand
        if op in _WEIGHT_OPS and len(inputs) > position and inputs[position] in parsed.tensors:
            weight_inputs[inputs[position]] = (op, inputs, attrs)
    targets = []
    for name, (op, inputs, attrs) in weight_inputs.items():
        entry = parsed.tensors[name]
        if entry[3] < 0:
            continue
        matches = forms.get(_sha(_values(root, entry)), [])
        if len({m.module for m in matches}) != 1:
            continue
        form = matches[0]
        target = LoraTarget(form.module, form.layout, name, _location(entry), form.transposed)
        if form.layout != "float":
            scale_name = inputs[1] if op == "DequantizeLinear" else inputs[2]
            zero_name = inputs[2] if len(inputs) > 2 and op == "DequantizeLinear" else (
                inputs[3] if op == "MatMulNBits" and len(inputs) > 3 and inputs[3] else None)
            scale_entry = parsed.tensors.get(scale_name)
            if scale_entry is None or scale_entry[3] < 0:
                continue
            expected = form.scale if form.layout == "qdq" else np.repeat(form.scale, entry[1][1])
            if op == "MatMulNBits" and (attrs.get("bits") != 8 or attrs.get("block_size") != entry[1][2]):
                continue
            if not np.array_equal(_values(root, scale_entry).reshape(-1), expected):
                continue
            target = replace(target, scale=scale_name, scale_at=_location(scale_entry), zero_point=zero_name,
                             block_size=int(attrs.get("block_size", 0)) if op == "MatMulNBits" else 0)
        targets.append(target)
    return tuple(sorted(targets, key=lambda t: t.module))


def loadable_components(pipeline_class: str) -> tuple[str, ...]:
    """The components diffusers' `<pipeline_class>.load_lora_weights` loads LoRA weights into."""
    import diffusers

    return tuple(getattr(getattr(diffusers, pipeline_class), "_lora_loadable_modules", ()))


def _flux_checkpoint_names(weights: dict[str, np.ndarray]) -> list[str]:
    """The module names of the original FLUX checkpoint layout (kohya's `lora_unet_<name>`), for this model's
    depth; which diffusers modules they become is diffusers' converter's business, not ours."""
    double = len({k.split(".")[2] for k in weights if k.startswith("transformer.transformer_blocks.")})
    single = len({k.split(".")[2] for k in weights if k.startswith("transformer.single_transformer_blocks.")})
    names = [f"double_blocks_{i}_{part}_{layer}" for i in range(double) for part in ("img", "txt")
             for layer in ("attn_qkv", "attn_proj", "mlp_0", "mlp_2", "mod_lin")]
    names += [f"single_blocks_{i}_{layer}" for i in range(single) for layer in ("linear1", "linear2", "modulation_lin")]
    names += ["img_in", "txt_in", "time_in_in_layer", "time_in_out_layer", "vector_in_in_layer",
              "vector_in_out_layer", "guidance_in_in_layer", "guidance_in_out_layer", "final_layer_linear",
              "final_layer_adaLN_modulation_1"]
    return ["lora_unet_" + n for n in names]


# diffusers' converter emits text-encoder keys in its attention-processor naming; these are the module names
# those keys load into (diffusers.loaders.lora_conversion_utils._convert_text_encoder_lora_key, reversed).
_TE_ATTENTION_NAMES = {"to_q_lora": "q_proj", "to_k_lora": "k_proj", "to_v_lora": "v_proj", "to_out_lora": "out_proj"}
_UP_SUFFIXES = (".lora_B.weight", ".lora_linear_layer.up.weight", ".lora.up.weight", ".up.weight")


def _module_of_up_key(key: str) -> str | None:
    for suffix in _UP_SUFFIXES:
        if key.endswith(suffix):
            module = key[:-len(suffix)]
            head, _, last = module.rpartition(".")
            return f"{head}.{_TE_ATTENTION_NAMES[last]}" if last in _TE_ATTENTION_NAMES else module
    return None


def _converted_rows(pipeline, names: list[str], rows: int) -> dict[str, dict[str, np.ndarray]]:
    """{alias: {module: source row of each of its up rows}}: diffusers' `lora_state_dict` run on a rank-1
    fingerprint LoRA whose up matrix holds each row's index + 1."""
    import torch

    result = {}
    for name in names:
        probe = {f"{name}.lora_down.weight": torch.ones(1, 1),
                 f"{name}.lora_up.weight": torch.arange(1, rows + 1, dtype=torch.float32)[:, None]}
        try:
            converted = pipeline.lora_state_dict(probe)
        except (ValueError, AssertionError, KeyError, RuntimeError):
            continue  # diffusers cannot load this name for this model either
        parts = {}
        for key, value in converted.items():
            module = _module_of_up_key(key)
            if module is not None:
                parts[module] = value.reshape(-1).numpy().astype(np.int64) - 1
        if parts:
            result[name] = parts
    return result


def kohya_aliases(pipeline_class: str, weights: dict[str, np.ndarray]) -> tuple[LoraAlias, ...]:
    """The kohya names diffusers' converter accepts for this model, each with the row ranges of its up matrix
    that go to each diffusers module (several for a fused qkv). Names whose rows the converter does not map to
    whole modules of this model, as it maps them, are left out."""
    import diffusers

    pipeline = getattr(diffusers, pipeline_class)
    out_rows = {m: w.shape[0] for m, w in weights.items()}
    candidates = _flux_checkpoint_names(weights)  # names the converter does not know come back unconverted
    candidates += ["lora_te1_" + m[len("text_encoder."):].replace(".", "_") for m in weights
                   if m.startswith("text_encoder.")]
    first = _converted_rows(pipeline, candidates, 21504)  # 3 x 3072 + 12288: any split FLUX's converter makes
    aliases = []
    for name, parts in first.items():
        if not all(m in out_rows for m in parts):
            continue
        exact = _converted_rows(pipeline, [name], sum(out_rows[m] for m in parts)).get(name, {})
        pieces = []
        for module, rows in exact.items():
            if module not in out_rows or len(rows) != out_rows[module]:
                break
            start = int(rows[0])  # kept only when the module's rows are one contiguous block of the source
            if not np.array_equal(rows, np.arange(start, start + len(rows))):
                break
            pieces.append(LoraAliasPart(module, start, start + len(rows)))
        else:
            if pieces:
                aliases.append(LoraAlias(name, tuple(pieces)))
    return tuple(aliases)


def with_lora(plan, root: Path, manifest: Manifest) -> Manifest:
    """`manifest` with every ORT graph's LoRA targets and the bundle's LoRA spec (EXECUTORCH_NOTE for
    program formats)."""
    if not any(g.format in ("onnx", "ort") for g in manifest.graphs):
        return replace(manifest, lora=LoraSpec(components=(), note=EXECUTORCH_NOTE))
    components = loadable_components(plan.family.pipeline_class)
    weights = module_weights(Path(plan.source), components)
    forms = _forms(weights)
    graphs = tuple(replace(g, lora_targets=graph_targets(root, g, forms)) if g.role != "vae_decoder"
                   and g.role != "vae_encoder" else g for g in manifest.graphs)
    found = {t.module for g in graphs for t in g.lora_targets}
    weights = {m: w for m, w in weights.items() if m in found}
    aliases = kohya_aliases(plan.family.pipeline_class, weights)
    log.info("LoRA: %d modules patchable, %d kohya aliases", len(found), len(aliases))
    note = ("LoRA weights are merged on the host and given to ONNX Runtime as initializer overrides when a "
            "session opens (docs/lora.md).")
    return replace(manifest, graphs=graphs, lora=LoraSpec(components=components, aliases=aliases, note=note))

