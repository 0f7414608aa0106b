"""The denoiser graph's feeds, computed once for every engine (issue 14): constants every adapter shares.

FLUX_DEFAULT_GUIDANCE is diffusers' FluxPipeline default `guidance_scale` (the guidance-embedding input of
guidance-distilled FLUX.1-dev transformers); SD3 graphs take the timestep as sigma x SD3_TIMESTEP_SCALE."""

from __future__ import annotations

FLUX_DEFAULT_GUIDANCE = 3.5
SD3_TIMESTEP_SCALE = 1000.0
