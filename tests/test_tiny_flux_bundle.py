"""A user's FLUX.1-dev-shaped checkpoint (tiny random weights: guidance embedding, VAE factor 8, 16 latent
channels) exports and runs every RALU preset through the runtime (issue 8, FLUX half)."""

import subprocess
import sys

import numpy as np
import pytest


@pytest.mark.slow
def test_a_guidance_distilled_flux_folder_exports_and_runs_ralu(tmp_path):
    from ralu_export.tiny_models import build_tiny_flux
    from ralu_runtime.pipeline import Pipeline

    model = build_tiny_flux(tmp_path / "tiny-flux")
    out = tmp_path / "bundle"
    done = subprocess.run([sys.executable, "-m", "ralu_export.cli", "--model", str(model), "--target", "desktop",
                           "--height", "128", "--width", "128", "--out", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    pipe = Pipeline.from_bundle(out, threads=1)
    assert pipe.bundle.manifest.denoiser.guidance
    for mode in pipe.modes:
        image = pipe("a red circle", mode=mode, steps=4, seed=0).image
        assert image.shape == (128, 128, 3) and np.isfinite(image).all()
