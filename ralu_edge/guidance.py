"""Classifier-free guidance on the denoiser seam, for every family that runs it (SD3 by default, FLUX-family
models whose pipeline folder records a guidance scale): the [negative, prompt] conditioning batch and a
wrapper that turns any denoiser into the guided one, v = v_u + s·(v_c − v_u) (diffusers' SD3 guidance and
FluxPipeline's `true_cfg_scale`, negative prompt first). Depends on numpy only."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ralu_edge.seam import Conditioning, Denoiser


def stack_conditionings(first: Conditioning, second: Conditioning) -> Conditioning:
    """One Conditioning of batch B1 + B2 (first's rows, then second's): CFG's [negative, prompt] batch."""
    guidance = None
    if first.guidance is not None and second.guidance is not None:
        guidance = np.concatenate([first.guidance, second.guidance])
    return Conditioning(text_states=np.concatenate([first.text_states, second.text_states]),
                        pooled=np.concatenate([first.pooled, second.pooled]), guidance=guidance,
                        text_positions=first.text_positions)


@dataclass(frozen=True)
class ClassifierFreeGuidance:
    """A denoiser with classifier-free guidance over an inner one: v = v_u + s·(v_c − v_u), evaluated in
    float32 in that order (the Kotlin core computes the same expression, so the two agree bit for bit).

    The seam call takes tokens [B, L, C] and a Conditioning of batch 2B, the B negative rows first; the inner
    denoiser sees both halves in one batch-2B call (every backend splits it into its graph's fixed batch with
    `ralu_edge.feeds.graph_feeds`: FLUX graphs run the rows one by one, SD3 ExecuTorch programs the pair).
    scale 1 still runs both halves (a caller that wants one pass should not wrap)."""

    inner: Denoiser
    scale: float

    def __call__(self, tokens: np.ndarray, positions: np.ndarray, sigmas: np.ndarray,
                 cond: Conditioning) -> np.ndarray:
        batch = tokens.shape[0]
        if cond.text_states.shape[0] != 2 * batch:
            raise ValueError(f"guidance needs a conditioning of batch {2 * batch} (negative rows first), got "
                             f"{cond.text_states.shape[0]}")
        both = self.inner(np.concatenate([tokens, tokens]), positions, np.concatenate([sigmas, sigmas]), cond)
        uncond, text = both[:batch], both[batch:]
        return (uncond + np.float32(self.scale) * (text - uncond)).astype(np.float32)
