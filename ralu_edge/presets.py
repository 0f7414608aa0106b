"""RALU presets (spec/RALU.md §8): the one table of per-stage step counts N, stage ends e, shifts h, noise
constant Z = 1/√c and upsampling ratio r, with everything derived from them (s, a, b, sigma lists, stage
lengths). Field names follow the spec's symbols. Depends on numpy only (a custom fit imports scipy lazily)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from ralu_edge.errors import UserError
from ralu_edge.ntfit import check_stage_plan, fit_nt_schedule
from ralu_edge import schedules

_DERIVED_TOLERANCE = 1e-6


@dataclass(frozen=True)
class RaluPreset:
    """One RALU configuration (spec/RALU.md §2 Algorithm R1, §8).

    N: per-stage step counts (3 ints); e: stage end times in t, increasing, last 1.0; h: per-stage shifts;
    Z: 1/√c, at least 2 so that I − cJ is a covariance (§7.1); r: fraction of low-res tokens upsampled early."""

    name: str
    N: tuple[int, int, int]
    e: tuple[float, float, float]
    h: tuple[float, float, float]
    Z: float
    r: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "N", tuple(int(n) for n in self.N))
        object.__setattr__(self, "e", tuple(float(x) for x in self.e))
        object.__setattr__(self, "h", tuple(float(x) for x in self.h))
        check_stage_plan(self.N, self.e)
        if len(self.h) != 3 or not all(math.isfinite(x) and x > 0 for x in self.h):
            raise UserError(f"preset {self.name!r}: shifts h must be three positive numbers, got {list(self.h)}")
        if not (math.isfinite(self.Z) and self.Z >= 2.0):
            raise UserError(f"preset {self.name!r}: Z = {self.Z} makes I − cJ indefinite; use Z ≥ 2 (c ≤ 1/4)")
        if not 0.0 <= self.r <= 1.0:
            raise UserError(f"preset {self.name!r}: up-ratio r = {self.r} is outside [0, 1]; use e.g. r = 0.3")

    @property
    def c(self) -> float:
        """Correlation constant c = 1/Z² of the renoising noise (§7.1)."""
        return 1.0 / self.Z**2

    @property
    def s(self) -> tuple[float, float, float]:
        """Stage start times in t: (0, s₂, s₃) (§7.1)."""
        return tuple(schedules.stage_starts(self.e, self.Z))

    @property
    def a(self) -> tuple[float, float]:
        """Latent weights a₁, a₂ of the two transitions (§7.1; the reference's `betas`)."""
        return tuple(schedules.transition(end, self.Z).a for end in self.e[:2])

    @property
    def b(self) -> tuple[float, float]:
        """Noise weights b₁ = 1 − s₂, b₂ = 1 − s₃ of the transitions (§7.1; the reference's `alphas`)."""
        return tuple(schedules.transition(end, self.Z).b for end in self.e[:2])

    @property
    def stage_sigmas(self) -> list[list[float]]:
        """The three stages' noise levels σ = 1 − t, N_k + 1 floats each; the last ends at 0 (§7.3, §8)."""
        return [
            schedules.stage_sigmas(start, end, shift, n).tolist()
            for start, end, shift, n in zip(self.s, self.e, self.h, self.N)
        ]

    @property
    def nfe(self) -> int:
        """Denoiser evaluations per image: ΣN (one per Euler step, §2)."""
        return sum(self.N)

    def num_selected(self, grid_h: int, grid_w: int) -> int:
        """k = int(M_down·r) in double precision, for a packed full-res grid grid_h × grid_w (§9.2)."""
        check_grid(grid_h, grid_w)
        return int((grid_h // 2) * (grid_w // 2) * self.r)

    def stage_lengths(self, grid_h: int, grid_w: int) -> tuple[int, int, int]:
        """(L₁, L₂, L₃) = (M_down, M_down + 3k, M) image tokens per stage, packed grid_h × grid_w (§9.2)."""
        check_grid(grid_h, grid_w)
        m_down = (grid_h // 2) * (grid_w // 2)
        return m_down, m_down + 3 * self.num_selected(grid_h, grid_w), grid_h * grid_w

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict for the manifest: the inputs plus the derived c, s, a, b and sigma lists."""
        return {
            "name": self.name, "N": list(self.N), "e": list(self.e), "h": list(self.h), "Z": self.Z,
            "r": self.r, "c": self.c, "s": list(self.s), "a": list(self.a), "b": list(self.b),
            "stage_sigmas": self.stage_sigmas,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RaluPreset":
        """The preset stored by `to_dict`. Derived entries, when present, must agree with the recomputed ones
        to 1e-6: a manifest whose precomputed sigmas disagree with its own N, e, h, Z raises UserError."""
        missing = [key for key in ("name", "N", "e", "h", "Z", "r") if key not in data]
        if missing:
            raise UserError(f"RALU preset entry lacks {missing}; re-export the bundle")
        preset = cls(name=str(data["name"]), N=tuple(data["N"]), e=tuple(data["e"]), h=tuple(data["h"]),
                     Z=float(data["Z"]), r=float(data["r"]))
        recomputed = preset.to_dict()
        for key in ("c", "s", "a", "b", "stage_sigmas"):
            if key in data and not _close(data[key], recomputed[key]):
                raise UserError(f"RALU preset {preset.name!r}: stored {key} disagrees with its N, e, h, Z; "
                                "re-export the bundle")
        return preset


def _close(stored: Any, computed: Any) -> bool:
    if isinstance(computed, (list, tuple)):
        return (isinstance(stored, (list, tuple)) and len(stored) == len(computed)
                and all(_close(x, y) for x, y in zip(stored, computed)))
    return isinstance(stored, (int, float)) and abs(float(stored) - computed) <= _DERIVED_TOLERANCE


def check_grid(grid_h: int, grid_w: int) -> None:
    """Raise UserError unless the packed full-res grid is positive and even in both axes (§9.2)."""
    if grid_h < 2 or grid_w < 2 or grid_h % 2 or grid_w % 2:
        raise UserError(f"RALU needs an even packed token grid, got {grid_h}×{grid_w}; "
                        "use an image size that is a multiple of 4 × the VAE factor (32 px for FLUX)")


# spec/RALU.md §8. flux-5x uses the scalar Z the reference meant (its code holds a list); flux-7x uses r = 0.1.
PRESETS: dict[str, RaluPreset] = {
    preset.name: preset
    for preset in (
        RaluPreset("flux-4x", (5, 6, 7), (0.3, 0.45, 1.0), (5.019, 2.589, 2.226), 6.317, 0.3),
        RaluPreset("flux-5x", (4, 5, 6), (0.3, 0.45, 1.0), (5.115, 2.642, 2.254), 7.522, 0.2),
        RaluPreset("flux-7x", (2, 3, 5), (0.2, 0.3, 1.0), (8.141, 2.856, 2.193), 6.261, 0.1),
        RaluPreset("sd3-2x", (5, 6, 9), (0.2, 0.3, 1.0), (6.121, 2.237, 1.973), 4.132, 0.3),
        RaluPreset("sd3-3x", (3, 3, 6), (0.25, 0.3, 1.0), (6.401, 2.601, 2.273), 6.259, 0.2),
        RaluPreset("sd3-2x-paper", (5, 6, 9), (0.2, 0.3, 1.0), (6.21, 2.23, 1.97), 4.13, 0.3),
        RaluPreset("sd3-3x-paper", (3, 3, 6), (0.25, 0.3, 1.0), (6.40, 2.60, 2.23), 6.26, 0.2),
    )
}


def get(name: str) -> RaluPreset:
    """The built-in preset called `name`; UserError naming the valid choices otherwise."""
    if name not in PRESETS:
        raise UserError(f"unknown RALU preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def custom(N: Sequence[int], e: Sequence[float], r: float = 0.3, h_ori: float = 3.0) -> RaluPreset:
    """A preset for a new (N, e): h and Z from the NT-Matching fit against shift h_ori (§9.5; needs scipy).

    r defaults to 0.3 as in the reference CLI (§8 "Reference defaults")."""
    fit = fit_nt_schedule(N, e, h_ori)
    name = "custom-N{}-e{}".format("-".join(str(n) for n in N), "-".join(f"{x:g}" for x in e))
    return RaluPreset(name=name, N=tuple(N), e=tuple(e), h=fit.shifts, Z=fit.z, r=r)
