"""A user's SD3-shaped checkpoint (tiny random weights: CLIP-L + CLIP-G with projection, T5, patch-2
SD3Transformer2DModel with a cropped sin-cos table) exports, runs its baseline exactly as diffusers'
StableDiffusion3Pipeline with the same noise, runs the sd3-2x / sd3-3x RALU presets through the runtime
(matching the torch reference backend), works with ralu-run unchanged, and opens in optimum (issue 8, SD3
half; spec/RALU.md §9.7)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ralu_edge.rng import initial_noise, rng_for
from ralu_edge.sd3 import ClassifierFreeGuidance, stack_conditionings, unpatchify
from tests.conftest import random_image_folder

PROMPT = "a large blue square on the right"
SIZE = 128
pytestmark = pytest.mark.slow


def _export(model, out, target: str, *extra: str):
    done = subprocess.run([sys.executable, "-m", "ralu_export.cli", "--model", str(model), "--target", target,
                           "--height", str(SIZE), "--width", str(SIZE), "--out", str(out), *extra],
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def tiny_sd3(tmp_path_factory):
    from ralu_export.tiny_models import build_tiny_sd3

    return build_tiny_sd3(tmp_path_factory.mktemp("sd3") / "tiny-sd3")


@pytest.fixture(scope="module")
def desktop(tiny_sd3, tmp_path_factory):
    return _export(tiny_sd3, tmp_path_factory.mktemp("sd3-desktop") / "bundle", "desktop")


@pytest.fixture(scope="module")
def reference(tiny_sd3):
    import torch

    from ralu_export.models import load_sd3_pipeline

    torch.set_num_threads(2)
    return load_sd3_pipeline(str(tiny_sd3))


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    from ralu_export.eval.metrics import psnr

    return psnr(a, b)


def _diffusers_image(reference, noise_tokens, grid, steps: int, guidance: float) -> np.ndarray:
    """uint8 [H, W, 3] from StableDiffusion3Pipeline with the runtime's initial noise as its latents."""
    import torch

    latents = torch.from_numpy(unpatchify(noise_tokens, *grid))
    image = reference(PROMPT, height=SIZE, width=SIZE, num_inference_steps=steps, guidance_scale=guidance,
                      latents=latents, max_sequence_length=reference.tokenizer_3.model_max_length,
                      output_type="np").images[0]
    return np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)


def test_the_manifest_describes_sd3_conventions(desktop):
    config = json.loads((desktop / "ralu_config.json").read_text())
    denoiser = config["denoiser"]
    assert config["model"]["family"] == "sd3" and config["rope"] is None
    assert (denoiser["positions"], denoiser["timestep"], denoiser["output_order"]) == ("sincos", "sigma_x1000",
                                                                                     "dy_dx_c")
    assert denoiser["guidance_scale"] == 7.0 and {p["name"] for p in config["presets"]} == {"sd3-2x", "sd3-3x"}
    assert all(g["parity"]["passed"] for g in config["graphs"])


@pytest.mark.parametrize("guidance", [7.0, 3.0])
def test_the_baseline_reproduces_diffusers_sd3_pipeline_with_the_same_noise(desktop, reference, guidance):
    from ralu_runtime.pipeline import Pipeline

    runtime = Pipeline.from_bundle(desktop, threads=2)
    seed, steps = 5, 8
    grid = runtime.grid
    noise = initial_noise(seed, grid[0] * grid[1], runtime.channels)
    expected = _diffusers_image(reference, noise, grid, steps, guidance)
    ours = runtime(PROMPT, mode="baseline", steps=steps, seed=seed, guidance_scale=guidance).image
    assert _psnr(ours, expected) >= 40.0


def test_the_runtime_text_conditioning_equals_diffusers_encode_prompt(desktop, reference):
    from ralu_export.torch_backend import encode_prompt_sd3
    from ralu_runtime.pipeline import Pipeline

    runtime = Pipeline.from_bundle(desktop, threads=2)
    expected = encode_prompt_sd3(reference, PROMPT, reference.tokenizer_3.model_max_length)
    ours = stack_conditionings(runtime.text.encode(""), runtime.text.encode(PROMPT))
    for got, want in ((ours.text_states, expected.text_states), (ours.pooled, expected.pooled)):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize("mode", ["ralu-2x", "ralu-3x"])
