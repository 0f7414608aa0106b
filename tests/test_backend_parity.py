"""The ORT runtime and the torch reference backend of the RALU engine, same noise and same selection
generator, give the same images (issue 5: PSNR >= 40 dB, fp32) for the baseline and every RALU preset."""

import numpy as np
import pytest

from ralu_edge.rng import rng_for
from ralu_edge.sampler import ralu_sample, sample_baseline
from ralu_edge.schedules import flux_baseline_sigmas
from ralu_edge.tokens import unpack_latents
from ralu_export.eval.metrics import psnr

PROMPT = "a large blue square on the right"


@pytest.fixture(scope="module")
def backends(desktop_bundle):
    import torch

    from ralu_export.models import load_flux_pipeline
    from ralu_export.torch_backend import TorchFluxDenoiser, encode_prompt
    from ralu_runtime.pipeline import Pipeline

    torch.set_num_threads(2)
    pipe = load_flux_pipeline("shapes")
    runtime = Pipeline.from_bundle(desktop_bundle, threads=2)
    return pipe, TorchFluxDenoiser(pipe.transformer), encode_prompt(pipe, [PROMPT]), runtime


@pytest.mark.parametrize("mode", ["baseline", "ralu-4x", "ralu-5x", "ralu-7x"])
def test_ort_and_torch_backends_agree_within_40_db(backends, mode):
    from ralu_export.torch_backend import decode_tokens
    from ralu_runtime.images import latent_image_to_uint8

    pipe, torch_denoiser, torch_cond, runtime = backends
    gh, gw = runtime.grid
    noise = rng_for(11, "initial_noise").standard_normal((1, gh * gw, runtime.channels)).astype(np.float32)
    ort_cond = runtime.text.encode(PROMPT)
    if mode == "baseline":
        sigmas = flux_baseline_sigmas(28, gh * gw)
        tokens = [sample_baseline(d, noise, gh, gw, sigmas, c)
                  for d, c in ((torch_denoiser, torch_cond), (runtime.denoiser, ort_cond))]
    else:
        preset = runtime.preset_for_mode(mode)
        tokens = [ralu_sample(d, noise, gh, gw, preset, c, rng=rng_for(11, "ralu/select"),
                              latent_channels=runtime.channels // 4).tokens
                  for d, c in ((torch_denoiser, torch_cond), (runtime.denoiser, ort_cond))]
    reference = decode_tokens(pipe, tokens[0], gh, gw)[0]
    ours = latent_image_to_uint8(runtime.vae.decode(unpack_latents(tokens[1], gh, gw)))[0]
    assert psnr(ours, reference) >= 40.0
