"""Schedules and NT-Matching (spec/RALU.md §7, §8, §9.5). Golden numbers are the spec's tables."""

import numpy as np
import pytest

from ralu_edge import presets, schedules
from ralu_edge.ntfit import fit_nt_schedule

# spec/RALU.md §8 "Precomputed values": per preset, the three stages' sigma lists.
SPEC_STAGE_SIGMAS = {
    "flux-4x": [
        [1, .9695, .9304, .8786, .8066, .70],
        [.9365, .8925, .8426, .7854, .7192, .6418, .55],
        [.8853, .8157, .7347, .6396, .5260, .3881, .2173, 0],
    ],
    "flux-5x": [
        [1, .9611, .9072, .8281, .70],
        [.9461, .8925, .8295, .7543, .6630, .55],
        [.9019, .8202, .7220, .6020, .4517, .2583, 0],
    ],
    "flux-7x": [
        [1, .9417, .80],
        [.9616, .8946, .8101, .70],
        [.9359, .8336, .7052, .5390, .3158, 0],
    ],
    "sd3-2x": [
        [1, .9780, .9504, .9149, .8672, .80],
        [.9429, .9101, .8747, .8364, .7948, .7495, .70],
        [.9060, .8474, .7824, .7097, .6281, .5356, .4301, .3086, .1670, 0],
    ],
    "sd3-3x": [
        [1, .9561, .8851, .75],
        [.9494, .8827, .8014, .70],
        [.9359, .8546, .7560, .6342, .4795, .2770, 0],
    ],
}

# spec/RALU.md §8: (s₂, s₃), (a₁, a₂), (b₁, b₂).
SPEC_TRANSITIONS = {
    "flux-4x": ((0.0635, 0.1147), (0.2118, 0.2548), (0.9365, 0.8853)),
    "flux-5x": ((0.0539, 0.0981), (0.1797, 0.2180), (0.9461, 0.9019)),
    "flux-7x": ((0.0384, 0.0641), (0.1920, 0.2136), (0.9616, 0.9359)),
    "sd3-2x": ((0.0571, 0.0940), (0.2853, 0.3132), (0.9429, 0.9060)),
    "sd3-3x": ((0.0506, 0.0641), (0.2023, 0.2136), (0.9494, 0.9359)),
}

# spec/RALU.md §9.5 "Reproduction check": (N, e) -> h, Z, c, JSD.
SPEC_FITS = [
    ([5, 6, 7], [0.3, 0.45, 1.0], [5.019, 2.589, 2.226], 6.317, 0.0251, 0.0175),
    ([2, 3, 5], [0.2, 0.3, 1.0], [8.140, 2.856, 2.193], 6.261, 0.0255, 0.0266),
    ([4, 5, 6], [0.3, 0.45, 1.0], [5.106, 2.641, 2.251], 7.522, 0.0177, 0.0163),
    ([5, 6, 9], [0.2, 0.3, 1.0], [6.121, 2.237, 1.973], 4.132, 0.0586, 0.0367),
    ([3, 3, 6], [0.25, 0.3, 1.0], [6.401, 2.601, 2.273], 6.259, 0.0255, 0.0213),
]


