"""Subspace Gradient (spec/ZO_PERSONALIZATION.md §6, Algorithm Z3): seeded property cases."""

import numpy as np
import pytest

from ralu_edge.zo.subspace import low_variance_directions, project_out, push_history, standardize_columns

CASES = [(seed, tau, dim, rank) for seed, (tau, dim, rank) in enumerate(
    [(16, 40, 3), (16, 40, 15), (32, 100, 6), (8, 5, 2), (12, 64, 11)])]


def _history(seed, tau, dim, rank):
    """τ iterates moving in a `rank`-dimensional affine subspace with decaying variances, plus tiny noise."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((dim, rank)))[0].T  # [rank, dim]
    coeffs = rng.standard_normal((tau, rank)) * (3.0 ** -np.arange(rank))
    return (rng.standard_normal(dim) + coeffs @ basis + 1e-4 * rng.standard_normal((tau, dim))).astype(np.float32)


def _span_residual(vectors, rows):
    """Largest norm of the parts of `vectors` outside the row span of `rows`."""
    q = np.linalg.qr(np.asarray(rows, np.float64).T)[0]
    vectors = np.asarray(vectors, np.float64)
    return float(np.linalg.norm(vectors - (vectors @ q) @ q.T, axis=-1).max(initial=0.0))


@pytest.mark.parametrize("seed,tau,dim,rank", CASES)
@pytest.mark.parametrize("nu", [1e-1, 1e-3])
def test_projected_estimate_is_orthogonal_to_p_and_only_loses_its_p_component(seed, tau, dim, rank, nu):
    proj = low_variance_directions(_history(seed, tau, dim, rank), nu)
    assert proj.dtype == np.float32 and proj.shape[1] == dim and proj.shape[0] < min(tau, dim)
    np.testing.assert_allclose(proj @ proj.T, np.eye(len(proj)), atol=1e-5)
    g = np.random.default_rng(100 + seed).standard_normal(dim)
    projected = project_out(g, proj)
    assert np.abs(proj.astype(np.float64) @ projected).max() < 1e-5 * np.linalg.norm(g)
    assert _span_residual(g - projected, proj) < 1e-5 * np.linalg.norm(g)  # removed part lies in span(P)
    np.testing.assert_allclose(project_out(projected, proj), projected, atol=1e-5 * np.linalg.norm(g))


@pytest.mark.parametrize("seed,tau,dim,rank", CASES)
def test_removed_directions_come_from_the_history_span_plus_at_most_one_null_direction(seed, tau, dim, rank):
    history = _history(seed, tau, dim, rank)
    proj = low_variance_directions(history, 1e-3)
    if len(proj) == 0:
        return
    rows = standardize_columns(history)
    outside = np.linalg.norm(proj - (proj @ np.linalg.pinv(rows)) @ rows, axis=1)  # components off span(rows)
    # Centring leaves rank ≤ τ − 1 < τ rows, so Vᵀ's last row may be an arbitrary null-space direction (spec §6).
    assert int((outside > 1e-4).sum()) <= (1 if tau <= dim else 0)


@pytest.mark.parametrize("seed,tau,dim,rank", CASES)
def test_kept_components_explain_more_than_one_minus_nu_and_are_left_alone(seed, tau, dim, rank):
    history = _history(seed, tau, dim, rank)
    rows = standardize_columns(history)
    proj = low_variance_directions(history, 1e-3)
    _, s, vt = np.linalg.svd(rows, full_matrices=False)
    kept = vt[: len(vt) - len(proj)]
    assert (s[: len(kept)] ** 2).sum() / (s**2).sum() > 1 - 1e-3
    if len(kept) > 1:  # the smallest prefix: dropping its last component falls to 1 − ν or below
        assert (s[: len(kept) - 1] ** 2).sum() / (s**2).sum() <= 1 - 1e-3
    g = kept.T @ np.random.default_rng(seed).standard_normal(len(kept))  # an estimate inside the kept span
    np.testing.assert_allclose(project_out(g, proj), g, atol=1e-5 * np.linalg.norm(g))


def test_a_history_that_never_moved_removes_nothing():
    history = np.tile(np.arange(7, dtype=np.float32), (5, 1))
    assert low_variance_directions(history, 1e-3).shape == (0, 7)
    assert np.array_equal(standardize_columns(history), np.zeros((5, 7)))


def test_standardized_columns_have_zero_mean_and_unit_population_std():
    history = np.random.default_rng(0).normal(3.0, [0.1, 2.0, 5.0], size=(20, 3))
    rows = standardize_columns(history)
    np.testing.assert_allclose(rows.mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(rows.std(axis=0), 1, atol=1e-12)


def test_ring_buffer_overwrites_the_oldest_row_and_leaves_its_input_alone():
    buffer, index, fill = np.zeros((3, 2), np.float32), 0, 0
    for value in range(1, 6):
        before = buffer.copy()
        buffer, index, fill = push_history(buffer, index, fill, np.full(2, value, np.float32))
        assert not np.shares_memory(buffer, before)
    assert (index, fill) == (2, 3)
    np.testing.assert_array_equal(buffer[:, 0], [4, 5, 3])
