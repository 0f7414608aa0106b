"""The ExecuTorch denoiser backend (issue 5, item 5) agrees with the ORT backend on the same model: one seam call
at every RALU stage length, and a whole ralu-4x loop, within XNNPACK tolerance (slow: exports an executorch and
a desktop bundle of `shapes`, ~3 min on 2 cores). Skipped when executorch is not importable or the bundle
carries no .pte denoiser."""

import numpy as np
import pytest

from tests.conftest import exported_bundle

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bundles(request):
    pytest.importorskip("executorch.runtime")
    pte = exported_bundle(request, "executorch")
    if not list((pte / "transformer").glob("*.pte")):
        pytest.skip("the executorch bundle has no .pte denoiser")
    return pte, exported_bundle(request, "desktop")


@pytest.fixture(scope="module")
def backends(bundles):
    from ralu_runtime.bundle import open_bundle
    from ralu_export.executorch_backend import ExecutorchDenoiser
    from ralu_runtime.pipeline import Pipeline

    pte, desktop = bundles
    pipe = Pipeline.from_bundle(desktop, threads=2)
    return pipe, ExecutorchDenoiser(open_bundle(pte), threads=2)


def test_one_call_at_every_stage_length_matches_ort(backends):
    from ralu_edge.tokens import grid_positions

    pipe, et = backends
    gh, gw = pipe.grid
    cond = pipe.text.encode("a large red circle on the left")
    preset = pipe.preset_for_mode("ralu-4x")
    rng = np.random.default_rng(0)
    for length in preset.stage_lengths(gh, gw):
        tokens = rng.standard_normal((1, length, pipe.channels)).astype(np.float32)
        positions = grid_positions(gh, gw)[:length]  # any positions: both backends get the same RoPE tables
        sigmas = np.asarray([0.6], np.float32)
        ref = pipe.denoiser(tokens, positions, sigmas, cond)
        got = et(tokens, positions, sigmas, cond)
        assert got.shape == ref.shape
        assert np.abs(got - ref).max() <= 1e-2 * max(1.0, np.abs(ref).max()), length


def test_a_ralu_4x_loop_matches_ort(backends):
    from ralu_edge.rng import rng_for
    from ralu_edge.sampler import ralu_sample

    pipe, et = backends
    gh, gw = pipe.grid
    cond = pipe.text.encode("a small blue square at the top right")
    noise = rng_for(3, "initial_noise").standard_normal((1, gh * gw, pipe.channels)).astype(np.float32)
    preset = pipe.preset_for_mode("ralu-4x")
    calls_before = et.calls
    finals = [ralu_sample(d, noise, gh, gw, preset, cond, rng=rng_for(3, "ralu/select"),
                          latent_channels=pipe.channels // 4).tokens for d in (pipe.denoiser, et)]
    assert et.calls - calls_before == preset.nfe
    assert np.abs(finals[0] - finals[1]).max() < 2e-2 * max(1.0, np.abs(finals[0]).max())
