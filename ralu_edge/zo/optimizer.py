"""The zeroth-order optimizer of ZOODiP-style Textual Inversion (spec/ZO_PERSONALIZATION.md §4–§6, §8,
Algorithms Z1 lines 6–9, Z2, Z3): ZOConfig (§12's defaults), the resumable ZOState (§11.5) and
`zo_step(state, loss_fn, config)`, one step of RGE estimate → Subspace Gradient projection → ZOAdam update →
history push → SG refresh every τ steps. The loss is a callable over a batch of candidate embeddings, so the
runtime can run the n + 1 queries as one batch through its graphs.

θ is one float32 vector: the concatenation of every trained row across text encoders (§11.4, e.g. CLIP 768 +
T5 4096 for FLUX); the caller concatenates and splits. Pure NumPy, no global state: the only randomness is the
directions, drawn from `rng_for(seed, "zo/directions", step)`, so a step is a function of (state, loss values)
and a resumed run equals an uninterrupted one bit for bit. Depends on numpy only.

Reference quirks (spec §5, §13) and what is done here:
- θ, m, v and P are fp16 in the reference; here float32 (spec §10.3), with intermediates in float64.
  `emulate_fp16_state` rounds θ, eᵢ, the estimate, m, v and P to fp16 where the reference stores them, and
  reproduces the in-place query drift (estimator.fp16_query_points), for parity studies.
- Adam's ε is 1e-3 (not 1e-8), no weight decay, constant learning rate 1e-2 (the script's, not the paper's
  5e-3). The AdamW optimizer the script builds is never used; neither is one here.
- `ZOAdam.dim = 768` is hard-coded there; here d_eff = D − rows(P) for any D.
- The reference logs the last perturbed loss Lₙ; StepInfo.loss is L₀ (the loss at θ) and StepInfo.losses
  holds all n + 1.
- The reference never checkpoints m, v, the buffer or P (§11.5); ZOState carries all of them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from ralu_edge.errors import UserError
from ralu_edge.rng import rng_for
from ralu_edge.zo.estimator import (
    GRAD_NORMALIZATIONS, GradNormalization, LossFn, evaluate_losses, fp16_query_points, perturbation_directions,
    query_points, rge_gradient,
)
from ralu_edge.zo.subspace import low_variance_directions, project_out, push_history

STATE_FORMAT = "ralu-zo-state"
STATE_VERSION = 1
PURPOSE_DIRECTIONS = "zo/directions"
_ARRAY_KEYS = ("theta", "adam_m", "adam_v", "sg_buffer", "sg_proj")


@dataclass(frozen=True)
class ZOConfig:
    """Optimizer settings; defaults are the project's (spec §12). Names follow the spec's symbols.

    lr η (constant); mu μ (perturbation size); n (queries per step besides θ, so n + 1 loss evaluations);
    tau τ (SG history length and refresh period, steps); nu ν (SG keeps 1 − ν of the history's variance);
    beta1, beta2, adam_eps: ZOAdam; grad_normalization: "reference" (n·√((d_eff + n − 1)/n), the code's) or
    "paper" (n); subspace_gradient: False turns SG off (the ablation); emulate_fp16_state: reference fp16 state."""

    lr: float = 1e-2
    mu: float = 1e-3
    n: int = 2
    tau: int = 128
    nu: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    adam_eps: float = 1e-3
    grad_normalization: GradNormalization = "reference"
    subspace_gradient: bool = True
    emulate_fp16_state: bool = False

    def __post_init__(self) -> None:
        for name in ("lr", "mu", "adam_eps"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise UserError(f"ZO {name} = {value} must be a positive number (default {_DEFAULTS[name]})")
        if int(self.n) != self.n or self.n < 1:
            raise UserError(f"ZO n = {self.n} must be a positive integer (queries per step; default 2)")
        if int(self.tau) != self.tau or self.tau < 2:
            raise UserError(f"ZO tau = {self.tau} must be an integer ≥ 2 (SG history length; default 128)")
        if not 0.0 < self.nu < 1.0:
            raise UserError(f"ZO nu = {self.nu} must lie in (0, 1) (SG keeps 1 − nu of the variance; default 1e-3)")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise UserError(f"ZO {name} = {getattr(self, name)} must lie in [0, 1) (default "
                                f"{_DEFAULTS[name]})")
        if self.grad_normalization not in GRAD_NORMALIZATIONS:
            raise UserError(f"unknown gradient normalization {self.grad_normalization!r}; choose one of "
                            f"{', '.join(GRAD_NORMALIZATIONS)}")
        object.__setattr__(self, "n", int(self.n))
        object.__setattr__(self, "tau", int(self.tau))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ZOConfig":
        return cls(**data)


_DEFAULTS = {f.name: f.default for f in fields(ZOConfig)}


@dataclass(frozen=True)
class ZOState:
    """Everything a run needs to continue (spec §11.5), as read-only arrays and integers.

    theta, adam_m, adam_v: [D] float32 (θ master and Adam moments); sg_buffer: [τ, D] float32 ring of the last τ
    iterates; sg_proj: P [r, D] float32 (r = 0 before the first refresh); step: completed steps (the next step is
    step + 1); adam_step: Adam's k (equal to step here, stored separately as the spec asks); sg_write_index,
    sg_fill_count: ring position and fill; seed: the base seed of every per-step generator."""

    theta: np.ndarray
    adam_m: np.ndarray
    adam_v: np.ndarray
    sg_buffer: np.ndarray
    sg_proj: np.ndarray
    step: int = 0
    adam_step: int = 0
    sg_write_index: int = 0
    sg_fill_count: int = 0
    seed: int = 42

    def __post_init__(self) -> None:
        for key in _ARRAY_KEYS:
            array = np.array(getattr(self, key), dtype=np.float32, copy=True)
            array.flags.writeable = False
            object.__setattr__(self, key, array)
        dim = self.theta.shape[0] if self.theta.ndim == 1 else -1
        shapes = {key: getattr(self, key).shape for key in _ARRAY_KEYS}
        tau = self.sg_buffer.shape[0] if self.sg_buffer.ndim == 2 else 0
        if (dim < 1 or shapes["adam_m"] != (dim,) or shapes["adam_v"] != (dim,) or tau < 2
                or shapes["sg_buffer"] != (tau, dim) or self.sg_proj.ndim != 2 or self.sg_proj.shape[1] != dim
                or self.sg_proj.shape[0] >= dim):
            raise ValueError(f"inconsistent ZO state shapes {shapes}; expected theta/adam_m/adam_v [D], "
                             "sg_buffer [tau, D], sg_proj [r, D] with r < D")
        for name in ("step", "adam_step", "sg_write_index", "sg_fill_count", "seed"):
            object.__setattr__(self, name, int(getattr(self, name)))
        if not (0 <= self.sg_write_index < tau and 0 <= self.sg_fill_count <= tau and self.step >= 0
                and self.adam_step >= 0):
            raise ValueError(f"inconsistent ZO state counters: step {self.step}, adam_step {self.adam_step}, "
                             f"sg_write_index {self.sg_write_index}, sg_fill_count {self.sg_fill_count}, tau {tau}")

    @property
    def dim(self) -> int:
        """D, the length of the concatenated embedding vector θ."""
        return int(self.theta.shape[0])

    @property
    def d_eff(self) -> int:
        """D − rows(P): the dimensions the gradient normaliser counts (spec §4, Z3 line 5)."""
        return self.dim - int(self.sg_proj.shape[0])

    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """(arrays, meta) for a checkpoint (spec §11.5): the five float32 arrays under their spec names
        (theta, adam_m, adam_v, sg_buffer, sg_proj) and a JSON-able dict of the counters, d_eff, seed and format.

        safetensors stores both: the arrays as tensors, the dict as metadata strings (e.g. json.dumps per value).
        The caller adds the config, tokens, model and data hashes it vouches for."""
        arrays = {key: getattr(self, key) for key in _ARRAY_KEYS}
        meta = {"format": STATE_FORMAT, "version": STATE_VERSION, "step": self.step, "adam_step": self.adam_step,
                "sg_write_index": self.sg_write_index, "sg_fill_count": self.sg_fill_count, "d_eff": self.d_eff,
                "base_seed": self.seed}
        return arrays, meta

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> "ZOState":
        """The state `to_arrays` described; integer-valued metadata may arrive as JSON strings. A missing key or
        a foreign format is a UserError (a checkpoint from elsewhere or a damaged file)."""
        try:
            if meta["format"] != STATE_FORMAT or int(meta["version"]) != STATE_VERSION:
                raise UserError(f"ZO checkpoint format {meta['format']!r} version {meta['version']} is not "
                                f"{STATE_FORMAT!r} version {STATE_VERSION}; start a new run without resuming")
            counters = {name: int(meta[name]) for name in ("step", "adam_step", "sg_write_index", "sg_fill_count")}
            state = cls(**{key: np.asarray(arrays[key]) for key in _ARRAY_KEYS}, seed=int(meta["base_seed"]),
                        **counters)
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"the ZO checkpoint is incomplete or damaged ({e.__class__.__name__}: {e}); delete "
                            "it, or start a new run without resuming") from None
        if "d_eff" in meta and int(meta["d_eff"]) != state.d_eff:
            raise UserError(f"the ZO checkpoint says d_eff = {meta['d_eff']} but its projection gives "
                            f"{state.d_eff}; the file is damaged, delete it or start a new run")
        return state


def init_state(theta0: np.ndarray, config: ZOConfig, seed: int) -> ZOState:
    """Step-0 state (spec Algorithm Z1 line 1): θ = float32 copy of theta0 [D] (the initializer rows,
    concatenated), m = v = 0, an empty τ-row history, no projection (d_eff = D)."""
    theta = np.asarray(theta0, dtype=np.float32).reshape(-1)
    if not np.all(np.isfinite(theta)):
        raise ValueError("the initial embedding contains NaN or infinity")
    if config.emulate_fp16_state:
        theta = theta.astype(np.float16).astype(np.float32)
    dim = theta.shape[0]
    zeros = np.zeros(dim, dtype=np.float32)
    return ZOState(theta=theta, adam_m=zeros, adam_v=zeros, sg_buffer=np.zeros((config.tau, dim), np.float32),
                   sg_proj=np.zeros((0, dim), np.float32), seed=seed)


def adam_update(theta: np.ndarray, gradient: np.ndarray, m: np.ndarray, v: np.ndarray, k: int,
                config: ZOConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ZOAdam (spec §5, Algorithm Z2 lines 2–4) at Adam step k ≥ 1: (θ′, m′, v′), each [D] float32.

    m′ = β₁m + (1−β₁)g, v′ = β₂v + (1−β₂)g², θ′ = θ − η·m̂/(√v̂ + ε) with bias-corrected m̂, v̂; float64 inside.
    No weight decay. The first step moves each coordinate by η·g/(|g| + ε)."""
    g = np.asarray(gradient, dtype=np.float64)
    m_new = config.beta1 * np.asarray(m, np.float64) + (1.0 - config.beta1) * g
    v_new = config.beta2 * np.asarray(v, np.float64) + (1.0 - config.beta2) * g * g
    if config.emulate_fp16_state:  # the reference's m, v are fp16 tensors: (1−β₂)g² underflows (spec §13)
        m_new, v_new = _fp16(m_new), _fp16(v_new)
    m_hat = m_new / (1.0 - config.beta1**k)
    v_hat = v_new / (1.0 - config.beta2**k)
    theta_new = np.asarray(theta, np.float64) - config.lr * m_hat / (np.sqrt(v_hat) + config.adam_eps)
    if config.emulate_fp16_state:
        theta_new = _fp16(theta_new)
    return theta_new.astype(np.float32), m_new.astype(np.float32), v_new.astype(np.float32)


@dataclass(frozen=True)
class StepInfo:
    """What one step did. step: its 1-based number; loss: L₀, the loss at θ before the update; losses: [n + 1]
    float64; grad_norm: ‖ĝ‖ after projection; theta_norm: ‖θ‖ after the update (spec §13: log it, no norm
    constraint exists); d_eff: after any refresh; sg_refreshed: whether P was rebuilt; sg_rank: rows(P)."""

    step: int
    loss: float
    losses: np.ndarray
    grad_norm: float
    theta_norm: float
    d_eff: int
    sg_refreshed: bool
    sg_rank: int


def zo_step(state: ZOState, loss_fn: LossFn, config: ZOConfig) -> tuple[ZOState, StepInfo]:
    """One ZO step, number state.step + 1 (spec Algorithm Z1 lines 6–9): (new state, info); `state` is unchanged.

    loss_fn(queries [n + 1, D] float32) -> losses [n + 1]: row 0 is θ, row i is θ + μ·eᵢ; the caller binds the
    step's data, σ and noise (draw_step(seed, state.step + 1, ...)) so that all rows share them."""
    if state.sg_buffer.shape[0] != config.tau:
        raise UserError(f"the ZO state holds a {state.sg_buffer.shape[0]}-step history but tau = {config.tau}; "
                        "resume with the tau the run started with, or start a new run")
    step = state.step + 1
    fp16 = config.emulate_fp16_state
    directions = perturbation_directions(rng_for(state.seed, PURPOSE_DIRECTIONS, step), config.n, state.dim)
    if fp16:  # the reference draws eᵢ with torch.normal in fp16
        directions = directions.astype(np.float16).astype(np.float32)
        queries, theta = fp16_query_points(state.theta, directions, config.mu)
    else:
        queries, theta = query_points(state.theta, directions, config.mu), state.theta
    losses = evaluate_losses(loss_fn, queries)
    gradient = rge_gradient(losses, directions, config.mu, state.d_eff, config.grad_normalization)
    if fp16:
        gradient = _fp16(gradient)
    if config.subspace_gradient:
        gradient = project_out(gradient, state.sg_proj)
        if fp16:
            gradient = _fp16(gradient)
    theta, m, v = adam_update(theta, gradient, state.adam_m, state.adam_v, state.adam_step + 1, config)
    buffer, write_index, fill_count = push_history(state.sg_buffer, state.sg_write_index, state.sg_fill_count, theta)
    proj, refreshed = state.sg_proj, False
    if config.subspace_gradient and step % config.tau == 0:
        proj, refreshed = low_variance_directions(buffer[:fill_count], config.nu), True
        if fp16:
            proj = _fp16(proj).astype(np.float32)
    new_state = ZOState(theta=theta, adam_m=m, adam_v=v, sg_buffer=buffer, sg_proj=proj, step=step,
                        adam_step=state.adam_step + 1, sg_write_index=write_index, sg_fill_count=fill_count,
                        seed=state.seed)
    info = StepInfo(step=step, loss=float(losses[0]), losses=losses, grad_norm=float(np.linalg.norm(gradient)),
                    theta_norm=float(np.linalg.norm(theta.astype(np.float64))), d_eff=new_state.d_eff,
                    sg_refreshed=refreshed, sg_rank=int(proj.shape[0]))
    return new_state, info


def _fp16(values: np.ndarray) -> np.ndarray:
    """Values rounded to fp16 (overflow to ±inf, underflow to 0), returned as float64."""
    return np.asarray(values).astype(np.float16).astype(np.float64)
