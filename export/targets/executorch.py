"""The executorch target: one `.pte` program per component, lowered to XNNPACK (ExecuTorch's aot_compiler
stages: torch.export -> optional pt2e int8 -> to_edge_transform_and_lower -> to_executorch -> save), its
methods as static_programs lays them out (the denoiser's `denoise_<L>` per stage length share one copy of
the weights, so a program with every stage is barely larger than one with a single method; nothing in
benchmarks/results records the comparison, so the numbers once quoted here are gone). int8 is XNNPACK's dynamic per-channel
scheme where the int8 policy says so; every method is run in executorch's Python runtime and compared with
torch."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from ralu_edge.manifest import GraphEntry
from ralu_edge.rng import rng_for
from ralu_export import examples, static_programs
from ralu_export.families.spec import GraphSpec
from ralu_export.int8_policy import precision_label
from ralu_export.parity import check_parity, parity_rule
from ralu_export.plan import Plan

log = logging.getLogger(__name__)


def _quantized(module: torch.nn.Module, args: tuple) -> torch.nn.Module:
    """XNNPACK dynamic int8 (per-channel weights) of a module, calibrated on `args`."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer, get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    # Linear layers only: a global config also annotates integer adds (T5's relative-position buckets).
    config = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True)
    quantizer = XNNPACKQuantizer().set_module_type(torch.nn.Linear, config)
    prepared = prepare_pt2e(torch.export.export(module, args).module(), quantizer)
    prepared(*args)
    return convert_pt2e(prepared)


def _lower(programs: dict, path: Path) -> None:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    program = to_edge_transform_and_lower(programs, partitioner=[XnnpackPartitioner()]).to_executorch()
    path.write_bytes(program.buffer)


def _runner(path: Path, method: str, names: list[str]):
    from executorch.runtime import Runtime

    loaded = Runtime.get().load_program(str(path)).load_method(method)

    def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return [o.numpy() for o in loaded.execute([torch.from_numpy(feeds[n]) for n in names])]

    return run


def _program(plan: Plan, spec: GraphSpec, module: torch.nn.Module, token_ids, root: Path, int8: bool) -> Path:
    started = time.perf_counter()
    programs = {}
    for _, method, dims in static_programs.methods(plan, spec):
        example = static_programs.example(plan, spec, dims, rng_for(0, f"executorch-trace-{method}"), token_ids)
        args = tuple(example.values())
        traced = _quantized(module, args) if int8 else module
        programs[method] = torch.export.export(traced, args)
    path = static_programs.program_path(root, spec, ".pte")
    _lower(programs, path)
    log.info("lowered %s (%d methods) in %.1f s", spec.name, len(programs), time.perf_counter() - started)
    return path


def _method_entry(plan: Plan, spec: GraphSpec, module, token_ids, root: Path, path: Path, method_info,
                  precision: str) -> GraphEntry:
    """Run one method in executorch's runtime against torch and describe it."""
    name, method, dims = method_info
    rng = rng_for(0, f"executorch-parity-{method}")
    counts = (0, 2) if spec.role == "text_encoder" else (2,)
    cases = [(f"{method}, {p} placeholders" if spec.role == "text_encoder" else method,
              static_programs.example(plan, spec, dims, rng, token_ids, p)) for p in counts]
    rule = parity_rule(plan.family.tolerances, "xnnpack", precision)
    parity = check_parity(name, _runner(path, method, list(cases[0][1])), examples.torch_references(module, cases),
                          cases, rule)
    inputs, outputs = static_programs.declared_io(plan, spec, dims)
    return GraphEntry(
        name=name, role=spec.role, file=path.relative_to(root).as_posix(), format="pte", precision=precision,
        inputs=inputs, outputs=outputs, static_dims=static_programs.manifest_static_dims(dims), method=method,
        parity=parity,
    )


def build(plan: Plan, root: Path) -> tuple[list[GraphEntry], dict[str, str]]:
    """Every program of the executorch target under `root`; manifest entries and notes."""
    entries = []
    for spec, module, token_ids in static_programs.components(plan):
        method = plan.int8_method(spec)
        path = _program(plan, spec, module, token_ids, root, method is not None)
        entries += [_method_entry(plan, spec, module, token_ids, root, path, m, precision_label(method))
                    for m in static_programs.methods(plan, spec)]
    notes = {"executorch.placeholders": f"{plan.target.placeholder_slots} fixed slots; unused slots take id -1",
             "executorch.int8": "XNNPACK dynamic int8 (per-channel weights, per-run activation scales) where the "
                                "graph allows it (T5 stays fp32); zeroth-order personalization should use an ORT "
                                "bundle (weight-only int8, float activations)"}
    return entries, notes
