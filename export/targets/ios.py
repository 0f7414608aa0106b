"""The ios target: one Core ML `.mlpackage` per component, static shapes, converted with coremltools from
`torch.export(...).run_decompositions({})` (ENVIRONMENT.md). The shapes static_programs lays out for a
component become the functions of one multifunction package (iOS 18), which stores the weights once
(`denoise_<L>` per stage length, `forward` for the text encoders with fixed placeholder slots, `decode` /
`decode_half`, `encode`). int8 is weight-only per-channel linear quantization (coremltools.optimize), float
activations, where the int8 policy says so.

Core ML prediction needs macOS, so on Linux the check is structural: every function's inputs and
outputs (names, shapes, dtypes) are read back from the saved package with coremltools and compared with
the family's declaration; the manifest records parity as not run."""

from __future__ import annotations

import logging
import re
import tempfile
import time
from pathlib import Path

import torch

from ralu_edge.manifest import GraphEntry, TensorSpec
from ralu_edge.rng import rng_for
from ralu_export import static_programs
from ralu_export.families.spec import GraphSpec, expand
from ralu_export.int8_policy import precision_label
from ralu_export.parity import ParityError
from ralu_export.plan import Plan

log = logging.getLogger(__name__)
_DTYPES = {65568: "float32", 65552: "float16", 131104: "int32"}  # Core ML ArrayDataType values


def _without_aliases(program):
    """The program with aten.alias nodes (a slice of a buffer, e.g. CLIP's position ids) bypassed:
    coremltools 9 has no converter for them, and an alias is its input for a graph without mutation."""
    graph = program.graph_module.graph
    aliases = (torch.ops.aten.alias.default, torch.ops.aten.alias_copy.default)
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target in aliases:
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
    program.graph_module.recompile()
    return program


def _convert(module: torch.nn.Module, example: dict[str, torch.Tensor], output_names: list[str], int8: bool):
    import coremltools as ct

    program = _without_aliases(torch.export.export(module, (), kwargs=example).run_decompositions({}))
    model = ct.convert(program, outputs=[ct.TensorType(name=n) for n in output_names],
                       minimum_deployment_target=ct.target.iOS18, compute_precision=ct.precision.FLOAT32)
    if int8:
        from coremltools.optimize.coreml import OpLinearQuantizerConfig, OptimizationConfig, linear_quantize_weights

        config = OptimizationConfig(global_config=OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8",
                                                                          granularity="per_channel"))
        model = linear_quantize_weights(model, config=config)
    return model


def _package(plan: Plan, spec: GraphSpec, module, token_ids, root: Path, int8: bool) -> Path:
    """Convert every function of a component and save them as one multifunction package."""
    import coremltools as ct

    started = time.perf_counter()
    path = static_programs.program_path(root, spec, ".mlpackage")
    with tempfile.TemporaryDirectory(prefix="ralu-coreml-") as tmp:
        descriptor = ct.utils.MultiFunctionDescriptor()
        methods = static_programs.methods(plan, spec)
        for _, function, dims in methods:
            example = static_programs.example(plan, spec, dims, rng_for(0, f"coreml-trace-{function}"), token_ids)
            single = Path(tmp) / f"{function}.mlpackage"
            outputs = [t.name for t in expand(spec.outputs, plan.geometry.sizes())]
            _convert(module, example, outputs, int8).save(str(single))
            descriptor.add_function(str(single), src_function_name="main", target_function_name=function)
        descriptor.default_function_name = methods[0][1]
        ct.utils.save_multifunction(descriptor, str(path))
    log.info("converted %s (%d functions) in %.1f s", spec.name, len(methods), time.perf_counter() - started)
    return path


def _described(path: Path, function: str) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The inputs and outputs of one function as saved, read back with coremltools."""
    import coremltools as ct

    spec = ct.utils.load_spec(str(path))
    description = next(f for f in spec.description.functions if f.name == function)

    def specs(features) -> list[TensorSpec]:
        return [TensorSpec(f.name, _DTYPES.get(f.type.multiArrayType.dataType, "float32"),
                           tuple(int(d) for d in f.type.multiArrayType.shape)) for f in features]

    return specs(description.input), specs(description.output)


def coreml_name(name: str) -> str:
    """The name Core ML gives a tensor called `name` (non-identifier characters become "_")."""
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def _checked_entry(plan: Plan, spec: GraphSpec, path: Path, root: Path, method_info, precision: str) -> GraphEntry:
    """Compare a saved function's I/O with the family's declaration (names and shapes; int64 ids become
    int32 in Core ML) and describe it."""
    name, function, dims = method_info
    declared_in, declared_out = static_programs.declared_io(plan, spec, dims)
    inputs, outputs = _described(path, function)
    for declared, found in ((declared_in, inputs), (declared_out, outputs)):
        # Core ML turns characters outside [A-Za-z0-9_] into "_" (optimum's hidden_states.3 -> hidden_states_3).
        if [(coreml_name(s.name), s.shape) for s in declared] != [(s.name, s.shape) for s in found]:
            raise ParityError(f"{path.name}:{function} has I/O {[(s.name, s.shape) for s in found]} but the family "
                              f"declares {[(s.name, s.shape) for s in declared]}; no bundle was written.")
    return GraphEntry(
        name=name, role=spec.role, file=path.relative_to(root).as_posix(), format="mlpackage",
        precision=precision, inputs=tuple(inputs), outputs=tuple(outputs),
        static_dims=static_programs.manifest_static_dims(dims), method=function, parity=None,
    )


def build(plan: Plan, root: Path) -> tuple[list[GraphEntry], dict[str, str]]:
    """Every package of the ios target under `root`; manifest entries and notes."""
    entries = []
    for spec, module, token_ids in static_programs.components(plan):
        method = plan.int8_method(spec)
        path = _package(plan, spec, module, token_ids, root, method is not None)
        entries += [_checked_entry(plan, spec, path, root, m, precision_label(method))
                    for m in static_programs.methods(plan, spec)]
    notes = {"ios.parity": "not run: Core ML prediction needs macOS; every function's inputs and outputs were "
                           "read back with coremltools and match the declared names and shapes",
             "ios.placeholders": f"{plan.target.placeholder_slots} fixed slots; unused slots take id -1",
             "ios.packages": "multifunction .mlpackage (iOS 18+): one function per shape, weights stored once"}
    return entries, notes
