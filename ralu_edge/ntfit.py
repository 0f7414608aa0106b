"""NT-Matching fit (spec/RALU.md §9.5, Algorithm R7): per-stage shifts h and the noise constant Z = 1/√c for
a new (N, e), by minimising `ralu_edge.schedules.nt_objective` with L-BFGS-B.

An offline tool: scipy is imported inside `fit_nt_schedule` only, so this module (and ralu_edge) imports
without scipy, and devices never need it. Nothing else beyond numpy."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

from ralu_edge.errors import UserError
from ralu_edge.schedules import nt_objective

logger = logging.getLogger(__name__)

SHIFT_BOUNDS = (0.5, 10.0)
Z_BOUNDS = (2.0, 100.0)  # Z ≥ 2 keeps the noise covariance I − cJ positive semi-definite (§7.1)
INITIAL_GUESS = (3.0, 3.0, 3.0, 2.0)


@dataclass(frozen=True)
class NtFit:
    """Result of an NT-Matching fit: shifts h (one per stage), Z, c = 1/Z², and the JS distance reached."""

    shifts: tuple[float, ...]
    z: float
    c: float
    js_distance: float


def fit_nt_schedule(num_steps: Sequence[int], ends_t: Sequence[float], base_shift: float = 3.0) -> NtFit:
    """The (h, Z) minimising the JS distance between target and actual timestep densities (spec/RALU.md §9.5).

    num_steps: per-stage N (three ints ≥ 1). ends_t: stage end times e in t, increasing, last exactly 1.0.
    base_shift: h_ori, the base model's static shift (3.0 for FLUX.1-dev and SD3). L-BFGS-B from
    (3, 3, 3, 2) with h ∈ [0.5, 10], Z ∈ [2, 100]. Warns (logging) when Z ends at a bound or a stage has
    fewer than 2 steps: such fits are degenerate (§8, few-step models)."""
    check_stage_plan(num_steps, ends_t)
    try:
        from scipy.optimize import minimize
    except ImportError as error:
        raise UserError(
            "fitting a custom RALU schedule (NT-Matching) needs scipy; pip install scipy, "
            "or pick one of the built-in presets"
        ) from error
    bounds = [SHIFT_BOUNDS] * len(num_steps) + [Z_BOUNDS]
    result = minimize(
        nt_objective,
        x0=list(INITIAL_GUESS),
        args=(list(num_steps), list(ends_t), base_shift),
        method="L-BFGS-B",
        bounds=bounds,
    )
    shifts = tuple(float(h) for h in result.x[:-1])
    z = float(result.x[-1])
    if min(abs(z - Z_BOUNDS[0]), abs(z - Z_BOUNDS[1])) < 1e-6:
        logger.warning("NT-Matching fit: Z = %.3f sits at a bound; the fit is degenerate", z)
    if min(num_steps) < 2:
        logger.warning("NT-Matching fit: a stage has fewer than 2 steps (N = %s); treat it as experimental",
                       list(num_steps))
    return NtFit(shifts=shifts, z=z, c=1.0 / z**2, js_distance=float(result.fun))


MAX_STAGE_STEPS = 1000  # 20x the 50-step baseline; a bound so a damaged manifest cannot ask for 10**9 steps


def check_stage_plan(num_steps: Sequence[int], ends_t: Sequence[float]) -> None:
    """Raise UserError unless N is three positive ints and e three increasing times in (0, 1] ending at 1.0."""
    if len(num_steps) != 3 or any(int(n) != n or not 1 <= n <= MAX_STAGE_STEPS for n in num_steps):
        raise UserError(f"RALU needs three per-stage step counts 1 ≤ N ≤ {MAX_STAGE_STEPS}, got {list(num_steps)}; "
                        "pass e.g. N=[5, 6, 7]")
    if len(ends_t) != 3 or ends_t[-1] != 1.0:
        raise UserError(f"RALU stage ends e must be three times ending at 1.0, got {list(ends_t)}; "
                        "pass e.g. e=[0.3, 0.45, 1.0]")
    if not 0.0 < ends_t[0] < ends_t[1] < ends_t[2]:
        raise UserError(f"RALU stage ends e must increase within (0, 1], got {list(ends_t)}; "
                        "pass e.g. e=[0.3, 0.45, 1.0]")
