"""Samplers over the denoiser seam (spec/RALU.md §2, §7.3, §9.6)."""

import numpy as np
import pytest

from ralu_edge import presets, sampler, schedules
from ralu_edge.errors import UserError
from ralu_edge.seam import Conditioning
from ralu_edge.tokens import grid_positions

COND = Conditioning(text_states=np.zeros((1, 3, 8), np.float32), pooled=np.zeros((1, 8), np.float32))
CHANNELS = 16  # packed: 4 latent channels × 2×2, as the built-in model


def _target(positions, channels=CHANNELS):
    """A clean image x₀ as a function of position ids: [1, L, channels] float32."""
    rows, cols = positions[:, 1:2], positions[:, 2:3]
    return np.sin(0.37 * rows + 0.11 * cols * np.arange(1, channels + 1))[None].astype(np.float32)


class PointMassDenoiser:
    """The exact velocity for data concentrated at x₀(positions): v = (x − x₀)/σ. Records every call."""

    def __init__(self):
        self.calls = []

    def __call__(self, tokens, positions, sigmas, cond):
        assert tokens.dtype == np.float32 and sigmas.dtype == np.float32 and sigmas.shape == (tokens.shape[0],)
        assert positions.shape == (tokens.shape[1], 3) and positions.dtype == np.float64
        self.calls.append((tokens.shape[1], float(sigmas[0]), positions.copy()))
        return (tokens - _target(positions, tokens.shape[2])) / sigmas[:, None, None]


def test_euler_with_a_constant_velocity_lands_on_the_straight_path_at_every_step():
    rng = np.random.default_rng(0)
    x0, noise = rng.standard_normal((2, 1, 10, 4)).astype(np.float32)
    sigmas = schedules.static_shift_sigmas(7, 3.0)
    seen = []

    def on_step(info):
        seen.append(info)

    final, velocity = sampler.euler(lambda x, p, s, c: noise - x0, noise, np.zeros((10, 3)), sigmas, COND,
                                    on_step=on_step)
    np.testing.assert_allclose(final, x0, atol=1e-5)
    np.testing.assert_allclose(velocity, noise - x0)
    assert [i.step for i in seen] == list(range(7))
    assert [i.sigma for i in seen] == pytest.approx(list(sigmas[:-1]))
    assert seen[-1].sigma_next == 0.0 and seen[0].num_tokens == 10 and seen[0].stage == 0


def test_euler_is_exact_in_one_step_for_the_point_mass_velocity():
    rng = np.random.default_rng(1)
    noise = rng.standard_normal((1, 12, CHANNELS)).astype(np.float32)
    positions = grid_positions(3, 4)
    final, _ = sampler.euler(PointMassDenoiser(), noise, positions, np.array([1.0, 0.0]), COND)
    np.testing.assert_allclose(final, _target(positions), atol=1e-6)


def test_euler_stops_at_the_last_sigma_of_a_partial_stage():
    rng = np.random.default_rng(2)
    x0, noise = rng.standard_normal((2, 1, 6, 2)).astype(np.float32)
    sigmas = schedules.stage_sigmas(0.0, 0.3, 5.0, 4)  # ends at sigma = 0.7
    final, _ = sampler.euler(lambda x, p, s, c: noise - x0, noise, np.zeros((6, 3)), sigmas, COND)
    np.testing.assert_allclose(final, 0.3 * x0 + 0.7 * noise, atol=1e-5)


def test_baseline_sampler_reaches_the_target_in_raster_order():
    noise = np.random.default_rng(3).standard_normal((1, 32, CHANNELS)).astype(np.float32)
    denoiser = PointMassDenoiser()
    out = sampler.sample_baseline(denoiser, noise, 4, 8, schedules.flux_baseline_sigmas(6, 32), COND)
    np.testing.assert_allclose(out, _target(grid_positions(4, 8)), atol=1e-5)
    assert len(denoiser.calls) == 6


@pytest.mark.parametrize("name", ["flux-4x", "flux-7x", "sd3-2x"])
def test_ralu_runs_end_to_end_with_full_res_raster_output_and_the_preset_nfe(name):
    preset = presets.get(name)
    grid_h, grid_w = 16, 16
    noise = np.random.default_rng(4).standard_normal((1, grid_h * grid_w, CHANNELS)).astype(np.float32)
    denoiser, stages, steps = PointMassDenoiser(), [], []
    result = sampler.ralu_sample(denoiser, noise, grid_h, grid_w, preset, COND, rng=np.random.default_rng(5),
                                 latent_channels=4, on_stage=stages.append, on_step=steps.append)
    # The last step (σ → 0) of the point-mass velocity lands exactly on x₀ at the stage-3 positions, so
    # the output is x₀ of the full-res grid only if tokens and ids end up in raster order together.
    np.testing.assert_allclose(result.tokens, _target(grid_positions(grid_h, grid_w)), atol=1e-4)
    lengths = preset.stage_lengths(grid_h, grid_w)
    assert [length for length, _, _ in denoiser.calls] == [
        length for length, n in zip(lengths, preset.N) for _ in range(n)]
    assert len(denoiser.calls) == sampler.num_function_evals(preset) == len(steps)
    np.testing.assert_array_equal(denoiser.calls[-1][2], grid_positions(grid_h, grid_w))
    assert [s.stage for s in stages] == [1, 2, 3]
    assert [s.num_tokens for s in stages] == list(lengths)
    assert [s.num_steps for s in stages] == list(preset.N)
    assert all(s.seconds >= 0 and s.transition_seconds >= 0 for s in stages)
    assert result.selected.shape == (preset.num_selected(grid_h, grid_w),)
    called_sigmas = [sigma for _, sigma, _ in denoiser.calls]
    expected = [x for stage in preset.stage_sigmas for x in stage[:-1]]
    assert called_sigmas == pytest.approx(expected, abs=1e-7)


