"""Temporal caching over the denoiser seam (issue 16): a wrapper that turns any denoiser into one that skips
some calls, reusing or forecasting the velocity instead, written once so that the baseline, every RALU stage
and classifier-free guidance (wrapped inside it) get it on every backend.

Two methods (`CacheConfig.method`):
- `teacache` (TeaCache, Liu et al. 2024, arXiv 2411.19108): cheap signals of how much the next call's input
  differs from the previous one are rescaled by a polynomial fitted per model at export time (`fit_rescale`,
  stored in the bundle manifest) into an estimate of the relative L1 change of the output, and accumulated;
  while the sum stays below `threshold` the last computed velocity is reused, otherwise the model runs and the
  sum restarts. TeaCache's own signal is the relative L1 change of the timestep-modulated input of the first
  transformer block, which moves with both the latent and the timestep embedding; ours are the two host-side
  quantities it mixes, the relative L1 change of the seam's input tokens and the σ step, each with a fitted
  weight (degree 1 in both). On the built-in model that fit explains 0.82 of the variance of the output change
  where a degree-2 polynomial of the token change alone explains 0.14 (docs/caching.md). Nothing beyond the
  seam is needed, so no extra graph is exported.
- `taylorseer` (TaylorSeer, Liu et al. 2025, arXiv 2503.06923): the model runs every `interval` calls; in
  between, the velocity is extrapolated from the last `order` + 1 computed velocities with Newton's divided
  differences in σ (TaylorSeer's finite-difference Taylor series, made exact for the non-uniform σ steps of
  FLUX and RALU schedules; fewer points at the start of a segment give a lower order, one point a plain reuse).

A cache lives within one *segment*: consecutive calls on the same token set with decreasing σ. A RALU stage
transition starts a new segment, because the cached velocities belong to another sequence (stage 1 has the
low-res tokens, stage 2 a mixed set, stage 3 all tokens: shapes and positions differ) and because renoising
jumps σ back up and replaces most of the latent with fresh noise (spec/RALU.md §7.1), so neither the last
output nor a polynomial through the previous stage's outputs says anything about the next call. A new image
(σ back at 1) starts one too. The segment is detected from the calls themselves (token shape, positions,
σ not decreasing), so the samplers need no change and every backend behaves alike.

The decisions are pure functions of arrays (`relative_l1`, `rescaled`, `teacache_runs`, `taylor_forecast`);
`CachedDenoiser` holds only what one call must remember for the next, because the seam is call by call.
Depends on numpy only."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Literal, Sequence

import numpy as np

from ralu_edge.errors import UserError
from ralu_edge.seam import Conditioning, Denoiser

CacheMethod = Literal["none", "teacache", "taylorseer"]
METHODS: tuple[str, ...] = ("none", "teacache", "taylorseer")
DEFAULT_TEACACHE_THRESHOLD = 0.3
DEFAULT_TAYLOR_ORDER = 1
DEFAULT_TAYLOR_INTERVAL = 2
SIGNAL = "input_rel_l1,sigma_step"  # the manifest's calibration: c0·(token change) + c1·(σ step) + c2


@dataclass(frozen=True)
class CacheConfig:
    """Which cache and its knobs. threshold: TeaCache's accumulated rescaled change that forces a call (larger
    skips more); order, interval: TaylorSeer's extrapolation order and the calls between two computed ones."""

    method: CacheMethod = "none"
    threshold: float = DEFAULT_TEACACHE_THRESHOLD
    order: int = DEFAULT_TAYLOR_ORDER
    interval: int = DEFAULT_TAYLOR_INTERVAL

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise UserError(f"cache {self.method!r} does not exist; choose one of: {', '.join(METHODS)}.")
        if not (math.isfinite(self.threshold) and self.threshold > 0):
            raise UserError(f"TeaCache threshold {self.threshold} must be a positive number, e.g. teacache:0.3.")
        if not 0 <= self.order <= 4:
            raise UserError(f"TaylorSeer order {self.order} must be 0 to 4, e.g. taylorseer:1,2.")
        if self.interval < 1:
            raise UserError(f"TaylorSeer interval {self.interval} must be at least 1, e.g. taylorseer:1,2.")

    @classmethod
    def parse(cls, text: str) -> "CacheConfig":
        """`none`, `teacache[:threshold]` or `taylorseer[:order,interval]` (the `--cache` syntax)."""
        match = re.fullmatch(r"\s*([a-z]+)\s*(?::\s*(.*))?", text or "")
        method, args = (match.group(1), match.group(2)) if match else (text, None)
        if method not in METHODS:
            raise UserError(f"cache {text!r} is not one of none, teacache[:threshold], "
                            "taylorseer[:order,interval]; e.g. --cache teacache:0.3.")
        if args is None or method == "none":
            if args is not None:
                raise UserError(f"cache {text!r}: none takes no arguments; write it alone, e.g. --cache none.")
            return cls(method)
        try:
            if method == "teacache":
                return cls(method, threshold=float(args))
            parts = [int(p) for p in args.split(",")]
        except ValueError:
            parts = []
        if method == "taylorseer" and len(parts) in (1, 2):
            return cls(method, order=parts[0], interval=parts[1] if len(parts) == 2 else DEFAULT_TAYLOR_INTERVAL)
        raise UserError(f"cache {text!r}: write teacache:THRESHOLD (a number, e.g. 0.3) or "
                        "taylorseer:ORDER,INTERVAL (two integers, e.g. 1,2).")

    @property
    def label(self) -> str:
        """The canonical `--cache` text of this config (what PNG metadata and --json report)."""
        if self.method == "teacache":
            return f"teacache:{self.threshold:g}"
        if self.method == "taylorseer":
            return f"taylorseer:{self.order},{self.interval}"
        return "none"


