"""Token bookkeeping (spec/RALU.md §3, §5, §6, worked example §9.6)."""

import numpy as np
import pytest

from ralu_edge import tokens as tk


def _ids_of(positions):
    return [tuple(float(v) for v in row) for row in positions]


def test_pack_then_unpack_returns_the_latent():
    latent = np.random.default_rng(0).standard_normal((2, 4, 6, 10)).astype(np.float32)
    packed = tk.pack_latents(latent)
    assert packed.shape == (2, 15, 16)
    np.testing.assert_array_equal(tk.unpack_latents(packed, 3, 5), latent)


def test_packed_channels_are_in_c_dy_dx_order():
    latent = np.arange(2 * 4 * 4, dtype=np.float32).reshape(1, 2, 4, 4)
    token = tk.pack_latents(latent)[0, 1 * 2 + 1]  # grid (1, 1): latent rows 2..3, cols 2..3
    expected = [latent[0, c, 2 + dy, 2 + dx] for c in range(2) for dy in range(2) for dx in range(2)]
    np.testing.assert_array_equal(token, expected)


def test_grid_positions_are_raster_ids_with_zero_first_axis():
    positions = tk.grid_positions(2, 3)
    assert positions.dtype == np.float64
    assert _ids_of(positions) == [(0, 0, 0), (0, 0, 1), (0, 0, 2), (0, 1, 0), (0, 1, 1), (0, 1, 2)]


def test_downsample_keeps_latent_pixels_at_even_rows_and_columns():
    latent = np.random.default_rng(1).standard_normal((1, 4, 8, 12)).astype(np.float32)
    low = tk.downsample_tokens(tk.pack_latents(latent), 4, 6)
    assert low.shape == (1, 6, 16)
    np.testing.assert_array_equal(tk.unpack_latents(low, 2, 3), latent[:, :, ::2, ::2])


def _worked_example():
    """§9.6: 8×8 low-res grid, k = 19 selected, one of them (2, 5) = raster index 21."""
    rng = np.random.default_rng(3)
    others = rng.choice(np.setdiff1d(np.arange(64), [21]), 18, replace=False)
    selected = np.sort(np.append(others, 21))
    values = np.arange(64, dtype=np.float32).reshape(1, 64, 1)  # each token carries its low-res index
    return values, tk.grid_positions(8, 8), selected


def test_worked_example_stage2_layout_and_child_ids():
    values, positions, selected = _worked_example()
    x2, ids2, groups = tk.assemble_stage2(values, positions, selected)
    assert x2.shape == (1, 121, 1) and ids2.shape == (121, 3)
    unselected = np.setdiff1d(np.arange(64), selected)
    np.testing.assert_array_equal(x2[0, :45, 0], unselected)  # 1× tokens first, raster order
    np.testing.assert_array_equal(groups, np.arange(45, 121).reshape(19, 4))
    where = 45 + 4 * int(np.searchsorted(selected, 21))
    assert _ids_of(ids2[where:where + 4]) == [(0, 2, 5), (0, 2, 5.5), (0, 2.5, 5), (0, 2.5, 5.5)]
    np.testing.assert_array_equal(x2[0, where:where + 4, 0], [21] * 4)


def test_worked_example_stage3_ids_and_raster_indices():
    values, positions, selected = _worked_example()
    x2, ids2, _ = tk.assemble_stage2(values, positions, selected)
    x3, ids3, groups = tk.assemble_stage3(x2, ids2, 45)
    assert x3.shape == (1, 256, 1)
    np.testing.assert_array_equal(groups, np.arange(180).reshape(45, 4))
    where = 180 + 4 * int(np.searchsorted(selected, 21))
    assert _ids_of(ids3[where:where + 4]) == [(0, 4, 10), (0, 4, 11), (0, 5, 10), (0, 5, 11)]
    order = tk.raster_order(ids3)
    np.testing.assert_array_equal(np.argsort(order)[where:where + 4], [74, 75, 90, 91])
    restored, _ = tk.restore_raster_order(x3, ids3)
    np.testing.assert_array_equal(restored[0, [74, 75, 90, 91], 0], [21] * 4)


@pytest.mark.parametrize("seed, grid, k", [(0, (4, 4), 0), (1, (8, 6), 3), (2, (16, 16), 19),
                                            (3, (6, 10), 15), (4, (4, 8), 8)])
def test_downsample_assemble_restore_round_trip_is_consistent_with_positions(seed, grid, k):
    grid_h, grid_w = grid
    low_h, low_w = grid_h // 2, grid_w // 2
    rng = np.random.default_rng(seed)
    full = rng.standard_normal((1, grid_h * grid_w, 8)).astype(np.float32)
    low = tk.downsample_tokens(full, grid_h, grid_w)
    selected = rng.choice(low_h * low_w, k, replace=False)
    x2, ids2, _ = tk.assemble_stage2(low, tk.grid_positions(low_h, low_w), selected)
    x3, ids3, _ = tk.assemble_stage3(x2, ids2, low_h * low_w - k)
    order = tk.raster_order(ids3)
    np.testing.assert_array_equal(np.sort(order), np.arange(grid_h * grid_w))  # a permutation
    x_final, ids_final = tk.restore_raster_order(x3, ids3)
    np.testing.assert_array_equal(ids_final, tk.grid_positions(grid_h, grid_w))
    rows, cols = ids_final[:, 1].astype(int), ids_final[:, 2].astype(int)
    np.testing.assert_array_equal(x_final[0], low[0, (rows // 2) * low_w + cols // 2])


def test_assemble_stage2_rejects_repeated_indices():
    with pytest.raises(ValueError, match="distinct"):
        tk.assemble_stage2(np.zeros((1, 4, 2)), tk.grid_positions(2, 2), [1, 1])


def test_assembly_does_not_mutate_its_inputs():
    low = np.random.default_rng(5).standard_normal((1, 16, 4)).astype(np.float32)
    positions = tk.grid_positions(4, 4)
    low_copy, positions_copy = low.copy(), positions.copy()
    x2, ids2, _ = tk.assemble_stage2(low, positions, [2, 7])
    tk.assemble_stage3(x2, ids2, 14)
    np.testing.assert_array_equal(low, low_copy)
    np.testing.assert_array_equal(positions, positions_copy)
