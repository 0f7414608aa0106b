"""The export-time parity check, in one place (optimum's convert.py validation and Apple's
--check-output-correctness, except that a miss fails the export): the error measures, which metric and
tolerance judge a graph (parity_rule: float graphs by max error relative to the reference's largest value,
at the engine's tolerance; int8 graphs by cosine), and the check itself, which records a Parity for the
manifest or raises ParityError. numpy only: references are computed by the caller (examples.torch_outputs)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np

from ralu_edge.manifest import Parity
from ralu_export.families.spec import Tolerances

log = logging.getLogger(__name__)

Engine = Literal["onnxruntime", "xnnpack"]
Metric = Literal["max_rel", "cosine"]
Run = Callable[[dict[str, np.ndarray]], list[np.ndarray]]


class ParityError(RuntimeError):
    """An exported graph disagrees with its reference beyond the family's tolerance (an exporter bug)."""


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


def parity_rule(tolerances: Tolerances, engine: Engine, precision: str) -> tuple[Metric, float]:
    """(metric, tolerance) judging a graph of `precision` ("fp32" or "int8-<method>") run by `engine`
    (DESIGN.md "Conventions": fp32 on ORT ~1e-4 relative, XNNPACK ~1e-3, int8 by similarity)."""
    if precision != "fp32":
        return "cosine", tolerances.int8_cosine
    return "max_rel", tolerances.fp32_rel if engine == "onnxruntime" else tolerances.xnnpack_rel


def passes(metric: Metric, tolerance: float, comparison: Comparison) -> bool:
    """Whether a comparison is within the rule: max_rel <= tolerance, or cosine >= tolerance."""
    return comparison.max_rel_error <= tolerance if metric == "max_rel" else comparison.cosine >= tolerance


def rule_text(metric: Metric, tolerance: float) -> str:
    """The rule as people read it: "max_rel <= 0.001", "cosine >= 0.99"."""
    return f"{metric} {'<=' if metric == 'max_rel' else '>='} {tolerance:g}"


def check_parity(name: str, run: Run, references: list[list[np.ndarray]], cases: list[tuple[str, dict]],
                 rule: tuple[Metric, float], reference_name: str = "torch") -> Parity:
    """Compare `run(feeds) -> outputs` over the cases (label, feeds; torch tensors or arrays) with the reference
    outputs of each case. A Parity record, or ParityError when the graph is beyond the rule."""
    metric, tolerance = rule
    pairs = []
    for (_, example), expected in zip(cases, references, strict=True):
        pairs.extend(zip(run({k: np.asarray(v) for k, v in example.items()}), expected))
    result = compare_outputs(pairs)
    passed = passes(metric, tolerance, result)
    parity = Parity(reference=reference_name, metric=metric, tolerance=tolerance,
                    max_abs_error=result.max_abs_error, max_rel_error=result.max_rel_error, cosine=result.cosine,
                    passed=passed, cases=tuple(label for label, _ in cases))
    log.debug("parity %s: max abs %.3g, max rel %.3g, cosine %.6f (%s)", name, result.max_abs_error,
              result.max_rel_error, result.cosine, rule_text(metric, tolerance))
    if not passed:
        raise ParityError(f"graph {name!r} fails parity against {reference_name}: max abs "
                          f"{result.max_abs_error:.3g}, max rel {result.max_rel_error:.3g}, cosine "
                          f"{result.cosine:.6f} ({metric} tolerance {tolerance}); the export is not trustworthy, "
                          "so no bundle was written.")
    return parity


def check_same_outputs(name: str, run: Run, expected: list[list[np.ndarray]], cases: list[tuple[str, dict]],
                       max_rel: float, reference_name: str) -> float:
    """A converted graph against the outputs of the graph it came from (issue 4: an .ort gives its .onnx's
    outputs); returns the largest absolute difference, ParityError beyond `max_rel`."""
    pairs = []
    for (_, example), outputs in zip(cases, expected, strict=True):
        pairs.extend(zip(run({k: np.asarray(v) for k, v in example.items()}), outputs))
    result = compare_outputs(pairs)
    if result.max_rel_error > max_rel:
        raise ParityError(f"{name} differs from its {reference_name} by {result.max_rel_error:.3g} relative "
                          f"(limit {max_rel}); no bundle was written.")
    return result.max_abs_error
