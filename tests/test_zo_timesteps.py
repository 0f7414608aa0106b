"""Partial Uniform Timestep Sampling for flow matching and the per-step draws (spec/ZO_PERSONALIZATION.md §7,
§10.3, §11.1–11.2)."""

import numpy as np
import pytest

from ralu_edge.errors import UserError
from ralu_edge.tokens import unpack_latents
from ralu_edge.zo.timesteps import (
    NO_PUTS, PutsConfig, draw_step, flow_matching_pair, posterior_latents, sample_indices, sample_sigmas,
    shift_sigmas, sigmas_for_ddpm_timesteps, training_pair, velocity_mse,
)

PIXELS_512, PIXELS_1024 = 512 * 512, 1024 * 1024


def _ks_distance(samples, cdf):
    """Kolmogorov–Smirnov statistic of samples against a continuous CDF."""
    x = np.sort(samples)
    f = cdf(x)
    n = len(x)
    return max(np.max(np.arange(1, n + 1) / n - f), np.max(f - np.arange(n) / n))


def test_snr_matched_sigmas_equal_the_spec():
    # spec §11.2: ᾱ₅₀₀ → 0.618, ᾱ₉₀₀ → 0.893, t = 700 → 0.769; shifted with h = 2: 0.764 and 0.944.
    np.testing.assert_allclose(sigmas_for_ddpm_timesteps(np.array([500, 900, 700])), [0.618, 0.893, 0.769],
                               atol=5e-4)
    assert PutsConfig().sigma_range(PIXELS_512) == pytest.approx((0.618, 0.893), abs=5e-4)
    # The spec prints 0.944 for 0.94348 (rounded up), hence 1e-3 there.
    assert PutsConfig().sigma_range(PIXELS_1024) == pytest.approx((0.764, 0.944), abs=1e-3)


def test_shift_is_monotone_and_fixes_zero_and_one():
    sigmas = np.linspace(0, 1, 101)
    for shift in (0.25, 1.0, 3.0):
        shifted = shift_sigmas(sigmas, shift)
        assert shifted[0] == 0 and shifted[-1] == pytest.approx(1) and np.all(np.diff(shifted) > 0)


@pytest.mark.parametrize("puts,pixels", [
    (PutsConfig(), PIXELS_512), (PutsConfig(), 128 * 128), (PutsConfig(sigma_shift=3.0), PIXELS_512),
    (PutsConfig(sigma_min=0.3, sigma_max=0.7), PIXELS_512), (NO_PUTS, PIXELS_512)])
def test_uniform_puts_samples_lie_in_the_range_and_are_uniform(puts, pixels):
    low, high = puts.sigma_range(pixels)
    sigmas = sample_sigmas(np.random.default_rng(0), 20_000, puts, pixels)
    assert sigmas.dtype == np.float64 and np.all((sigmas >= low) & (sigmas < high))
    assert _ks_distance(sigmas, lambda x: (x - low) / (high - low)) < 1.95 / np.sqrt(len(sigmas))  # KS, α = 0.001


def test_ddpm_equivalent_sampling_keeps_puts_timestep_density():
    puts = PutsConfig(sampling="ddpm_equivalent")
    low, high = puts.sigma_range(PIXELS_1024)
    sigmas = sample_sigmas(np.random.default_rng(1), 20_000, puts, PIXELS_1024)
    assert np.all((sigmas >= low) & (sigmas < high))
    # Pulled back through the (monotone) map, the samples are uniform in t ∈ [500, 900).
    grid_t = np.linspace(500, 900, 4001)
    grid_sigma = shift_sigmas(sigmas_for_ddpm_timesteps(grid_t), puts.shift_for(PIXELS_1024))
    timesteps = np.interp(sigmas, grid_sigma, grid_t)
    assert _ks_distance(timesteps, lambda t: (t - 500) / 400) < 1.95 / np.sqrt(len(timesteps))


@pytest.mark.parametrize("kwargs", [
    dict(t_range=(900, 500)), dict(t_range=(0, 1200)), dict(sigma_min=0.5), dict(sigma_min=0.8, sigma_max=0.2),
    dict(sigma_min=0.2, sigma_max=0.8, sampling="ddpm_equivalent"), dict(sampling="logit_normal"),
    dict(sigma_shift=0.0)])
def test_invalid_puts_settings_are_user_errors(kwargs):
    with pytest.raises(UserError):
        PutsConfig(**kwargs)


def test_puts_config_round_trips_through_a_dict():
    puts = PutsConfig(t_range=(400, 800), sigma_shift=1.5, sampling="ddpm_equivalent")
    assert PutsConfig.from_dict(puts.to_dict()) == puts


