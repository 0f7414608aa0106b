"""The ExecuTorch denoiser backend (issue 5, item 5) beyond the seam contract that tests/test_backend_contract.py
checks for every family x engine: it counts one method execution per NFE through a whole ralu-4x loop that
agrees with ORT, and refuses, in one sentence, a bundle that is not an ExecuTorch program and a stage length
that has no method. Slow: exports an executorch bundle of `shapes` (~3 min on 2 cores). A missing `.pte` or an
`executorch` that cannot be imported is a failure, not a skip."""

import numpy as np
import pytest

from ralu_edge.errors import UserError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def backends(executorch_bundle, desktop_bundle):
    from ralu_export.executorch_backend import ExecutorchDenoiser
    from ralu_runtime.bundle import open_bundle
    from ralu_runtime.pipeline import Pipeline

    return Pipeline.from_bundle(desktop_bundle, threads=2), ExecutorchDenoiser(open_bundle(executorch_bundle),
                                                                                threads=2)


def test_a_ralu_4x_loop_runs_one_method_per_step_and_matches_ort(backends):
    from ralu_edge.rng import initial_noise, rng_for
    from ralu_edge.sampler import ralu_sample

    pipe, et = backends
    gh, gw = pipe.grid
    cond = pipe.text.encode("a small blue square at the top right")
    noise = initial_noise(3, gh * gw, pipe.channels)
    preset = pipe.preset_for_mode("ralu-4x")
    calls_before = et.calls
    finals = [ralu_sample(d, noise, gh, gw, preset, cond, rng=rng_for(3, "ralu/select"),
                          latent_channels=pipe.channels // 4).tokens for d in (pipe.denoiser, et)]
    assert et.calls - calls_before == preset.nfe and et.session_seconds > 0
    assert np.abs(finals[0] - finals[1]).max() < 2e-2 * max(1.0, np.abs(finals[0]).max())


def test_a_bundle_without_a_program_is_refused_by_name(desktop_bundle):
    from ralu_export.executorch_backend import ExecutorchDenoiser
    from ralu_runtime.bundle import open_bundle

    with pytest.raises(UserError, match="not an ExecuTorch program.*--target executorch"):
        ExecutorchDenoiser(open_bundle(desktop_bundle))


def test_a_stage_length_without_a_method_is_refused_with_the_lengths_it_has(backends):
    from ralu_edge.seam import Conditioning
    from ralu_edge.tokens import grid_positions

    pipe, et = backends
    d = pipe.bundle.manifest.denoiser
    cond = Conditioning(np.zeros((1, d.text_length, d.text_dim), np.float32), np.zeros((1, d.pooled_dim), np.float32))
    with pytest.raises(UserError, match="static denoiser graphs for .* image tokens, not 3"):
        et(np.zeros((1, 3, pipe.channels), np.float32), grid_positions(1, 3), np.array([0.5]), cond)
