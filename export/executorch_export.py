"""The executorch target: one `.pte` program per component, lowered to XNNPACK (ExecuTorch's aot_compiler
stages: torch.export -> optional pt2e int8 -> to_edge_transform_and_lower -> to_executorch -> save).

- transformer/denoiser.pte: one method `denoise_<L>` per RALU stage length L (static shapes; XNNPACK stores
  the weights once for all methods: 23.4 MB for 3 methods vs 23.0 MB for one, on shapes).
- text_encoder/model.pte, text_encoder_2/model.pte: method `forward` with PLACEHOLDER_SLOTS fixed
  placeholder slots (ExecuTorch has no optional inputs; unused slots take id -1).
- vae_decoder/model.pte: methods `decode` (full resolution) and `decode_half` (the canny edge proxy);
  vae_encoder/model.pte: `encode`.
int8 is XNNPACK's dynamic per-channel scheme (pt2e XNNPACKQuantizer): weights int8 per channel,
activations quantized per run; graphs whose spec sets pt2e_int8=False (T5) stay fp32. Every method is run
in executorch's Python runtime and compared with torch."""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ralu_edge.manifest import GraphEntry
from ralu_edge.rng import rng_for
from ralu_export import examples, onnx_export
from ralu_export.families import GraphSpec, boundary_module, present
from ralu_export.graph_build import example_token_ids, int8_method

log = logging.getLogger(__name__)
PLACEHOLDER_SLOTS = 4


def _pad_placeholders(example: dict[str, torch.Tensor], slots: int) -> dict[str, torch.Tensor]:
    """The example with its placeholder inputs padded to `slots` (ids -1, zero embeddings)."""
    if "placeholder_ids" not in example:
        return example
    ids, embeds = example["placeholder_ids"], example["placeholder_embeds"]
    pad = slots - ids.shape[0]
    return {**example, "placeholder_ids": torch.cat([ids, torch.full((pad,), -1, dtype=ids.dtype)]),
            "placeholder_embeds": torch.cat([embeds, torch.zeros(pad, embeds.shape[1])])}


def _methods(plan, spec: GraphSpec) -> list[tuple[str, str, dict[str, int]]]:
    """(graph name, method name, static dims) for each method of a component's program."""
    g = plan.geometry
    if spec.role == "denoiser":
        return [(f"denoiser_{n}", f"denoise_{n}", {"num_image_tokens": n, "num_rope_tokens": n + g.text_length,
                                                   **plan.family.static_dims})
                for n in plan.stage_lengths]
    if spec.role == "text_encoder":
        return [(spec.name, "forward", {"num_placeholders": PLACEHOLDER_SLOTS})]
    full = {"latent_height": g.latent_height, "latent_width": g.latent_width, "height": g.height, "width": g.width}
    if spec.role == "vae_encoder":
        return [(spec.name, "encode", full)]
    half = {"latent_height": g.latent_height // 2, "latent_width": g.latent_width // 2,
            "height": g.height // 2, "width": g.width // 2}
    return [(spec.name, "decode", full), (f"{spec.name}_half", "decode_half", half)]


def _example(plan, spec: GraphSpec, dims: dict[str, int], rng, token_ids, placeholders: int = 2):
    case = {**dims, "num_placeholders": placeholders}
    return _pad_placeholders(examples.example_inputs(spec, plan.geometry, case, rng, token_ids), PLACEHOLDER_SLOTS)


def _int8(plan, spec: GraphSpec) -> bool:
    """int8 for this program: the bundle wants it and the graph survives pt2e (GraphSpec.pt2e_int8)."""
    return int8_method(plan, spec) is not None and spec.pt2e_int8


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
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(program.buffer)


def _runner(path: Path, method: str, names: list[str]):
    from executorch.runtime import Runtime

    loaded = Runtime.get().load_program(str(path)).load_method(method)

    def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return [o.numpy() for o in loaded.execute([torch.from_numpy(feeds[n]) for n in names])]

    return run


def _component(plan, spec: GraphSpec, pipe, token_ids, root: Path) -> list[GraphEntry]:
    """Export, lower, save and check one component's program; one GraphEntry per method."""
    module = boundary_module(spec, pipe)
    path = _program(plan, spec, module, token_ids, root)
    return [_method_entry(plan, spec, module, token_ids, root, path, method) for method in _methods(plan, spec)]


def _program(plan, spec: GraphSpec, module: torch.nn.Module, token_ids, root: Path) -> Path:
    started = time.perf_counter()
    programs = {}
    for _, method, dims in _methods(plan, spec):
        example = _example(plan, spec, dims, rng_for(0, f"executorch-trace-{method}"), token_ids)
        args = tuple(example.values())
        traced = _quantized(module, args) if _int8(plan, spec) else module
        programs[method] = torch.export.export(traced, args)
    path = root / spec.folder / f"{spec.stem}.pte"
    _lower(programs, path)
    log.info("lowered %s (%d methods) in %.1f s", spec.name, len(programs), time.perf_counter() - started)
    return path


def _method_entry(plan, spec: GraphSpec, module, token_ids, root: Path, path: Path, method_info) -> GraphEntry:
    """Run one method in executorch's runtime against torch and describe it."""
    name, method, dims = method_info
    int8 = _int8(plan, spec)
    tolerances = plan.family.tolerances
    metric, tolerance = ("cosine", tolerances.int8_cosine) if int8 else ("max_rel", tolerances.xnnpack_rel)
    rng = rng_for(0, f"executorch-parity-{method}")
    counts = (0, 2) if spec.role == "text_encoder" else (2,)
    cases = [(f"{method}, {p} placeholders" if spec.role == "text_encoder" else method,
              _example(plan, spec, dims, rng, token_ids, p)) for p in counts]
    names = list(cases[0][1])
    parity = onnx_export.check_parity(name, _runner(path, method, names), module, cases, metric, tolerance)
    sizes = plan.geometry.sizes()
    return GraphEntry(
        name=name, role=spec.role, file=path.relative_to(root).as_posix(), format="pte",
        precision="int8-xnnpack_dynamic" if int8 else "fp32",
        inputs=tuple(replace(s, optional=False)
                     for s in onnx_export.tensor_specs(present(spec.inputs, plan.geometry), sizes, dims)),
        outputs=onnx_export.tensor_specs(spec.outputs, sizes, dims),
        static_dims={k: v for k, v in dims.items() if k in ("num_image_tokens", "latent_height", "latent_width")},
        method=method, parity=parity,
    )


def build(plan, root: Path) -> tuple[list[GraphEntry], dict[str, str]]:
    """Every program of the executorch target under `root`; manifest entries and notes."""
    pipe = plan.family.load(plan.config.model)
    token_ids = example_token_ids(pipe, plan)
    entries = []
    for spec in plan.family.graphs:
        if "executorch" in spec.targets:
            entries += _component(plan, spec, pipe, token_ids, root)
    notes = {"executorch.placeholders": f"{PLACEHOLDER_SLOTS} fixed slots; unused slots take id -1",
             "executorch.int8": "XNNPACK dynamic int8 (per-channel weights, per-run activation scales) where the "
                                "graph allows it (T5 stays fp32); zeroth-order personalization should use an ORT "
                                "bundle (weight-only int8, float activations)"}
    return entries, notes