def test_every_epoch_shows_every_image_once_for_any_batch_size():
    for batch in (1, 2, 3):
        seen = np.concatenate([sample_indices(9, step, 5, batch) for step in range(1, 1 + 20 // batch * 2)])
        epochs = seen[: len(seen) // 5 * 5].reshape(-1, 5)
        assert all(sorted(epoch) == list(range(5)) for epoch in epochs)
    a = np.concatenate([sample_indices(9, s, 5) for s in range(1, 11)])
    assert not np.array_equal(a[:5], a[5:])  # a fresh permutation per epoch (with this seed)


def test_step_draws_depend_only_on_seed_and_step():
    kwargs = dict(num_images=4, latent_shape=(4, 8, 8), puts=PutsConfig(), image_pixels=128 * 128, batch_size=2)
    a, b, c = draw_step(1, 7, **kwargs), draw_step(1, 7, **kwargs), draw_step(1, 8, **kwargs)
    for name in ("image_indices", "flips", "sigmas", "noise", "posterior_noise"):
        assert np.array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.noise, c.noise) and not np.array_equal(a.sigmas, c.sigmas)
    assert a.noise.shape == (2, 4, 8, 8) and a.noise.dtype == np.float32 and a.flips.dtype == bool


def test_flow_pair_interpolates_latent_and_noise_with_velocity_target():
    rng = np.random.default_rng(0)
    x0, noise = rng.standard_normal((3, 5, 4)).astype(np.float32), rng.standard_normal((3, 5, 4)).astype(np.float32)
    x_sigma, target = flow_matching_pair(x0, noise, np.array([0.0, 0.5, 1.0]))
    np.testing.assert_array_equal(x_sigma[0], x0[0])
    np.testing.assert_array_equal(x_sigma[2], noise[2])
    np.testing.assert_allclose(x_sigma[1], 0.5 * (x0[1] + noise[1]), rtol=1e-6)
    np.testing.assert_allclose(target, noise - x0)
    # An exact velocity takes x_σ back to x₀ in one Euler step: x₀ = x_σ − σ·v (spec §11.1).
    np.testing.assert_allclose(x_sigma - np.array([0.0, 0.5, 1.0])[:, None, None] * target, x0, atol=1e-6)


def test_posterior_latents_sample_then_normalise():
    mean, logvar = np.full((1, 2), 0.5, np.float32), np.full((1, 2), np.log(0.25), np.float32)
    z = posterior_latents(mean, logvar, np.array([[1.0, -2.0]], np.float32), shift_factor=0.1, scaling_factor=2.0)
    np.testing.assert_allclose(z, [[(0.5 + 0.5 - 0.1) * 2, (0.5 - 1.0 - 0.1) * 2]], rtol=1e-6)


def _moments(num_images=3, channels=4, size=8):
    """Raw VAE moments [N, 2 (flip), C, h, w] whose values name their image and flip: mean = 10·i + flip."""
    means = np.zeros((num_images, 2, channels, size, size), np.float32)
    means += (10 * np.arange(num_images))[:, None, None, None, None] + np.arange(2)[None, :, None, None, None]
    return means, np.full_like(means, np.log(0.04))


def test_training_pair_takes_each_samples_image_and_flip_and_packs_the_flow_pair():
    means, logvars = _moments()
    draw = draw_step(3, 2, num_images=3, latent_shape=means.shape[2:], puts=PutsConfig(), image_pixels=128 * 128,
                     batch_size=4)
    pair = training_pair(draw, means, logvars, shift_factor=0.5, scaling_factor=2.0, sample_posterior=False)
    assert pair.x0.shape == pair.x_sigma.shape == pair.target.shape == (4, 16, 16)
    clean = unpack_latents(pair.x0, 4, 4)
    for b in range(4):  # the posterior mean of image i, flip f, normalised: (10·i + f − 0.5)·2
        np.testing.assert_array_equal(clean[b], (10 * draw.image_indices[b] + int(draw.flips[b]) - 0.5) * 2.0)
    noise = unpack_latents(pair.target, 4, 4) + clean
    np.testing.assert_allclose(noise, draw.noise, atol=1e-5)
    sigmas = draw.sigmas.astype(np.float32)[:, None, None]
    np.testing.assert_allclose(pair.x_sigma, (1 - sigmas) * pair.x0 + sigmas * (pair.target + pair.x0), atol=1e-5)


def test_training_pair_samples_the_posterior_with_the_draws_noise_unless_told_to_use_the_mean():
    means, logvars = _moments()
    draw = draw_step(1, 1, num_images=3, latent_shape=means.shape[2:], puts=PutsConfig(), image_pixels=128 * 128)
    sampled = training_pair(draw, means, logvars, shift_factor=0.0, scaling_factor=1.0)
    mean = training_pair(draw, means, logvars, shift_factor=0.0, scaling_factor=1.0, sample_posterior=False)
    np.testing.assert_allclose(unpack_latents(sampled.x0 - mean.x0, 4, 4), 0.2 * draw.posterior_noise, atol=1e-5)


def test_velocity_mse_is_the_float64_mean_squared_difference():
    velocity, target = np.array([[1.0, 2.0]], np.float32), np.array([[0.0, 4.0]], np.float32)
    assert velocity_mse(velocity, target) == 2.5
