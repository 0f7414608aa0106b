"""LoRA merge arithmetic (ralu_edge.lora, issue 17): the merge is W + Σ s·B·A, re-quantization is the
exporter's weight_qdq rule, and the properties the runtime relies on hold (seeded random cases)."""

import numpy as np
import pytest

from ralu_edge.lora import (
    LoraFactors, channel_scales, dequantize_rows, lora_delta, merged_weight, quantize_rows, requantized,
)


def _case(seed: int, out: int = 24, inner: int = 40, rank: int = 4):
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((out, inner)).astype(np.float32)
    factors = LoraFactors(rng.standard_normal((rank, inner)).astype(np.float32),
                          rng.standard_normal((out, rank)).astype(np.float32) * 0.1, 0.75)
    return weight, factors


@pytest.mark.parametrize("seed", range(5))
def test_the_merge_adds_the_scaled_low_rank_product(seed):
    weight, f = _case(seed)
    expected = weight.astype(np.float64) + 0.75 * (f.up.astype(np.float64) @ f.down.astype(np.float64))
    np.testing.assert_array_equal(merged_weight(weight, [f]), expected.astype(np.float32))


@pytest.mark.parametrize("seed", range(5))
def test_two_halves_of_one_lora_merge_to_exactly_the_whole(seed):
    weight, f = _case(seed)
    half = LoraFactors(f.down, f.up, f.scale / 2)
    np.testing.assert_array_equal(merged_weight(weight, [half, half]), merged_weight(weight, [f]))


def test_no_factors_leave_the_weight_unchanged_bit_for_bit():
    weight, _ = _case(0)
    np.testing.assert_array_equal(merged_weight(weight, []), weight)
    assert not lora_delta([], weight.shape).any()


@pytest.mark.parametrize("seed", range(5))
def test_requantization_is_the_exporters_per_channel_rule_within_half_a_step(seed):
    weight, f = _case(seed)
    scales = channel_scales(weight)
    q = quantize_rows(weight, scales)
    q2, scales2 = requantized(q, scales, [f])
    merged = merged_weight(dequantize_rows(q, scales), [f])
    assert q2.dtype == np.int8 and scales2.dtype == np.float32
    np.testing.assert_array_equal(np.abs(q2).max(axis=1), 127)  # absmax / 127: every row reaches the range
    assert np.all(np.abs(dequantize_rows(q2, scales2) - merged) <= scales2[:, None] / 2 * (1 + 1e-6))


def test_a_zero_row_keeps_scale_one_and_zeros():
    weight = np.zeros((3, 8), np.float32)
    weight[1] = np.linspace(-1, 1, 8)
    scales = channel_scales(weight)
    assert scales[0] == 1.0 and scales[2] == 1.0
    assert not quantize_rows(weight, scales)[[0, 2]].any()
