"""Correlated renoising (spec/RALU.md §7.1–7.2)."""

import numpy as np
import pytest

from ralu_edge import presets
from ralu_edge.renoise import correlated_noise, correlation_alpha, renoise, tweedie_x0
from ralu_edge.tokens import assemble_stage2, consecutive_groups, grid_positions

NUM_GROUPS, CHANNELS = 2000, 32  # 64 000 four-vectors per covariance estimate


def _group_covariance(noise, groups):
    """Empirical 4×4 covariance over all groups, batch items and channels; noise [B, L, C]."""
    samples = noise[:, groups].transpose(0, 1, 3, 2).reshape(-1, 4).astype(np.float64)  # [B·G·C, 4]
    return samples.T @ samples / len(samples), len(samples)


@pytest.mark.parametrize("c", [0.0, 0.0251, 0.0586, 0.25])
def test_grouped_noise_has_covariance_identity_minus_c_ones(c):
    rng = np.random.default_rng(7)
    groups = consecutive_groups(10, NUM_GROUPS)
    noise = correlated_noise((1, 10 + 4 * NUM_GROUPS, CHANNELS), groups, c, rng)
    assert noise.dtype == np.float32
    covariance, n = _group_covariance(noise, groups)
    bound = 5.0 * np.sqrt(2.0 / n)  # ≈ 5 standard errors of a unit-variance (co)variance estimate
    np.testing.assert_allclose(covariance, np.eye(4) - c * np.ones((4, 4)), atol=bound)


def test_ungrouped_tokens_get_independent_unit_noise():
    noise = correlated_noise((2, 4000, 16), consecutive_groups(0, 10), 0.2, np.random.default_rng(8))
    free = noise[:, 40:].reshape(-1).astype(np.float64)
    assert abs(free.mean()) < 5 / np.sqrt(free.size)
    assert abs(free.var() - 1.0) < 5 * np.sqrt(2.0 / free.size)
    neighbours = np.corrcoef(noise[0, 40:-1].ravel(), noise[0, 41:].ravel())[0, 1]
    assert abs(neighbours) < 5 / np.sqrt(noise[0, 41:].size)


def test_alpha_values_equal_the_spec():
    # The spec's α come from its rounded c (sd3-2x: 0.1251 vs 0.12495 from Z = 4.132), hence 5e-4.
    for name, alpha in [("flux-4x", 0.0514), ("flux-5x", 0.0360), ("flux-7x", 0.0524),
                        ("sd3-2x", 0.1251), ("sd3-3x", 0.0524)]:
        assert correlation_alpha(presets.get(name).c) == pytest.approx(alpha, abs=5e-4)


def test_alpha_rejects_c_beyond_one_quarter():
    with pytest.raises(ValueError):
        correlation_alpha(0.3)


@pytest.mark.parametrize("name", ["flux-4x", "sd3-2x"])
def test_renoised_duplicated_tokens_have_covariance_b_squared_identity_and_mean_s_x1(name):
    # spec/RALU.md §7.1: x_e = e·x₁ + (1−e)·ε on the low-res grid; duplicate; a·x + b·z has mean s·x₁ and
    # covariance b²I within every group of 4 children.
    preset = presets.get(name)
    end, a, b, s2 = preset.e[0], preset.a[0], preset.b[0], preset.s[1]
    rng = np.random.default_rng(9)
    x1 = 0.7
    low = (end * x1 + (1.0 - end) * rng.standard_normal((1, NUM_GROUPS, CHANNELS))).astype(np.float32)
    positions = grid_positions(NUM_GROUPS // 50, 50)
    x2, _, groups = assemble_stage2(low, positions, np.arange(NUM_GROUPS))
    out = renoise(x2, correlated_noise(x2.shape, groups, preset.c, rng), a, b)
    centred = out - s2 * x1
    n = NUM_GROUPS * CHANNELS
    assert abs(float(out.mean()) - s2 * x1) < 5 * b / np.sqrt(n)
    covariance, _ = _group_covariance(centred, groups)
    np.testing.assert_allclose(covariance, b**2 * np.eye(4), atol=5.0 * b**2 * np.sqrt(2.0 / n))


def test_tweedie_estimate_recovers_x0_on_the_straight_path():
    rng = np.random.default_rng(10)
    x0, eps = rng.standard_normal((2, 1, 5, 4)).astype(np.float32)
    sigma = 0.37
    x = (1 - sigma) * x0 + sigma * eps
    np.testing.assert_allclose(tweedie_x0(x, eps - x0, sigma), x0, atol=1e-6)