@dataclass(frozen=True)
class CacheStats:
    """What a cached run did: computed calls, skipped calls, and per seam call whether the model ran."""

    calls_made: int
    calls_skipped: int
    ran: tuple[bool, ...]

    def to_dict(self) -> dict:
        return {"calls_made": self.calls_made, "calls_skipped": self.calls_skipped}


# ------------------------------------------------------------------------------------------ pure decisions

def relative_l1(current: np.ndarray, previous: np.ndarray) -> float:
    """mean |current − previous| / mean |previous| in float64 (TeaCache's relative L1 distance); 0 when both are 0."""
    scale = float(np.abs(previous.astype(np.float64)).mean())
    change = float(np.abs(current.astype(np.float64) - previous.astype(np.float64)).mean())
    return change / scale if scale > 0 else change


def rescaled(signal: float, sigma_step: float, coefficients: Sequence[float]) -> float:
    """The fitted estimate of the output's relative L1 change: c0·signal + c1·sigma_step + c2 for coefficients
    (c0, c1, c2), floored at 0 (a change is never negative; a fitted plane can dip below 0).

    signal: relative L1 change of the input tokens since the previous call; sigma_step: σ_previous − σ."""
    c0, c1, c2 = (float(c) for c in coefficients)
    return max(c0 * signal + c1 * sigma_step + c2, 0.0)


def teacache_runs(accumulated: float, change: float, threshold: float) -> tuple[bool, float]:
    """(run the model?, the new accumulated change): TeaCache adds `change` and runs once the sum reaches
    `threshold`, restarting from 0; below it the cached velocity is reused and the sum is carried on."""
    total = accumulated + change
    return (True, 0.0) if total >= threshold else (False, total)


def taylor_forecast(sigmas: Sequence[float], velocities: Sequence[np.ndarray], sigma: float) -> np.ndarray:
    """The velocity at `sigma` extrapolated from computed ones: float32, the shape of each velocity.

    sigmas: the σ of each computed call, most recent first; velocities: their outputs. The polynomial of degree
    len − 1 through all of them (Newton's divided differences, float64), evaluated at `sigma`; one point is
    reused as it is."""
    if len(sigmas) != len(velocities) or not sigmas:
        raise ValueError(f"need as many sigmas as velocities (at least one), got {len(sigmas)} and {len(velocities)}")
    table = [v.astype(np.float64) for v in velocities]  # table[j] becomes f[σ_0, ..., σ_j]
    for level in range(1, len(table)):
        for j in range(len(table) - 1, level - 1, -1):
            table[j] = (table[j] - table[j - 1]) / (sigmas[j] - sigmas[j - level])
    result = table[-1]
    for j in range(len(table) - 2, -1, -1):  # Horner on the Newton form
        result = table[j] + (sigma - sigmas[j]) * result
    return result.astype(np.float32)


def fit_rescale(signals: Sequence[float], sigma_steps: Sequence[float], changes: Sequence[float]) -> tuple[float, ...]:
    """(c0, c1, c2) of the least-squares fit changes ≈ c0·signals + c1·sigma_steps + c2 (TeaCache's calibration,
    `rescaled` evaluates it); ValueError with fewer than 4 samples."""
    if not len(signals) == len(sigma_steps) == len(changes) or len(signals) < 4:
        raise ValueError(f"the rescale fit needs at least 4 (signal, σ step, change) samples, got {len(signals)}")
    design = np.stack([np.asarray(signals, np.float64), np.asarray(sigma_steps, np.float64),
                       np.ones(len(signals))], axis=1)
    coefficients, *_ = np.linalg.lstsq(design, np.asarray(changes, np.float64), rcond=None)
    return tuple(float(c) for c in coefficients)


