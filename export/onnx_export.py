"""ONNX export of one graph spec (torch.onnx.export, dynamo, opset 18), with the family's symbolic axes
stamped on the graph's inputs and outputs, empty in-graph defaults for optional inputs, saving with
weights shared on disk between graphs, and the export-time parity check against the torch module
(optimum's convert.py validation and Apple's --check-output-correctness, but a miss fails the export).

Imports torch, onnx and onnxruntime; the torch-free manifest types come from ralu_edge.manifest."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from ralu_edge.manifest import Parity, TensorSpec
from ralu_export.families import FamilySpec, GraphSpec, TensorTemplate

log = logging.getLogger(__name__)

OPSET = 18
EXTERNAL_MIN_BYTES = 1024  # smaller initializers stay inside the .onnx protobuf


class ParityError(RuntimeError):
    """An exported graph disagrees with its torch module beyond the family's tolerance (an exporter bug)."""


def resolve_shape(template: TensorTemplate, sizes: dict[str, int], fixed: dict[str, int]) -> tuple:
    """The manifest shape of a template: model sizes and `fixed` dims resolved to ints, others symbolic."""
    out = []
    for dim in template.shape:
        if isinstance(dim, int):
            out.append(dim)
        elif dim in sizes:
            out.append(sizes[dim])
        elif dim in fixed:
            out.append(fixed[dim])
        else:
            out.append(dim)
    return tuple(out)


def tensor_specs(templates: tuple[TensorTemplate, ...], sizes: dict[str, int],
                 fixed: dict[str, int] | None = None) -> tuple[TensorSpec, ...]:
    """Manifest TensorSpecs of a graph's inputs or outputs."""
    return tuple(TensorSpec(t.name, t.dtype, resolve_shape(t, sizes, fixed or {}), t.optional) for t in templates)


def _value(term: int | str, sizes: dict[str, int]) -> int:
    return term if isinstance(term, int) else sizes[term]


def _torch_dims(family: FamilySpec, sizes: dict[str, int]) -> dict[str, object]:
    """torch.export Dims for the family's symbolic dims (derived ones as root * times + plus)."""
    roots = {name: torch.export.Dim(name, min=d.min, max=d.max) for name, d in family.dims.items() if d.root is None}
    dims: dict[str, object] = dict(roots)
    for name, d in family.dims.items():
        if d.root is not None:
            dims[name] = roots[d.root] * _value(d.times, sizes) + _value(d.plus, sizes)
    return dims


def _dynamic_shapes(spec: GraphSpec, family: FamilySpec, sizes: dict[str, int], fixed: dict[str, int],
                    example: dict[str, torch.Tensor]) -> dict[str, dict[int, object] | None]:
    dims = _torch_dims(family, sizes)
    out = {}
    for template in spec.inputs:
        axes = {axis: dims[dim] for axis, dim in enumerate(template.shape)
                if isinstance(dim, str) and dim in family.dims and dim not in fixed}
        out[template.name] = axes or None
    return {name: out[name] for name in example}


@contextlib.contextmanager
def _stdout_to_stderr():
    """torch.onnx prints its progress on stdout; results own stdout (STYLE.md), so send it to stderr."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def export_graph(spec: GraphSpec, family: FamilySpec, module: torch.nn.Module, example: dict[str, torch.Tensor],
                 sizes: dict[str, int], fixed: dict[str, int] | None = None) -> onnx.ModelProto:
    """The ONNX model of `module` traced on `example` (keyword inputs in spec order), opset 18, with the
    spec's symbolic dims dynamic except those in `fixed`, I/O shapes stamped with the declared names, and
    an empty default for each optional input."""
    fixed = fixed or {}
    dynamic = _dynamic_shapes(spec, family, sizes, fixed, example)
    with _stdout_to_stderr(), torch.inference_mode(False), torch.no_grad():
        program = torch.onnx.export(
            module.eval(), (), kwargs=example, dynamo=True, opset_version=OPSET, verbose=False,
            input_names=list(example), output_names=[t.name for t in spec.outputs], dynamic_shapes=dynamic,
        )
    model = program.model_proto
    _stamp_shapes(model.graph.input, [t for t in spec.inputs if t.name in example], sizes, fixed)
    _stamp_shapes(model.graph.output, list(spec.outputs), sizes, fixed)
    _add_optional_defaults(model, spec, sizes)
    return model


def _stamp_shapes(values, templates: list[TensorTemplate], sizes: dict[str, int], fixed: dict[str, int]) -> None:
    by_name = {v.name: v for v in values}
    for template in templates:
        shape = resolve_shape(template, sizes, fixed)
        dims = by_name[template.name].type.tensor_type.shape.dim
        if len(dims) != len(shape):
            raise ParityError(f"{template.name}: exported rank {len(dims)} but the family declares {shape}")
        for proto_dim, dim in zip(dims, shape):
            if isinstance(dim, int):
                if proto_dim.HasField("dim_value") and proto_dim.dim_value != dim:
                    raise ParityError(f"{template.name}: exported shape disagrees with the declared {shape}")
                proto_dim.dim_value = dim
            else:
                proto_dim.dim_param = dim


def _add_optional_defaults(model: onnx.ModelProto, spec: GraphSpec, sizes: dict[str, int]) -> None:
    """An optional input becomes an overridable initializer holding an empty tensor (zero placeholders),
    so callers that do not know the input (optimum) run the plain encoder."""
    for template in spec.inputs:
        if template.optional:
            shape = tuple(d if isinstance(d, int) else sizes.get(d, 0) for d in template.shape)
            default = np.zeros(shape, dtype=np.dtype(template.dtype))
            model.graph.initializer.append(numpy_helper.from_array(default, template.name))


def save_sharing_weights(models: list[tuple[onnx.ModelProto, Path]], data_path: Path) -> None:
    """Save several graphs whose large initializers go into one external data file, each distinct tensor
    (dtype, shape and bytes) written once: graphs exported from the same module share every weight on disk.
    All graphs must sit in data_path's folder (ONNX external data paths are relative)."""
    written: dict[str, tuple[int, int]] = {}
    with open(data_path, "wb") as data:
        for model, path in models:
            if path.parent != data_path.parent:
                raise ValueError(f"{path} and {data_path} must share a folder")
            for tensor in model.graph.initializer:
                array = numpy_helper.to_array(tensor) if tensor.data_location != onnx.TensorProto.EXTERNAL else None
                if array is None or array.nbytes < EXTERNAL_MIN_BYTES:
                    continue
                raw = np.ascontiguousarray(array).tobytes()
                key = hashlib.sha256(f"{tensor.data_type}{list(tensor.dims)}".encode() + raw).hexdigest()
                if key not in written:
                    data.seek(0, os.SEEK_END)
                    pad = (-data.tell()) % 64  # aligned offsets let ORT memory-map the tensors
                    data.write(b"\0" * pad)
                    written[key] = (data.tell(), len(raw))
                    data.write(raw)
                offset, length = written[key]
                _make_external(tensor, data_path.name, offset, length)
            onnx.save_model(model, str(path))


