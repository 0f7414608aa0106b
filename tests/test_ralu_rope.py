"""Host RoPE tables (spec/RALU.md §9.1 "Project default: precomputed RoPE")."""

import math

import numpy as np
import pytest

from ralu_edge.rope import rope_tables
from ralu_edge.tokens import assemble_stage2, grid_positions


def _reference_tables(positions, axes_dim, theta):
    """The formula written out: angle = pos_a·θ^(−2j/d_a), each (cos, sin) repeated twice in place."""
    cos_rows, sin_rows = [], []
    for row in positions:
        cos_row, sin_row = [], []
        for axis, dim in enumerate(axes_dim):
            for j in range(dim // 2):
                angle = row[axis] * theta ** (-2.0 * j / dim)
                cos_row += [math.cos(angle)] * 2
                sin_row += [math.sin(angle)] * 2
        cos_rows.append(cos_row)
        sin_rows.append(sin_row)
    return np.array(cos_rows), np.array(sin_rows)


@pytest.mark.parametrize("axes_dim", [(16, 56, 56), (8, 12, 12)])
def test_tables_match_the_formula_for_integer_and_fractional_positions(axes_dim):
    low = np.zeros((1, 16, 4), dtype=np.float32)
    _, positions, _ = assemble_stage2(low, grid_positions(4, 4), [5, 10])  # has (h+½, w+½) children
    positions = np.concatenate([positions, 2.0 * grid_positions(8, 8), [[0.0, 31.5, 0.25]]])
    cos, sin = rope_tables(positions, axes_dim, 10000.0)
    expected_cos, expected_sin = _reference_tables(positions, axes_dim, 10000.0)
    assert cos.shape == sin.shape == (len(positions), sum(axes_dim))
    assert cos.dtype == sin.dtype == np.float32
    np.testing.assert_allclose(cos, expected_cos, atol=1e-6)
    np.testing.assert_allclose(sin, expected_sin, atol=1e-6)


def test_text_positions_at_zero_give_the_identity_rotation():
    cos, sin = rope_tables(np.zeros((3, 3)), (8, 12, 12))
    np.testing.assert_array_equal(cos, 1.0)
    np.testing.assert_array_equal(sin, 0.0)


def test_odd_axis_dimensions_are_rejected():
    with pytest.raises(ValueError, match="even"):
        rope_tables(np.zeros((2, 3)), (8, 11, 12))
