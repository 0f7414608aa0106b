"""Recording a run and replaying it: wrappers for a seam denoiser (DESIGN.md "The one seam") and for the numpy
Generator the samplers draw from, that keep every call's inputs and output and every draw (`Recording*`), and
stand-ins that return them again in order while checking each request against the recording (`Replay*`).
Random draws are stored, not regenerated: ports cannot reproduce numpy's PCG64 normals cheaply, so they take
the draws from an injectable source. numpy only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ralu_edge.seam import Denoiser
from ralu_export.conformance.vectors import SIGMA_TOLERANCE, compare


@dataclass
class DenoiserCall:
    """One seam call: tokens [1, L, C] float32, positions [L, 3] float64, sigmas [1] float32, velocity [1, L, C]."""

    tokens: np.ndarray
    positions: np.ndarray
    sigmas: np.ndarray
    velocity: np.ndarray


class RecordingDenoiser:
    """Wraps a seam denoiser and keeps a copy of every call's inputs and output."""

    def __init__(self, inner: Denoiser):
        self.inner = inner
        self.calls: list[DenoiserCall] = []

    def __call__(self, tokens, positions, sigmas, cond):
        velocity = np.asarray(self.inner(tokens, positions, sigmas, cond), dtype=np.float32)
        self.calls.append(DenoiserCall(tokens.copy(), np.array(positions, np.float64), sigmas.copy(),
                                       velocity.copy()))
        return velocity


@dataclass
class Draw:
    """One random draw as the generator returned it (float64 values in the requested shape)."""

    method: str  # "normal" (loc, scale) or "standard_normal"
    values: np.ndarray
    loc: float = 0.0
    scale: float = 1.0


class RecordingRng:
    """Stands in for a numpy Generator where the samplers draw (`normal`, `standard_normal`) and records the
    draws; any other method fails loudly, so a new kind of draw cannot slip past the vectors."""

    def __init__(self, inner: np.random.Generator):
        self.inner = inner
        self.draws: list[Draw] = []

    def normal(self, loc=0.0, scale=1.0, size=None):
        values = self.inner.normal(loc, scale, size)
        self.draws.append(Draw("normal", np.array(values, np.float64), float(loc), float(scale)))
        return values

    def standard_normal(self, size=None, dtype=np.float64):
        values = self.inner.standard_normal(size, dtype=dtype)
        self.draws.append(Draw("standard_normal", np.array(values, np.float64)))
        return values

    def __getattr__(self, name):
        raise AttributeError(f"RecordingRng does not record {name!r}; add it to the vector format first")


class ReplayRng:
    """Returns recorded draws in order, checking that each request has the recorded kind and shape."""

    def __init__(self, draws: Sequence[Draw]):
        self.draws = list(draws)
        self.position = 0

    def _next(self, method: str, size) -> np.ndarray:
        if self.position >= len(self.draws):
            raise AssertionError(f"draw {self.position} ({method}, {size}) was not recorded")
        draw = self.draws[self.position]
        self.position += 1
        shape = tuple(np.atleast_1d(size).tolist()) if size is not None else ()
        if draw.method != method or draw.values.shape != shape:
            raise AssertionError(f"draw {self.position - 1}: asked {method}{shape}, recorded "
                                 f"{draw.method}{draw.values.shape}")
        return draw.values.copy()

    def normal(self, loc=0.0, scale=1.0, size=None):
        return self._next("normal", size)

    def standard_normal(self, size=None, dtype=np.float64):
        return self._next("standard_normal", size).astype(dtype)


class ReplayDenoiser:
    """Returns recorded velocities in order; `mismatches` collects calls whose inputs differ from the
    recorded ones (tokens beyond RELATIVE_TOLERANCE, positions or sigma at all)."""

    def __init__(self, calls: Sequence[DenoiserCall]):
        self.calls = list(calls)
        self.position = 0
        self.mismatches: list[str] = []

    def __call__(self, tokens, positions, sigmas, cond):
        if self.position >= len(self.calls):
            raise AssertionError(f"denoiser call {self.position} was not recorded")
        call = self.calls[self.position]
        where = f"denoiser call {self.position}"
        self.position += 1
        if tokens.shape != call.tokens.shape:
            raise AssertionError(f"{where}: tokens {tokens.shape}, recorded {call.tokens.shape}")
        compare(self.mismatches, f"{where} tokens", tokens, call.tokens)
        compare(self.mismatches, f"{where} positions", positions, call.positions, 0.0)
        compare(self.mismatches, f"{where} sigma", sigmas, call.sigmas, SIGMA_TOLERANCE)
        return call.velocity.copy()
