"""ONNX export of one graph spec (torch.onnx.export, dynamo, opset 18), with the family's symbolic axes
stamped on the graph's inputs and outputs and empty in-graph defaults for optional inputs, and the
export-time parity check against the torch module (optimum's convert.py validation and Apple's
--check-output-correctness, except that a miss fails the export). Saving and ORT sessions without torch
live in onnx_files."""

from __future__ import annotations

import contextlib
import logging
import sys

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from ralu_edge.manifest import Parity, TensorSpec
from ralu_export.families import FamilySpec, GraphSpec, TensorTemplate
from ralu_export.onnx_files import ParityError, compare_outputs

log = logging.getLogger(__name__)

OPSET = 18


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
    return {name: out.get(name) for name in example}  # inputs without a template (guidance) are static


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
