"""ONNX export of one graph spec (torch.onnx.export, dynamo, opset 18), with the family's symbolic axes
stamped on the graph's inputs and outputs and empty in-graph defaults for optional inputs. Saving and ORT
sessions without torch live in onnx_files; the parity check in parity.py.

Large weights (issue 8): the exported graph is returned as an onnx_ir Model whose weight initializers are
views of the torch module's parameters, never copies. onnxscript's optimizer, which torch.onnx runs by
default, folds every `Transpose(weight)` of a Linear into a new numpy array (a second full copy of the
weights); here the export runs unoptimized, those transposes become transposed *views* of the parameters,
and only then does the optimizer run. onnx_files.save_sharing_weights streams the views to disk one tensor
at a time; `ModelProto`s of the weights (the 2 GB protobuf limit) are never built."""

from __future__ import annotations

import contextlib
import logging
import sys

import numpy as np
import onnx_ir as ir
import torch

from ralu_export.families.spec import FamilySpec, GraphSpec, TensorTemplate, expand, resolve_shape
from ralu_export.parity import ParityError

log = logging.getLogger(__name__)

OPSET = 18


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
                 sizes: dict[str, int], fixed: dict[str, int] | None = None,
                 optional_defaults: bool = True) -> ir.Model:
    """The ONNX model of `module` traced on `example` (keyword inputs in spec order), opset 18, with the
    spec's symbolic dims dynamic except those in `fixed`, I/O shapes stamped with the declared names, and
    (optional_defaults, the target's placeholder_defaults) an empty default for each optional input. Weight
    initializers are views of the module's parameters (module docstring): keep the module alive until the
    model is saved."""
    fixed = fixed or {}
    dynamic = _dynamic_shapes(spec, family, sizes, fixed, example)
    with _stdout_to_stderr(), torch.inference_mode(False), torch.no_grad():
        program = torch.onnx.export(
            module.eval(), (), kwargs=example, dynamo=True, opset_version=OPSET, verbose=False,
            input_names=list(example), output_names=[t.name for t in expand(spec.outputs, sizes)],
            dynamic_shapes=dynamic,
            optimize=False,
        )
        transposed_weight_views(program.model)
        program.optimize()
    model = program.model
    del program  # the exported program's state dict references the same parameters; nothing else is needed
    _stamp_shapes(model.graph.inputs, [t for t in spec.inputs if t.name in example], sizes, fixed)
    _stamp_shapes(model.graph.outputs, list(expand(spec.outputs, sizes)), sizes, fixed)
    if optional_defaults:
        _add_optional_defaults(model, spec, sizes)
    return model


def transposed_weight_views(model: ir.Model) -> int:
    """Replace each `Transpose` whose only input is a torch-backed initializer used by nothing else with an
    initializer holding the transposed *view* of that parameter (what onnxscript's constant folding would
    compute as a new array, without the copy); returns how many were replaced. The written graph is the same
    as the default-optimized export's: MatMul reads a [in, out] weight."""
    graph, done = model.graph, 0
    for node in list(graph):
        if node.op_type != "Transpose" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 1:
            continue
        source = node.inputs[0]
        tensor = source.const_value if source is not None and source.is_initializer() else None
        raw = getattr(tensor, "raw", None)
        if not isinstance(raw, torch.Tensor) or len(source.uses()) != 1:
            continue
        perm_attr = node.attributes.get("perm")
        perm = list(perm_attr.as_ints()) if perm_attr is not None else list(reversed(range(raw.dim())))
        output = node.outputs[0]
        view = type(tensor)(raw.permute(perm), name=output.name)  # the exporter's own torch-backed tensor class
        value = ir.Value(name=output.name, shape=ir.Shape(view.shape), type=ir.TensorType(view.dtype),
                         const_value=view)
        ir.convenience.replace_all_uses_with(output, value)
        graph.remove(node, safe=True)
        graph.initializers.pop(source.name)
        output.name = None
        graph.register_initializer(value)
        done += 1
    return done


def _stamp_shapes(values, templates: list[TensorTemplate], sizes: dict[str, int], fixed: dict[str, int]) -> None:
    by_name = {v.name: v for v in values}
    for template in templates:
        shape = resolve_shape(template, sizes, fixed)
        value = by_name[template.name]
        exported = value.shape
        if exported is None or len(exported) != len(shape):
            raise ParityError(f"{template.name}: exported rank {None if exported is None else len(exported)} "
                              f"but the family declares {shape}")
        for proto_dim, dim in zip(exported, shape):
            if isinstance(dim, int) and isinstance(proto_dim, int) and proto_dim != dim:
                raise ParityError(f"{template.name}: exported shape disagrees with the declared {shape}")
        value.shape = ir.Shape(shape)


def _add_optional_defaults(model: ir.Model, spec: GraphSpec, sizes: dict[str, int]) -> None:
    """An optional input becomes an overridable initializer holding an empty tensor (zero placeholders),
    so callers that do not know the input (optimum) run the plain encoder."""
    inputs = {v.name: v for v in model.graph.inputs}
    for template in spec.inputs:
        if template.optional and template.name in inputs:
            shape = tuple(d if isinstance(d, int) else sizes.get(d, 0) for d in template.shape)
            value = inputs[template.name]
            value.const_value = ir.tensor(np.zeros(shape, dtype=np.dtype(template.dtype)), name=template.name)
            model.graph.register_initializer(value)


def parameter_bytes(module: torch.nn.Module) -> int:
    """Bytes of the module's parameters and buffers (shared tensors once)."""
    tensors = {t.data_ptr(): t for t in list(module.parameters()) + list(module.buffers())}
    return sum(t.numel() * t.element_size() for t in tensors.values())


LARGE_GRAPH_BYTES = 2 * 1024**3


def affordable_cases(cases: list, weight_bytes: int, large_bytes: int = LARGE_GRAPH_BYTES) -> list:
    """All parity cases, or for graphs of at least `large_bytes` of weights only the first two (the shortest
    stage lengths: both weight copies are still compared in full, and two lengths exercise the dynamic
    token axis). Each case is one forward pass of the model in torch and in ORT on the export machine, which
    for FLUX.1 (12 B parameters) at 4096 tokens is minutes of CPU time; the length-dependent code is the
    same as in the small models the test suite checks at every stage length."""
    return list(cases) if weight_bytes < large_bytes else list(cases)[:2]