def test_ralu_presets_run_through_the_runtime_and_match_the_torch_reference(desktop, reference, mode):
    from ralu_edge.sampler import ralu_sample
    from ralu_export.torch_backend import TorchSd3Denoiser, encode_prompt_sd3
    from ralu_runtime.images import latent_image_to_uint8
    from ralu_runtime.pipeline import Pipeline

    runtime = Pipeline.from_bundle(desktop, threads=2)
    result = runtime(PROMPT, mode=mode, seed=1)
    preset = runtime.preset_for_mode(mode)
    assert result.image.shape == (SIZE, SIZE, 3) and result.stats.nfe == preset.nfe
    gh, gw = runtime.grid
    noise = initial_noise(1, gh * gw, runtime.channels)
    torch_denoiser = ClassifierFreeGuidance(TorchSd3Denoiser(reference.transformer, gh, gw), 7.0)
    torch_cond = encode_prompt_sd3(reference, PROMPT, reference.tokenizer_3.model_max_length)
    tokens = ralu_sample(torch_denoiser, noise, gh, gw, preset, torch_cond, rng=rng_for(1, "ralu/select"),
                         latent_channels=runtime.channels // 4).tokens
    expected = latent_image_to_uint8(runtime.vae.decode(unpatchify(tokens, gh, gw)))[0]
    assert _psnr(result.image, expected) >= 40.0


def test_ralu_run_generates_from_an_sd3_bundle(desktop, tmp_path):
    done = subprocess.run([sys.executable, "-m", "ralu_runtime.cli_run", "--bundle", str(desktop), "--prompt", PROMPT,
                           "--mode", "ralu-3x", "--threads", "1", "--out", str(tmp_path), "--json",
                           "--guidance-scale", "4.5"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["mode"] == "ralu-3x" and result["nfe"] == 12 and os.path.isfile(result["out"])
    from PIL import Image

    assert "CFG scale: 4.5" in Image.open(result["out"]).text["parameters"]
    bad = subprocess.run([sys.executable, "-m", "ralu_runtime.cli_run", "--bundle", str(desktop), "--prompt", PROMPT,
                          "--guidance-scale", "0.5", "--out", str(tmp_path / "bad")], capture_output=True, text=True)
    assert bad.returncode == 2 and "guidance scale 0.5 is below 1" in bad.stderr and not (tmp_path / "bad").exists()


def test_optimum_opens_the_desktop_bundle_and_generates_what_diffusers_does(desktop, reference):
    import torch
    from optimum.onnxruntime import ORTDiffusionPipeline

    pipe = ORTDiffusionPipeline.from_pretrained(str(desktop))
    assert type(pipe).__name__ == "ORTStableDiffusion3Pipeline"
    latents = torch.from_numpy(rng_for(2, "optimum").standard_normal((1, 16, SIZE // 8, SIZE // 8)).astype(np.float32))
    kwargs = dict(height=SIZE, width=SIZE, num_inference_steps=4, latents=latents, output_type="np",
                  max_sequence_length=reference.tokenizer_3.model_max_length)
    ours = pipe(PROMPT, **kwargs).images[0]
    expected = reference(PROMPT, **kwargs).images[0]
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-3)


@pytest.mark.parametrize("target", ["android", "executorch", "ios"])
def test_tiny_sd3_exports_to_every_device_target_with_parity(tiny_sd3, tmp_path, target):
    out = _export(tiny_sd3, tmp_path / "bundle", target)
    config = json.loads((out / "ralu_config.json").read_text())
    roles = {g["role"] for g in config["graphs"]}
    assert {"denoiser", "text_encoder", "vae_decoder"} <= roles
    assert len({g["name"] for g in config["graphs"] if g["role"] == "text_encoder"}) == 3
    checked = [g for g in config["graphs"] if g["parity"] is not None]
    assert all(g["parity"]["passed"] for g in checked)
    assert checked or target == "ios"  # Core ML prediction needs macOS: ios checks I/O structure instead


def test_an_android_sd3_bundle_runs_ralu_through_the_runtime(tiny_sd3, tmp_path):
    from ralu_runtime.pipeline import Pipeline

    out = _export(tiny_sd3, tmp_path / "bundle", "android")
    runtime = Pipeline.from_bundle(out, threads=1)
    image = runtime(PROMPT, mode="ralu-2x", seed=0).image
    assert image.shape == (SIZE, SIZE, 3)


def test_ralu_personalize_learns_a_token_on_an_sd3_bundle_that_ralu_run_then_uses(desktop, tmp_path):
    """Forward-only personalization through the SD3 graphs (three text encoders, sin-cos denoiser): the
    learned file has an entry per encoder and ralu-run generates with it."""
    from safetensors.numpy import load_file

    images = random_image_folder(tmp_path / "images", size=SIZE)
    learned = tmp_path / "learned_embeds.safetensors"
    done = subprocess.run([sys.executable, "-m", "ralu_runtime.cli_personalize", "--bundle", str(desktop), "--images",
                           str(images), "--token", "<obj>", "--init-word", "square", "--steps", "2", "--threads", "1",
                           "--out", str(learned), "--json"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["steps"] == 2
    assert set(load_file(str(learned))) == {"clip_l", "clip_g", "t5"}
    run = subprocess.run([sys.executable, "-m", "ralu_runtime.cli_run", "--bundle", str(desktop), "--prompt",
                          "a <obj> on the left", "--mode", "ralu-2x", "--embeddings", str(learned), "--threads", "1",
                          "--out", str(tmp_path / "out"), "--json"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
