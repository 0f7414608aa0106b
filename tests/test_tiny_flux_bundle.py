"""A user's FLUX.1-dev-shaped checkpoint (tiny random weights: guidance embedding, VAE factor 8, 16 latent
channels, a folder saved with save_pretrained) goes through every target of `ralu-export --model PATH` with
parity checked at export time, runs every RALU preset through the runtime (ORT bundles) and a whole ralu-4x
loop through the ExecuTorch program, and optimum's ORTDiffusionPipeline opens the desktop bundle and generates
diffusers' own image (issue 8, FLUX half). Slow: one export per target, ~1-4 min each on 2 cores."""

import subprocess
import sys

import numpy as np
import pytest

from ralu_edge.manifest import read_manifest, verify_files
from tests.conftest import random_image_folder

pytestmark = pytest.mark.slow

PROMPT = "a red circle"


@pytest.fixture(scope="module")
def tiny_flux(tmp_path_factory):
    from ralu_export.tiny_models import build_tiny_flux

    return build_tiny_flux(tmp_path_factory.mktemp("tiny") / "tiny-flux")


@pytest.fixture(scope="module")
def bundles(tiny_flux, tmp_path_factory):
    """Exported lazily, once per target, by the `ralu-export` entry point a user types."""
    made = {}

    def get(target: str):
        if target not in made:
            out = tmp_path_factory.mktemp(target) / "bundle"
            presets = [] if target in ("desktop", "android") else ["--presets", "flux-4x"]
            done = subprocess.run([sys.executable, "-m", "ralu_export.cli", "--model", str(tiny_flux), "--target",
                                   target, "--height", "128", "--width", "128", "--out", str(out), *presets],
                                  capture_output=True, text=True)
            assert done.returncode == 0, done.stderr[-3000:]
            made[target] = out
        return made[target]

    return get


@pytest.mark.parametrize("target", ["desktop", "android", "executorch", "ios"])
def test_every_target_exports_with_parity(bundles, target):
    out = bundles(target)
    manifest = read_manifest(out)
    verify_files(out, manifest)
    assert manifest.denoiser.guidance
    assert (manifest.vae.latent_channels, manifest.vae.factor) == (16, 8)
    assert manifest.graphs
    if target == "ios":  # Core ML prediction needs macOS: packages are checked by spec, parity is not claimed
        assert all(g.parity is None for g in manifest.graphs)
    else:
        assert all(g.parity.passed for g in manifest.graphs)
    roles = {g.role for g in manifest.graphs}
    assert {"denoiser", "text_encoder", "vae_decoder"} <= roles


@pytest.mark.parametrize("target", ["desktop", "android"])
def test_every_ralu_preset_runs_through_the_runtime(bundles, target):
    from ralu_runtime.pipeline import Pipeline

    pipe = Pipeline.from_bundle(bundles(target), threads=1)
    assert {"baseline", "ralu-4x", "ralu-5x", "ralu-7x"} <= set(pipe.modes)
    for mode in pipe.modes:
        result = pipe(PROMPT, mode=mode, steps=4, seed=0)
        assert result.image.shape == (128, 128, 3) and np.isfinite(result.image).all()
        assert result.stats.nfe == (4 if mode == "baseline" else pipe.preset_for_mode(mode).nfe)


def test_a_ralu_4x_loop_through_the_executorch_program_matches_ort(bundles):
    pytest.importorskip("executorch.runtime")
    from ralu_edge.rng import initial_noise, rng_for
    from ralu_edge.sampler import ralu_sample
    from ralu_export.executorch_backend import ExecutorchDenoiser
    from ralu_runtime.bundle import open_bundle
    from ralu_runtime.pipeline import Pipeline

    pipe = Pipeline.from_bundle(bundles("desktop"), threads=1)
    et = ExecutorchDenoiser(open_bundle(bundles("executorch")), threads=1)
    gh, gw = pipe.grid
    cond = pipe.text.encode(PROMPT)
    noise = initial_noise(1, gh * gw, pipe.channels)
    preset = pipe.preset_for_mode("ralu-4x")
    finals = [ralu_sample(d, noise, gh, gw, preset, cond, rng=rng_for(1, "ralu/select"),
                          latent_channels=pipe.channels // 4).tokens for d in (pipe.denoiser, et)]
    assert et.calls == preset.nfe
    assert np.abs(finals[0] - finals[1]).max() < 2e-2 * max(1.0, np.abs(finals[0]).max())


def test_optimum_opens_the_desktop_bundle_and_generates_the_diffusers_image(bundles, tiny_flux):
    import torch
    from diffusers import FluxPipeline
    from optimum.onnxruntime import ORTDiffusionPipeline

    kwargs = dict(num_inference_steps=3, height=128, width=128, max_sequence_length=32, output_type="np",
                  guidance_scale=3.5)
    got = ORTDiffusionPipeline.from_pretrained(str(bundles("desktop")))(
        PROMPT, generator=torch.Generator().manual_seed(0), **kwargs).images
    expected = FluxPipeline.from_pretrained(str(tiny_flux))(
        PROMPT, generator=torch.Generator().manual_seed(0), **kwargs).images
    assert got.shape == (1, 128, 128, 3)
    assert np.abs(got - expected).max() < 1e-3


def test_ralu_personalize_learns_a_token_on_the_android_bundle_that_ralu_run_then_uses(bundles, tmp_path):
    from safetensors.numpy import load_file

    images = random_image_folder(tmp_path / "images")
    learned = tmp_path / "learned_embeds.safetensors"
    done = subprocess.run([sys.executable, "-m", "ralu_runtime.cli_personalize", "--bundle", str(bundles("android")),
                           "--images", str(images), "--token", "<obj>", "--init-word", "square", "--steps", "2",
                           "--threads", "1", "--out", str(learned), "--json"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert set(load_file(str(learned))) == {"clip_l", "t5"}
    run = subprocess.run([sys.executable, "-m", "ralu_runtime.cli_run", "--bundle", str(bundles("android")),
                          "--prompt", "a <obj> on the left", "--mode", "ralu-4x", "--embeddings", str(learned),
                          "--threads", "1", "--out", str(tmp_path / "out"), "--json"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