@pytest.mark.parametrize("name", sorted(SPEC_STAGE_SIGMAS))
def test_preset_sigma_lists_equal_the_spec_table(name):
    computed = presets.get(name).stage_sigmas
    for stage, expected in zip(computed, SPEC_STAGE_SIGMAS[name]):
        np.testing.assert_allclose(stage, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", sorted(SPEC_TRANSITIONS))
def test_transition_constants_equal_the_spec_table(name):
    preset = presets.get(name)
    s, a, b = SPEC_TRANSITIONS[name]
    np.testing.assert_allclose(preset.s[1:], s, atol=1e-4)
    np.testing.assert_allclose(preset.a, a, atol=1e-4)
    np.testing.assert_allclose(preset.b, b, atol=1e-4)


@pytest.mark.parametrize("name", sorted(presets.PRESETS))
def test_every_preset_is_monotone_in_unit_interval_and_ends_at_zero(name):
    preset = presets.get(name)
    for k, stage in enumerate(preset.stage_sigmas):
        assert len(stage) == preset.N[k] + 1
        assert all(0.0 <= x <= 1.0 for x in stage)
        assert all(x > y for x, y in zip(stage, stage[1:]))
        assert stage[-1] == pytest.approx(1.0 - preset.e[k], abs=1e-12)
    assert preset.stage_sigmas[-1][-1] == 0.0
    assert preset.stage_sigmas[0][0] == pytest.approx(1.0)


@pytest.mark.parametrize("name", sorted(presets.PRESETS))
def test_renoising_is_exact_for_duplicated_groups(name):
    # spec/RALU.md §7.1: a(1−e) = b√c, so a²(1−e)²J + b²(I − cJ) = b²I.
    preset = presets.get(name)
    for end, a, b in zip(preset.e, preset.a, preset.b):
        assert a * (1.0 - end) == pytest.approx(b * np.sqrt(preset.c))
        assert a * end == pytest.approx(1.0 - b)  # the signal weight is s = 1 − b


def test_stage_sigmas_place_steps_at_quantiles_of_the_truncated_density():
    start, end, shift, n = 0.1, 0.6, 2.5, 8
    times = 1.0 - schedules.stage_sigmas(start, end, shift, n)
    cdf = schedules.shifted_time_cdf(times, shift)
    lo, hi = schedules.shifted_time_cdf(np.array([start, end]), shift)
    np.testing.assert_allclose((cdf - lo) / (hi - lo), np.linspace(0, 1, n + 1), atol=1e-12)


def test_shifted_pdf_integrates_to_one_and_is_the_cdf_derivative():
    times = np.linspace(0, 1, 200001)
    for shift in (0.5, 1.0, 3.0, 8.0):
        pdf = schedules.shifted_time_pdf(times, shift)
        assert np.trapezoid(pdf, times) == pytest.approx(1.0, abs=1e-6)
        np.testing.assert_allclose(np.gradient(schedules.shifted_time_cdf(times, shift), times)[1:-1],
                                   pdf[1:-1], rtol=1e-4)


def test_truncated_pdf_is_zero_outside_and_normalised_inside():
    times = np.linspace(0, 1, 100001)
    pdf = schedules.truncated_time_pdf(times, 3.0, 0.2, 0.45)
    assert np.all(pdf[(times < 0.2) | (times > 0.45)] == 0)
    assert np.trapezoid(pdf, times) == pytest.approx(1.0, abs=1e-3)


def test_js_distance_matches_its_definition_and_is_symmetric():
    rng = np.random.default_rng(0)
    p, q = rng.uniform(0, 1, 50), rng.uniform(0, 1, 50)
    p[3] = 0.0
    pn, qn = p / p.sum(), q / q.sum()
    m = (pn + qn) / 2
    kl = lambda x, y: np.sum(np.where(x > 0, x * np.log(np.where(x > 0, x, 1) / y), 0.0))  # noqa: E731
    expected = np.sqrt((kl(pn, m) + kl(qn, m)) / 2)
    assert schedules.js_distance(p, q) == pytest.approx(expected, rel=1e-12)
    assert schedules.js_distance(q, p) == pytest.approx(expected, rel=1e-12)
    assert schedules.js_distance(p, 3 * p) == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("num_steps, ends, shifts, z, c, jsd", SPEC_FITS)
def test_nt_fit_reproduces_the_spec_solver_table(num_steps, ends, shifts, z, c, jsd):
    pytest.importorskip("scipy")
    fit = fit_nt_schedule(num_steps, ends, 3.0)
    np.testing.assert_allclose(fit.shifts, shifts, atol=1e-2)
    assert fit.z == pytest.approx(z, abs=1e-2)
    assert fit.c == pytest.approx(c, abs=1e-3)
    assert fit.js_distance == pytest.approx(jsd, abs=1e-3)


def test_objective_at_the_spec_fits_equals_the_published_js_distance():
    for num_steps, ends, shifts, z, _, jsd in SPEC_FITS:
        assert schedules.nt_objective(shifts + [z], num_steps, ends) == pytest.approx(jsd, abs=1e-4)


def test_static_shift_schedule_equals_one_full_stage():
    np.testing.assert_allclose(schedules.static_shift_sigmas(28, 3.0),
                               schedules.stage_sigmas(0.0, 1.0, 3.0, 28), atol=1e-12)


def test_flux_baseline_follows_the_diffusers_formula():
    # sigma' = e^mu / (e^mu + 1/sigma − 1), sigma = linspace(1, 1/N, N); mu = 1.15 at 4096 tokens (§7.3).
    sigmas = schedules.flux_baseline_sigmas(50, 4096)
    base = np.linspace(1.0, 1.0 / 50, 50)
    expected = np.exp(1.15) / (np.exp(1.15) + 1.0 / base - 1.0)
    assert len(sigmas) == 51 and sigmas[-1] == 0.0 and sigmas[0] == 1.0
    np.testing.assert_allclose(sigmas[:-1], expected, rtol=1e-6)
    assert schedules.flux_calculate_shift(256) == pytest.approx(0.5)
    # With mu = ln h the dynamic shift is the static shift h.
    np.testing.assert_allclose(schedules.flux_baseline_sigmas(50, 4096),
                               schedules.static_shift_sigmas(50, np.exp(1.15)), atol=1e-6)


def test_sd3_baseline_ends_far_below_the_flux_style_schedule():
    sd3 = schedules.sd3_baseline_sigmas(28, 3.0)
    assert len(sd3) == 29 and sd3[0] == 1.0 and sd3[-1] == 0.0
    assert np.all(np.diff(sd3) < 0)
    assert sd3[-2] < 0.01 < schedules.static_shift_sigmas(28, 3.0)[-2]
