"""The denoiser seam (DESIGN.md "The one seam"): the one interface every sampler in ralu_edge is written
against and every backend (ORT sessions, ExecuTorch programs, the torch reference) implements.

    velocity[B, L, C] = denoiser(tokens[B, L, C], positions[L, 3], sigmas[B], cond)

`positions` are FLUX-style position ids (axis 0 unused for images, then row, col) in float64 and may be
fractional (RALU stage 2). `sigmas` is the noise level sigma = 1 - t in [0, 1] (not x1000). Every backend
turns a call into its graph's inputs with `ralu_edge.feeds` (RoPE tables or SD3 sin-cos embeddings built on
the host, the graph's σ units, the default guidance, batching) and the outputs back into the velocity.
Must not import anything but numpy."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Conditioning:
    """Text conditioning of one batch, computed once per prompt by the text encoders.

    text_states: [B, T, D_text] float32, the sequence encoder's hidden states (T5 for FLUX).
    pooled: [B, D_pooled] float32, the pooled projection (CLIP for FLUX).
    guidance: [B] float32 or None, the distilled-guidance scale for guidance-embedded models.
    text_positions: [T, 3] float64 position ids of the text tokens (all zero for FLUX)."""

    text_states: np.ndarray
    pooled: np.ndarray
    guidance: np.ndarray | None = None
    text_positions: np.ndarray | None = field(default=None)

    def positions_for_text(self) -> np.ndarray:
        """Text position ids: [T, 3] float64; zeros when not given (the FLUX convention)."""
        if self.text_positions is not None:
            return self.text_positions
        return np.zeros((self.text_states.shape[1], 3), dtype=np.float64)


class Denoiser(Protocol):
    """Anything that maps noisy packed tokens to a velocity (v = noise - x0, rectified flow)."""

    def __call__(
        self, tokens: np.ndarray, positions: np.ndarray, sigmas: np.ndarray, cond: Conditioning
    ) -> np.ndarray: ...