def _grey_decode(latents):
    """A stand-in VAE with factor 8: channel 0, nearest-upsampled, as a grey RGB image in [−1, 1]."""
    grey = np.repeat(np.repeat(np.tanh(latents[:, :1]), 8, axis=2), 8, axis=3)
    return np.repeat(grey, 3, axis=1)


@pytest.mark.parametrize("proxy", ["latent_grad", "canny"])
def test_ralu_selects_the_edge_region_of_the_stage1_estimate(proxy):
    def edgy_target(positions, channels):
        values = np.zeros((1, len(positions), channels), np.float32)
        values[0, (positions[:, 1] == 2) & (positions[:, 2] == 5)] = 8.0  # low-res token (2, 5) only
        return values

    def denoiser(tokens, positions, sigmas, cond):
        return (tokens - edgy_target(positions, tokens.shape[2])) / sigmas[:, None, None]

    noise = np.zeros((1, 256, CHANNELS), np.float32)
    preset = presets.RaluPreset("t", (2, 2, 2), (0.3, 0.45, 1.0), (3.0, 3.0, 3.0), 6.0, 1 / 64)
    result = sampler.ralu_sample(denoiser, noise, 16, 16, preset, COND, rng=np.random.default_rng(6),
                                 latent_channels=4, edge_proxy=proxy, decode=_grey_decode)
    assert list(result.selected) == [2 * 8 + 5]


def test_ralu_is_deterministic_for_a_fixed_generator_and_varies_with_it():
    preset = presets.get("flux-7x")
    noise = np.random.default_rng(7).standard_normal((1, 64, CHANNELS)).astype(np.float32)

    def blurry(tokens, positions, sigmas, cond):  # not a point mass: the output depends on the renoise draw
        return 0.5 * tokens

    run = lambda seed: sampler.ralu_sample(blurry, noise, 8, 8, preset, COND,  # noqa: E731
                                           rng=np.random.default_rng(seed), latent_channels=4).tokens
    np.testing.assert_array_equal(run(1), run(1))
    assert not np.array_equal(run(1), run(2))


def test_without_renoising_stages_continue_where_the_previous_one_ended():
    preset = presets.get("flux-4x")
    sigmas, transitions = sampler.ralu_stage_plan(preset, renoise=False)
    assert sigmas[1][0] == pytest.approx(sigmas[0][-1]) and sigmas[2][0] == pytest.approx(sigmas[1][-1])
    assert all(t.a == 1.0 and t.b == 0.0 for t in transitions)
    denoiser = PointMassDenoiser()
    noise = np.random.default_rng(8).standard_normal((1, 64, CHANNELS)).astype(np.float32)
    out = sampler.ralu_sample(denoiser, noise, 8, 8, preset, COND, rng=np.random.default_rng(9),
                              latent_channels=4, renoise=False)
    assert len(denoiser.calls) == 18 and out.tokens.shape == (1, 64, CHANNELS)


def test_c_and_r_overrides_change_only_the_noise_correlation_and_the_selection():
    preset = presets.get("flux-4x")
    noise = np.random.default_rng(10).standard_normal((1, 256, CHANNELS)).astype(np.float32)
    denoiser = PointMassDenoiser()
    result = sampler.ralu_sample(denoiser, noise, 16, 16, preset, COND, rng=np.random.default_rng(11),
                                 latent_channels=4, c_override=0.0, r_override=0.5)
    assert result.selected.shape == (32,)
    assert denoiser.calls[5][0] == 64 + 3 * 32
    assert denoiser.calls[5][1] == pytest.approx(preset.stage_sigmas[1][0])
    with pytest.raises(UserError):
        sampler.ralu_sample(denoiser, noise, 16, 16, preset, COND, rng=np.random.default_rng(0),
                            latent_channels=4, c_override=0.3)


def test_ralu_rejects_noise_that_does_not_match_the_grid():
    noise = np.zeros((2, 256, CHANNELS), np.float32)
    with pytest.raises(ValueError, match="one image"):
        sampler.ralu_sample(PointMassDenoiser(), noise, 16, 16, presets.get("flux-4x"), COND,
                            rng=np.random.default_rng(0), latent_channels=4)


def test_token_step_counts_equal_the_worked_example():
    # spec/RALU.md §9.6: 5·64 + 6·121 + 7·256 = 2838 versus 50·256 = 12800.
    assert sampler.image_token_steps(presets.get("flux-4x"), 16, 16) == 2838
    assert sampler.baseline_image_token_steps(50, 16, 16) == 12800
    # spec/RALU.md §10 item 1: 5·1024 + 6·1945 + 7·4096 at 1024².
    assert sampler.image_token_steps(presets.get("flux-4x"), 64, 64) == 5 * 1024 + 6 * 1945 + 7 * 4096
    assert sampler.image_token_steps(presets.get("flux-4x"), 16, 16, r_override=0.0) == 5 * 64 + 6 * 64 + 7 * 256
