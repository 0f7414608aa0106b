"""The torch reference backend (ralu_export.torch_backend) against diffusers' own FluxPipeline on the built-in
`shapes` model: same noise, same sigmas, same final latent (DESIGN.md: torch vs reference fp32 ~1e-4 relative);
fractional RoPE positions; RALU end to end."""

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from ralu_edge import presets, sampler, schedules  # noqa: E402
from ralu_edge.seam import Conditioning  # noqa: E402
from ralu_edge.tokens import grid_positions  # noqa: E402
from ralu_export import torch_backend as tb  # noqa: E402

SIZE = 128  # the built-in model's resolution: 16×16 packed grid, 16 channels
TEXT_LENGTH = 32
PROMPT = "a small red circle in the top left"


@pytest.fixture(scope="module")
def pipe():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)  # the CI box has 2 shared cores; 2 threads under contention run ~10× slower
    from ralu_export.models import load_flux_pipeline

    return load_flux_pipeline("shapes")


@pytest.fixture(scope="module")
def cond(pipe):
    return tb.encode_prompt(pipe, [PROMPT], max_sequence_length=TEXT_LENGTH)


def _relative_error(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


class CountingDenoiser:
    def __init__(self, inner):
        self.inner, self.lengths = inner, []

    def __call__(self, tokens, positions, sigmas, cond):
        self.lengths.append(tokens.shape[1])
        return self.inner(tokens, positions, sigmas, cond)


def test_initial_noise_is_what_flux_pipeline_draws_for_the_seed(pipe):
    grid_h, grid_w = tb.packed_grid(pipe, SIZE, SIZE)
    expected, _ = pipe.prepare_latents(1, pipe.transformer.config.in_channels // 4, SIZE, SIZE, torch.float32,
                                       "cpu", torch.Generator().manual_seed(7))
    noise = tb.initial_noise(pipe, 7, SIZE, SIZE)
    assert (grid_h, grid_w) == (16, 16) and noise.shape == (1, 256, 16) and noise.dtype == np.float32
    np.testing.assert_array_equal(noise, expected.numpy())


def test_baseline_sampler_through_the_backend_reproduces_flux_pipeline(pipe, cond):
    steps, seed = 4, 3
    grid_h, grid_w = tb.packed_grid(pipe, SIZE, SIZE)
    with torch.inference_mode():
        reference = pipe(PROMPT, num_inference_steps=steps, height=SIZE, width=SIZE,
                         max_sequence_length=TEXT_LENGTH, generator=torch.Generator().manual_seed(seed),
                         output_type="latent").images.numpy()
    sigmas = schedules.flux_baseline_sigmas(steps, grid_h * grid_w)
    np.testing.assert_allclose(sigmas[:-1], pipe.scheduler.sigmas.numpy()[:-1], rtol=1e-6)  # the call just set them
    tokens = sampler.sample_baseline(tb.TorchFluxDenoiser(pipe.transformer), tb.initial_noise(pipe, seed, SIZE, SIZE),
                                     grid_h, grid_w, sigmas, cond)
    assert tokens.shape == reference.shape
    assert _relative_error(tokens, reference) < 1e-4


def test_backend_at_integer_positions_equals_the_transformer_called_directly(pipe, cond):
    rng = np.random.default_rng(0)
    tokens = rng.standard_normal((1, 256, 16)).astype(np.float32)
    positions = grid_positions(16, 16)
    velocity = tb.TorchFluxDenoiser(pipe.transformer)(tokens, positions, np.array([0.6], np.float32), cond)
    with torch.inference_mode():
        direct = pipe.transformer(
            hidden_states=torch.from_numpy(tokens), timestep=torch.tensor([0.6]),
            pooled_projections=torch.from_numpy(cond.pooled), encoder_hidden_states=torch.from_numpy(cond.text_states),
            txt_ids=torch.zeros(TEXT_LENGTH, 3),
            img_ids=pipe._prepare_latent_image_ids(1, 16, 16, "cpu", torch.float32),
            return_dict=False)[0].numpy()
    assert velocity.dtype == np.float32
    np.testing.assert_array_equal(velocity, direct)


def test_fractional_positions_reach_rope_unrounded(pipe, cond):
    """RoPE attention sees only position differences, so shifting image *and* text ids by ½ changes nothing,
    while shifting the image ids alone by ½ does; ids rounded or truncated anywhere would break one of the two."""
    rng = np.random.default_rng(1)
    tokens = rng.standard_normal((1, 64, 16)).astype(np.float32)
    positions = grid_positions(8, 8)
    sigmas = np.array([0.5], np.float32)
    denoiser = tb.TorchFluxDenoiser(pipe.transformer)
    half = np.full((TEXT_LENGTH, 3), 0.5)
    shifted_cond = Conditioning(cond.text_states, cond.pooled, cond.guidance, text_positions=half)
    at_integers = denoiser(tokens, positions, sigmas, cond)
    both_shifted = denoiser(tokens, positions + 0.5, sigmas, shifted_cond)
    image_shifted = denoiser(tokens, positions + 0.5, sigmas, cond)
    assert _relative_error(both_shifted, at_integers) < 1e-4
    assert _relative_error(image_shifted, at_integers) > 1e-3


def test_batched_call_matches_single_calls(pipe):
    two = tb.encode_prompt(pipe, [PROMPT, "a large blue square at the bottom"], max_sequence_length=TEXT_LENGTH)
    tokens = np.random.default_rng(2).standard_normal((2, 64, 16)).astype(np.float32)
    positions, sigmas = grid_positions(8, 8), np.array([0.9, 0.3], np.float32)
    denoiser = tb.TorchFluxDenoiser(pipe.transformer)
    batched = denoiser(tokens, positions, sigmas, two)
    for i in range(2):
        one = Conditioning(two.text_states[i:i + 1], two.pooled[i:i + 1], None, two.text_positions)
        single = denoiser(tokens[i:i + 1], positions, sigmas[i:i + 1], one)
        assert _relative_error(batched[i:i + 1], single) < 1e-4


def test_mismatched_dtype_is_refused(pipe):
    with pytest.raises(ValueError, match="transformer.to"):
        tb.TorchFluxDenoiser(pipe.transformer, dtype=torch.bfloat16)


@pytest.mark.parametrize("edge_proxy", ["latent_grad", "canny"])
def test_ralu_flux_4x_runs_end_to_end_through_the_backend(pipe, cond, edge_proxy):
    preset = presets.get("flux-4x")
    grid_h, grid_w = tb.packed_grid(pipe, SIZE, SIZE)
    denoiser = CountingDenoiser(tb.TorchFluxDenoiser(pipe.transformer))
    decodes = []

    def decode(latents):
        decodes.append(latents.shape)
        return tb.vae_decode_callable(pipe)(latents)

    result = sampler.ralu_sample(denoiser, tb.initial_noise(pipe, 0, SIZE, SIZE), grid_h, grid_w, preset, cond,
                                 rng=np.random.default_rng(0), latent_channels=4, edge_proxy=edge_proxy,
                                 decode=decode if edge_proxy == "canny" else None)
    lengths = preset.stage_lengths(grid_h, grid_w)
    assert len(denoiser.lengths) == preset.nfe == 18
    assert denoiser.lengths == [lengths[0]] * 5 + [lengths[1]] * 6 + [lengths[2]] * 7
    assert decodes == ([(1, 4, 16, 16)] if edge_proxy == "canny" else [])
    image = tb.decode_tokens(pipe, result.tokens, grid_h, grid_w)
    assert image.shape == (1, SIZE, SIZE, 3) and image.dtype == np.uint8
    assert np.isfinite(result.tokens).all() and image.std() > 1.0


def test_a_guidance_distilled_transformer_without_a_guidance_takes_the_flux_default():
    """One behaviour on every engine (ralu_edge.feeds): a conditioning without a guidance means
    FLUX_DEFAULT_GUIDANCE for a guidance-embedded transformer, as ORT and ExecuTorch always did."""
    from diffusers import FluxTransformer2DModel

    from ralu_edge.feeds import FLUX_DEFAULT_GUIDANCE

    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
                                         num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=24,
                                         guidance_embeds=True, axes_dims_rope=(4, 6, 6)).eval()
    rng = np.random.default_rng(4)
    tokens, positions, sigmas = rng.standard_normal((2, 16, 16)).astype(np.float32), grid_positions(4, 4), \
        np.array([0.7, 0.4], np.float32)
    text, pooled = rng.standard_normal((2, 5, 32)).astype(np.float32), rng.standard_normal((2, 24)).astype(np.float32)
    denoiser = tb.TorchFluxDenoiser(transformer)
    unset = denoiser(tokens, positions, sigmas, Conditioning(text, pooled))
    default = denoiser(tokens, positions, sigmas, Conditioning(text, pooled, np.full(2, FLUX_DEFAULT_GUIDANCE)))
    other = denoiser(tokens, positions, sigmas, Conditioning(text, pooled, np.full(2, 1.0)))
    np.testing.assert_array_equal(unset, default)
    assert np.abs(other - unset).max() > 1e-6
