"""The one-sided random-gradient estimator (spec/ZO_PERSONALIZATION.md §4)."""

import numpy as np
import pytest

from ralu_edge.zo.estimator import (
    estimate_gradient, evaluate_losses, fp16_query_points, gradient_normalizer, perturbation_directions,
    query_points, rge_gradient,
)

DIM, N = 6, 2


def _quadratic(dim: int, seed: int):
    """f(θ) = ½θᵀAθ + bᵀθ (A symmetric positive definite) over rows, with its gradient."""
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((dim, dim))
    a, b = q @ q.T / dim + np.eye(dim), rng.standard_normal(dim)

    def loss(rows):
        x = np.asarray(rows, dtype=np.float64)
        return 0.5 * np.einsum("qi,ij,qj->q", x, a, x) + x @ b

    return loss, lambda x: a @ x + b


def test_reference_normalizer_is_39_2_for_n_2_and_768_dimensions():
    assert gradient_normalizer(2, 768, "reference") == pytest.approx(39.2, abs=0.05)  # spec §4 step 3
    assert gradient_normalizer(2, 768, "paper") == 2.0
    assert gradient_normalizer(1, 768, "reference") == pytest.approx(np.sqrt(768.0))


@pytest.mark.parametrize("normalization", ["reference", "paper"])
def test_estimate_times_documented_scale_is_unbiased_on_a_quadratic(normalization):
    loss, grad = _quadratic(DIM, seed=3)
    theta = np.random.default_rng(4).standard_normal(DIM).astype(np.float32)
    mu = 0.1  # large on purpose: for a quadratic the one-sided curvature term μ/2·eᵀAe·e has zero mean
    scale = gradient_normalizer(N, DIM, normalization) / N  # the estimate is (1/n)Σcᵢeᵢ divided by this
    rng = np.random.default_rng(5)
    samples = np.stack([
        estimate_gradient(loss, theta, perturbation_directions(rng, N, DIM), mu, DIM, normalization).gradient * scale
        for _ in range(20_000)
    ])
    mean, stderr = samples.mean(axis=0), samples.std(axis=0) / np.sqrt(len(samples))
    exact = grad(theta.astype(np.float64))
    assert np.all(np.abs(mean - exact) < 5 * stderr), (mean, exact, stderr)


def test_estimate_is_the_directional_slopes_combined_with_the_normalizer():
    directions = np.array([[1.0, 0.0, 2.0], [0.0, -1.0, 1.0]], dtype=np.float32)
    losses = np.array([1.0, 1.003, 0.999])  # c = (3, -1) for μ = 1e-3
    expected = (3 * directions[0] - 1 * directions[1]) / gradient_normalizer(2, 3)
    np.testing.assert_allclose(rge_gradient(losses, directions, 1e-3, 3), expected, rtol=1e-6)


def test_queries_are_theta_and_fresh_perturbations_of_the_master():
    theta = np.random.default_rng(0).standard_normal(5).astype(np.float32)
    directions = perturbation_directions(np.random.default_rng(1), 3, 5)
    queries = query_points(theta, directions, 1e-3)
    assert queries.shape == (4, 5) and queries.dtype == np.float32
    assert np.array_equal(queries[0], theta)  # bit-exact: never add-then-subtract (spec §8)
    np.testing.assert_array_equal(queries[1:], theta + np.float32(1e-3) * directions)


def test_loss_fn_sees_all_queries_at_once_and_read_only():
    seen = []

    def loss(rows):
        seen.append(rows.shape)
        with pytest.raises(ValueError):
            rows[0, 0] = 1.0
        return rows.sum(axis=1)

    estimate_gradient(loss, np.zeros(4, np.float32), np.ones((2, 4), np.float32), 1e-3, 4)
    assert seen == [(3, 4)]


def test_a_loss_fn_returning_the_wrong_count_or_nan_is_reported():
    queries = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match="one loss per row"):
        evaluate_losses(lambda rows: np.zeros(2), queries)
    with pytest.raises(FloatingPointError, match="non-finite"):
        evaluate_losses(lambda rows: np.array([0.0, np.nan, 1.0]), queries)


def test_fp16_queries_drift_like_in_place_add_then_subtract():
    theta = np.array([0.1234, -0.0077, 1.5], dtype=np.float32)
    directions = np.array([[0.3, -1.2, 0.01]], dtype=np.float32)
    queries, drifted = fp16_query_points(theta, directions, 1e-3)
    t16, p16 = theta.astype(np.float16), (directions[0].astype(np.float16) * np.float16(1e-3)).astype(np.float16)
    np.testing.assert_array_equal(queries[0], t16.astype(np.float32))
    np.testing.assert_array_equal(queries[1], (t16 + p16).astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(drifted, ((t16 + p16).astype(np.float16) - p16).astype(np.float16))