# ------------------------------------------------------------------------------------------ the wrapper

@dataclass
class _Segment:
    """What a segment remembers: the key that identifies it and the last call's input, the accumulated change,
    the computed (σ, velocity) pairs (most recent first) and how many calls it has seen."""

    shape: tuple[int, ...]
    positions: np.ndarray
    sigma: float
    tokens: np.ndarray
    accumulated: float = 0.0
    computed_sigmas: list[float] = field(default_factory=list)
    computed: list[np.ndarray] = field(default_factory=list)
    calls: int = 0


def starts_segment(previous: _Segment | None, tokens: np.ndarray, positions: np.ndarray, sigma: float) -> bool:
    """True when this call cannot reuse anything: the first call, another token set (shape or positions: a RALU
    stage transition), or σ not below the previous call's (renoising jumps σ up; a new image starts at 1)."""
    return (previous is None or tokens.shape != previous.shape or not sigma < previous.sigma
            or not np.array_equal(positions, previous.positions))


class CachedDenoiser:
    """A denoiser that runs `inner` only when its cache says so (module docstring). Build one per image (or
    call `reset`); `stats()` reports the calls made and skipped. coefficients: TeaCache's rescale polynomial
    from the bundle manifest (required for teacache)."""

    def __init__(self, inner: Denoiser, config: CacheConfig, coefficients: Sequence[float] = ()):
        if config.method == "teacache" and not coefficients:
            raise ValueError("teacache needs the rescale coefficients calibrated for the model")
        self.inner, self.config, self.coefficients = inner, config, tuple(coefficients)
        self.reset()

    def reset(self) -> None:
        self._segment: _Segment | None = None
        self._ran: list[bool] = []

    def stats(self) -> CacheStats:
        made = sum(self._ran)
        return CacheStats(made, len(self._ran) - made, tuple(self._ran))

    def __call__(self, tokens: np.ndarray, positions: np.ndarray, sigmas: np.ndarray,
                 cond: Conditioning) -> np.ndarray:
        sigma = float(sigmas[0])
        segment = self._segment
        if starts_segment(segment, tokens, positions, sigma):
            segment = _Segment(tokens.shape, np.array(positions), sigma, tokens)
            run = True
        else:
            run = self._decide(segment, tokens, sigma)
        segment.sigma, segment.tokens = sigma, tokens
        segment.calls += 1
        self._segment = segment
        self._ran.append(run)
        if run:
            velocity = np.asarray(self.inner(tokens, positions, sigmas, cond), dtype=np.float32)
            keep = self.config.order + 1 if self.config.method == "taylorseer" else 1
            segment.computed_sigmas = [sigma, *segment.computed_sigmas][:keep]
            segment.computed = [velocity, *segment.computed][:keep]
            return velocity
        if self.config.method == "taylorseer":
            return taylor_forecast(segment.computed_sigmas, segment.computed, sigma)
        return segment.computed[0]

    def _decide(self, segment: _Segment, tokens: np.ndarray, sigma: float) -> bool:
        """Whether the model runs for this (not first) call of a segment; updates the accumulated change."""
        method = self.config.method
        if method == "taylorseer":
            return segment.calls % self.config.interval == 0
        if method == "teacache":
            change = rescaled(relative_l1(tokens, segment.tokens), segment.sigma - sigma, self.coefficients)
            run, segment.accumulated = teacache_runs(segment.accumulated, change, self.config.threshold)
            return run
        return True


class SignalRecorder:
    """A pass-through denoiser that records, for every call after the first of a segment, the signals (relative
    L1 change of the input tokens, σ step) and the relative L1 change of the output: what `fit_rescale` fits
    at export time."""

    def __init__(self, inner: Denoiser):
        self.inner = inner
        self.signals: list[float] = []
        self.sigma_steps: list[float] = []
        self.changes: list[float] = []
        self._segment: _Segment | None = None

    def __call__(self, tokens: np.ndarray, positions: np.ndarray, sigmas: np.ndarray,
                 cond: Conditioning) -> np.ndarray:
        sigma = float(sigmas[0])
        velocity = np.asarray(self.inner(tokens, positions, sigmas, cond), dtype=np.float32)
        previous = self._segment
        if not starts_segment(previous, tokens, positions, sigma):
            self.signals.append(relative_l1(tokens, previous.tokens))
            self.sigma_steps.append(previous.sigma - sigma)
            self.changes.append(relative_l1(velocity, previous.computed[0]))
        self._segment = _Segment(tokens.shape, np.array(positions), sigma, tokens, computed=[velocity])
        return velocity
