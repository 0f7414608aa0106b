"""Temporal caching over the seam (ralu_edge.cache, issue 16): the `--cache` syntax, the pure decisions, and the
wrapper around a denoiser in the baseline and across RALU's stage transitions. numpy only (runs torch-free).

The denoiser here is an analytic velocity field (smooth in x and σ), not a model: what is tested is the
bookkeeping around any denoiser, which does not depend on what the model computes."""

import numpy as np
import pytest

from ralu_edge import presets
from ralu_edge.cache import (
    CacheConfig, CachedDenoiser, SignalRecorder, fit_rescale, relative_l1, rescaled, taylor_forecast,
    teacache_runs,
)
from ralu_edge.errors import UserError
from ralu_edge.rng import rng_for
from ralu_edge.sampler import ralu_sample, sample_baseline
from ralu_edge.schedules import flux_baseline_sigmas
from ralu_edge.seam import Conditioning

GRID = (16, 16)
CHANNELS = 16
COEFFICIENTS = (-3.4, 6.7, 0.02)  # the shape of the built-in model's fit (docs/caching.md)


class AnalyticField:
    """v(x, σ) = tanh(x)·(0.5 + σ) + 0.1·σ², counting its calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, tokens, positions, sigmas, cond):
        self.calls += 1
        s = sigmas.astype(np.float32)[:, None, None]
        return (np.tanh(tokens) * (0.5 + s) + 0.1 * s * s).astype(np.float32)


def _cond():
    return Conditioning(np.zeros((1, 4, 8), np.float32), np.zeros((1, 8), np.float32))


def _noise(seed=0):
    return rng_for(seed, "test-cache").standard_normal((1, GRID[0] * GRID[1], CHANNELS)).astype(np.float32)


@pytest.mark.parametrize("text, method, threshold, order, interval", [
    ("none", "none", 0.3, 1, 2), ("teacache", "teacache", 0.3, 1, 2), ("teacache:0.15", "teacache", 0.15, 1, 2),
    ("taylorseer", "taylorseer", 0.3, 1, 2), ("taylorseer:2,3", "taylorseer", 0.3, 2, 3),
    ("taylorseer:0", "taylorseer", 0.3, 0, 2)])
def test_cache_text_parses_and_its_label_parses_back_to_the_same_config(text, method, threshold, order, interval):
    config = CacheConfig.parse(text)
    assert (config.method, config.threshold, config.order, config.interval) == (method, threshold, order, interval)
    assert CacheConfig.parse(config.label) == config


@pytest.mark.parametrize("text", ["", "fastcache", "teacache:", "teacache:abc", "teacache:-0.1", "teacache:nan",
                                  "taylorseer:1,0", "taylorseer:9,2", "taylorseer:a,b", "taylorseer:1,2,3",
                                  "none:1"])
def test_a_malformed_cache_is_one_user_error_that_shows_the_syntax(text):
    with pytest.raises(UserError, match=r"e\.g\."):
        CacheConfig.parse(text)


def test_teacache_accumulates_until_the_threshold_then_runs_and_restarts():
    assert teacache_runs(0.0, 0.1, 0.3) == (False, 0.1)
    assert teacache_runs(0.25, 0.1, 0.3) == (True, 0.0)
    assert teacache_runs(0.0, 0.3, 0.3) == (True, 0.0)


def test_rescaled_change_is_the_fitted_plane_floored_at_zero():
    assert rescaled(0.1, 0.05, (2.0, 4.0, 0.01)) == pytest.approx(0.41)
    assert rescaled(1.0, 0.0, (-1.0, 0.0, 0.0)) == 0.0


def test_the_rescale_fit_recovers_a_plane():
    rng = rng_for(0, "test-cache-fit")
    signals, steps = rng.uniform(0, 0.3, 40), rng.uniform(0, 0.1, 40)
    changes = 0.5 * signals + 3.0 * steps + 0.02
    assert fit_rescale(signals, steps, changes) == pytest.approx((0.5, 3.0, 0.02), abs=1e-9)
    with pytest.raises(ValueError):
        fit_rescale(signals[:3], steps[:3], changes[:3])


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_the_forecast_is_exact_for_a_polynomial_in_sigma_of_its_order(degree):
    rng = rng_for(degree, "test-cache-forecast")
    coefficients = rng.standard_normal((degree + 1, 5))
    known = [0.9, 0.75, 0.62, 0.5][: degree + 1]
    values = [np.polyval(coefficients, s).astype(np.float32) for s in known]
    forecast = taylor_forecast(known, values, 0.41)
    np.testing.assert_allclose(forecast, np.polyval(coefficients, 0.41), rtol=1e-4, atol=1e-5)


def test_relative_l1_is_the_mean_absolute_change_over_the_mean_absolute_previous():
    assert relative_l1(np.array([1.0, -3.0]), np.array([2.0, -2.0])) == pytest.approx(0.5)
    assert relative_l1(np.zeros(3), np.zeros(3)) == 0.0


def test_no_cache_runs_every_call_and_changes_nothing():
    sigmas = flux_baseline_sigmas(12, GRID[0] * GRID[1])
    plain, inner = AnalyticField(), AnalyticField()
    cached = CachedDenoiser(inner, CacheConfig("none"))
    expected = sample_baseline(plain, _noise(), *GRID, sigmas, _cond())
    np.testing.assert_array_equal(sample_baseline(cached, _noise(), *GRID, sigmas, _cond()), expected)
    assert cached.stats().calls_made == inner.calls == 12 and cached.stats().calls_skipped == 0


def test_taylorseer_runs_every_interval_and_reuses_or_forecasts_in_between():
    sigmas = flux_baseline_sigmas(10, GRID[0] * GRID[1])
    for order in (0, 1, 2):
        inner = AnalyticField()
        cached = CachedDenoiser(inner, CacheConfig("taylorseer", order=order, interval=3))
        sample_baseline(cached, _noise(), *GRID, sigmas, _cond())
        assert cached.stats().ran == tuple(i % 3 == 0 for i in range(10))
        assert inner.calls == 4


def test_a_higher_order_forecast_tracks_the_uncached_run_more_closely():
    sigmas = flux_baseline_sigmas(20, GRID[0] * GRID[1])
    exact = sample_baseline(AnalyticField(), _noise(), *GRID, sigmas, _cond())
    errors = [relative_l1(sample_baseline(CachedDenoiser(AnalyticField(), CacheConfig("taylorseer", order=o, interval=2)),
                                          _noise(), *GRID, sigmas, _cond()), exact) for o in (0, 1)]
    assert errors[1] < errors[0]


def test_teacache_skips_more_as_the_threshold_rises_and_always_runs_the_first_call():
    sigmas = flux_baseline_sigmas(28, GRID[0] * GRID[1])
    made = []
    for threshold in (0.05, 0.2, 0.5, 1.0):
        cached = CachedDenoiser(AnalyticField(), CacheConfig("teacache", threshold=threshold), COEFFICIENTS)
        sample_baseline(cached, _noise(), *GRID, sigmas, _cond())
        stats = cached.stats()
        assert stats.ran[0] and stats.calls_made + stats.calls_skipped == 28
        made.append(stats.calls_made)
    assert made == sorted(made, reverse=True) and made[-1] < made[0]


def test_a_skipped_teacache_call_returns_the_last_computed_velocity():
    sigmas = flux_baseline_sigmas(28, GRID[0] * GRID[1])
    outputs = []

    class Watch:
        def __init__(self, inner):
            self.inner = inner

        def __call__(self, *args):
            outputs.append(self.inner(*args))
            return outputs[-1]

    inner = AnalyticField()
    cached = Watch(CachedDenoiser(inner, CacheConfig("teacache", threshold=0.5), COEFFICIENTS))
    sample_baseline(cached, _noise(), *GRID, sigmas, _cond())
    ran = cached.inner.stats().ran
    assert not all(ran)
    for i in range(1, len(ran)):
        if not ran[i]:
            np.testing.assert_array_equal(outputs[i], outputs[i - 1])


@pytest.mark.parametrize("preset", ["flux-4x", "flux-7x"])
def test_every_ralu_stage_starts_with_a_computed_call(preset):
    """A RALU transition changes the token set and jumps σ up: the cache must start over, so with an interval no
    stage reaches, exactly one call per stage runs: each stage's first."""
    p = presets.get(preset)
    inner = AnalyticField()
    cached = CachedDenoiser(inner, CacheConfig("taylorseer", order=1, interval=100))
    ralu_sample(cached, _noise(), *GRID, p, _cond(), rng=rng_for(0, "ralu/select"), latent_channels=CHANNELS // 4)
    firsts = np.cumsum((0,) + p.N[:2])
    assert inner.calls == 3
    assert [i for i, ran in enumerate(cached.stats().ran) if ran] == list(firsts)


def test_the_no_renoise_ablation_still_restarts_the_cache_at_each_stage():
    """Without renoising σ continues across a transition, but the token set changes, and that alone restarts."""
    p = presets.get("flux-4x")
    inner = AnalyticField()
    cached = CachedDenoiser(inner, CacheConfig("taylorseer", order=1, interval=100))
    ralu_sample(cached, _noise(), *GRID, p, _cond(), rng=rng_for(0, "ralu/select"), latent_channels=CHANNELS // 4,
                renoise=False)
    assert inner.calls == 3


def test_a_second_image_through_the_same_wrapper_starts_over():
    sigmas = flux_baseline_sigmas(6, GRID[0] * GRID[1])
    inner = AnalyticField()
    cached = CachedDenoiser(inner, CacheConfig("taylorseer", order=1, interval=100))
    sample_baseline(cached, _noise(0), *GRID, sigmas, _cond())
    sample_baseline(cached, _noise(1), *GRID, sigmas, _cond())
    assert inner.calls == 2


def test_the_signal_recorder_records_one_sample_per_call_but_each_stages_first():
    p = presets.get("flux-7x")
    recorder = SignalRecorder(AnalyticField())
    ralu_sample(recorder, _noise(), *GRID, p, _cond(), rng=rng_for(0, "ralu/select"), latent_channels=CHANNELS // 4)
    assert len(recorder.signals) == len(recorder.sigma_steps) == len(recorder.changes) == p.nfe - 3
    assert all(step > 0 for step in recorder.sigma_steps)


def test_teacache_without_coefficients_is_refused():
    with pytest.raises(ValueError, match="coefficients"):
        CachedDenoiser(AnalyticField(), CacheConfig("teacache"))