def _make_external(tensor: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
        tensor.ClearField(field)
    del tensor.external_data[:]
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value


def ort_session(path: Path, threads: int = 2):
    """A CPU ORT session with fixed thread count and quiet logging (overridable-initializer warnings are
    expected: the optional placeholder inputs are exactly that)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@dataclass(frozen=True)
class Comparison:
    """Largest errors over all cases and outputs; the worst output cosine."""

    max_abs_error: float
    max_rel_error: float
    reference_max: float
    cosine: float


def compare_outputs(pairs: list[tuple[np.ndarray, np.ndarray]]) -> Comparison:
    """Errors of (graph output, reference output) pairs: max |a-b|, max |a-b| / max |b| per pair, and the
    minimum cosine between the flattened pairs."""
    max_abs = max_rel = ref_max = 0.0
    cosine = 1.0
    for got, ref in pairs:
        got, ref = np.asarray(got, np.float64).ravel(), np.asarray(ref, np.float64).ravel()
        if got.shape != ref.shape:
            raise ParityError(f"output shape {got.shape} differs from the reference {ref.shape}")
        err = float(np.max(np.abs(got - ref))) if ref.size else 0.0
        scale = float(np.max(np.abs(ref))) if ref.size else 0.0
        max_abs, ref_max = max(max_abs, err), max(ref_max, scale)
        max_rel = max(max_rel, err / scale if scale > 0 else err)
        norm = float(np.linalg.norm(got) * np.linalg.norm(ref))
        cosine = min(cosine, float(got @ ref) / norm if norm > 0 else float(err == 0.0))
    return Comparison(max_abs, max_rel, ref_max, cosine)


def torch_outputs(module: torch.nn.Module, example: dict[str, torch.Tensor]) -> list[np.ndarray]:
    """The module's outputs on `example` as float32/int numpy arrays (a tuple output becomes a list)."""
    with torch.no_grad():
        out = module(**example)
    out = out if isinstance(out, (tuple, list)) else (out,)
    return [o.detach().cpu().numpy() for o in out]


def check_parity(name: str, run, module: torch.nn.Module, cases: list[tuple[str, dict[str, torch.Tensor]]],
                 metric: str, tolerance: float, reference: str = "torch") -> Parity:
    """Compare `run(feeds) -> list of outputs` with the torch module over the cases; a Parity record, or
    ParityError when the graph is beyond tolerance (max_rel <= tolerance, or cosine >= tolerance)."""
    pairs = []
    for _, example in cases:
        expected = torch_outputs(module, example)
        got = run({k: v.detach().cpu().numpy() for k, v in example.items()})
        pairs.extend(zip(got, expected))
    result = compare_outputs(pairs)
    passed = result.max_rel_error <= tolerance if metric == "max_rel" else result.cosine >= tolerance
    parity = Parity(reference=reference, metric=metric, tolerance=tolerance, max_abs_error=result.max_abs_error,
                    max_rel_error=result.max_rel_error, cosine=result.cosine, passed=passed,
                    cases=tuple(label for label, _ in cases))
    log.info("parity %s: max abs %.3g, max rel %.3g, cosine %.6f (%s %s %g)", name, result.max_abs_error,
             result.max_rel_error, result.cosine, metric, "<=" if metric == "max_rel" else ">=", tolerance)
    if not passed:
        raise ParityError(f"graph {name!r} fails parity against {reference}: max abs {result.max_abs_error:.3g}, "
                          f"max rel {result.max_rel_error:.3g}, cosine {result.cosine:.6f} ({metric} tolerance "
                          f"{tolerance}); the export is not trustworthy, so no bundle was written.")
    return parity


def ort_runner(path: Path, threads: int = 2):
    """`run(feeds) -> outputs` over an ORT CPU session of the graph at `path` (.onnx or .ort)."""
    session = ort_session(path, threads)
    names = {i.name for i in session.get_inputs()} | {i.name for i in session.get_overridable_initializers()}

    def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return session.run(None, {k: v for k, v in feeds.items() if k in names})

    return run
