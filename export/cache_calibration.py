"""Export-time calibration of TeaCache's rescale (issue 16, ralu_edge.cache): after a bundle's graphs and
manifest are written, run a few full (uncached) sampling runs through the bundle's own denoiser with the
runtime, record for every call but the first of each stage the two host-side signals and the relative L1
change of the velocity the cache would reuse, and fit `ralu_edge.cache.fit_rescale`. The result goes into the
manifest's `cache` entry.

What runs: CALIBRATION_PROMPTS (seeds 0, 1), each through the baseline at CALIBRATION_STEPS and through
every RALU preset the bundle carries, with classifier-free guidance when the manifest records a scale (the cache
sits outside guidance, so the velocity recorded is the guided one). Only desktop and android bundles
(CALIBRATED_TARGETS) are calibrated; ExecuTorch and Core ML bundles get no `cache` entry (their graphs need
another engine) and neither do web bundles (ralu_runtime runs them, but the browser page has no cache modes), and
TeaCache is refused on them (TaylorSeer needs
no calibration). Costs 2 × (CALIBRATION_STEPS + ΣN per preset) denoiser calls at export. numpy, ralu_edge and
ralu_runtime; never torch."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ralu_edge.cache import SIGNAL, SignalRecorder, fit_rescale, rescaled
from ralu_edge.guidance import ClassifierFreeGuidance, stack_conditionings
from ralu_edge.manifest import CacheCalibration, read_manifest
from ralu_edge.rng import initial_noise, rng_for
from ralu_edge.sampler import ralu_sample, sample_baseline

log = logging.getLogger(__name__)

CALIBRATION_PROMPTS = ("a large red circle on the left", "a small blue square at the top right")
CALIBRATION_STEPS = 28  # FLUX.1-dev's default step count, the baseline users start from
CALIBRATED_TARGETS = ("desktop", "android")  # the bundles ralu_runtime.Pipeline opens


def calibrate_cache(bundle_dir: Path) -> CacheCalibration | None:
    """The TeaCache calibration of the bundle in `bundle_dir` (manifest already written), or None for a target
    the runtime does not run."""
    from ralu_runtime.pipeline import Pipeline, mode_for_preset

    if read_manifest(bundle_dir).target not in CALIBRATED_TARGETS:
        return None
    # One ORT thread: ORT splits its sums per thread count, and the coefficients go into the manifest, which should
    # not depend on how many cores the export machine has. verify=False: the export wrote the files just now.
    pipe = Pipeline.from_bundle(bundle_dir, threads=1, verify=False)
    scale = pipe.check_guidance_scale(None)
    # recorded outside guidance, where the cache sits: the guided velocity is what a skipped call reuses
    recorder = SignalRecorder(pipe.denoiser if scale is None else ClassifierFreeGuidance(pipe.denoiser, scale))
    gh, gw = pipe.grid
    runs = ["baseline"] + [mode_for_preset(p.name) for p in pipe.bundle.manifest.presets]
    for seed, prompt in enumerate(CALIBRATION_PROMPTS):
        cond = pipe.text.encode(prompt)
        if scale is not None:
            cond = stack_conditionings(pipe.text.encode(""), cond)
        noise = initial_noise(seed, gh * gw, pipe.channels)
        sample_baseline(recorder, noise, gh, gw, pipe.baseline_sigmas(CALIBRATION_STEPS), cond)
        for mode in runs[1:]:
            ralu_sample(recorder, noise, gh, gw, pipe.preset_for_mode(mode), cond, rng=rng_for(seed, "ralu/select"),
                        latent_channels=pipe.channels // 4)
    coefficients = fit_rescale(recorder.signals, recorder.sigma_steps, recorder.changes)
    changes = np.asarray(recorder.changes)
    fitted = np.array([rescaled(s, d, coefficients) for s, d in zip(recorder.signals, recorder.sigma_steps)])
    r2 = 1.0 - float(((changes - fitted) ** 2).sum() / max(((changes - changes.mean()) ** 2).sum(), 1e-30))
    log.info("TeaCache calibration: %d samples, r2 %.3f, coefficients %s", len(changes), r2, coefficients)
    return CacheCalibration(signal=SIGNAL, coefficients=coefficients, prompts=CALIBRATION_PROMPTS,
                            runs=(f"baseline-{CALIBRATION_STEPS}", *runs[1:]), samples=len(changes), r2=r2)
