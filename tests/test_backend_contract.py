"""The denoiser seam's contract, one suite for every family x engine (issue 14, DESIGN.md "The one seam"):
the torch reference, ONNX Runtime and ExecuTorch take the same seam inputs and give the same velocity within
the tolerance table, shaped and typed as the seam says, and the same call twice gives the same bits; a whole
RALU loop agrees too; a missing guidance means FLUX_DEFAULT_GUIDANCE on every engine. Families: the built-in
`shapes` model (FLUX, no guidance embedding), a tiny guidance-distilled FLUX and a tiny SD3 (sin-cos positions,
sigma x 1000, (dy, dx, c) output, batch-2 ExecuTorch programs). The feeds themselves (`ralu_edge.feeds`) are
tested first, engine-free.

Fast: shapes on torch and ORT (the session's desktop bundle). Slow: everything that needs an ExecuTorch or a
tiny-model export (cached in pytest's cache folder). A missing export artefact fails; nothing here skips."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from ralu_edge.feeds import (
    FLUX_DEFAULT_GUIDANCE, SD3_TIMESTEP_SCALE, FeedSpec, graph_feeds, guidance_values, position_feeds,
    timestep_values, velocity_from_outputs,
)
from ralu_edge.manifest import RopeSpec, read_manifest
from ralu_edge.rng import initial_noise, rng_for
from ralu_edge.sd3 import SincosGrid, sd3_output_from_packed
from ralu_edge.seam import Conditioning
from ralu_edge.tokens import assemble_stage2, grid_positions
from tests.conftest import exported_bundle, tiny_model_bundle, tiny_model_folder

slow = pytest.mark.slow

# max |v - v_torch| / max |v_torch| per engine (DESIGN.md "Conventions": torch vs ORT fp32 ~1e-4 relative,
# XNNPACK ~1e-3; the loop bound covers a whole RALU run's accumulation, as the export-time XNNPACK floor).
TOLERANCES = {"torch": 0.0, "ort": 1e-4, "executorch": 1e-3}
LOOP_TOLERANCES = {"torch": 0.0, "ort": 1e-3, "executorch": 2e-2}


# ------------------------------------------------------------------------------------------ the feeds, engine-free

def _cond(rng, batch: int, text_length: int = 3, guidance=None) -> Conditioning:
    return Conditioning(rng.standard_normal((batch, text_length, 8)).astype(np.float32),
                        rng.standard_normal((batch, 6)).astype(np.float32), guidance)


def test_the_timestep_is_sigma_or_sigma_times_the_sd3_scale():
    sigmas = np.array([0.25, 0.8])
    flux, sd3 = FeedSpec("ids"), FeedSpec("ids", timestep="sigma_x1000")
    assert timestep_values(flux, sigmas).dtype == np.float32
    np.testing.assert_array_equal(timestep_values(flux, sigmas), np.float32(sigmas))
    np.testing.assert_array_equal(timestep_values(sd3, sigmas), np.float32(sigmas) * np.float32(SD3_TIMESTEP_SCALE))


def test_a_missing_guidance_is_the_flux_default_and_only_distilled_graphs_take_one():
    rng = np.random.default_rng(0)
    distilled = FeedSpec("ids", guidance=True)
    assert guidance_values(FeedSpec("ids"), _cond(rng, 2, guidance=np.ones(2, np.float32)), 2) is None
    np.testing.assert_array_equal(guidance_values(distilled, _cond(rng, 2), 2), [FLUX_DEFAULT_GUIDANCE] * 2)
    np.testing.assert_array_equal(guidance_values(distilled, _cond(rng, 2, guidance=np.float32(2.0)), 2), [2.0, 2.0])
    np.testing.assert_array_equal(guidance_values(distilled, _cond(rng, 2, guidance=np.array([1.0, 4.0])), 2),
                                  [1.0, 4.0])
    feeds = graph_feeds(distilled, np.zeros((2, 4, 4), np.float32), np.array([0.5, 0.5]), _cond(rng, 2), {})
    assert [f["guidance"].tolist() for f in feeds] == [[FLUX_DEFAULT_GUIDANCE, FLUX_DEFAULT_GUIDANCE]]


@pytest.mark.parametrize("rows_per_run, runs", [(None, 1), (1, 4), (2, 2), (4, 1)])
def test_a_batch_runs_in_chunks_of_the_graphs_fixed_batch_in_row_order(rows_per_run, runs):
    rng = np.random.default_rng(1)
    tokens = rng.standard_normal((4, 5, 4)).astype(np.float32)
    sigmas, cond = rng.uniform(size=4), _cond(rng, 4)
    spec = FeedSpec("ids", rows_per_run=rows_per_run)
    positions = position_feeds(spec, grid_positions(1, 5), cond.positions_for_text())
    feeds = graph_feeds(spec, tokens, sigmas, cond, positions)
    assert len(feeds) == runs
    for name, whole in (("hidden_states", tokens), ("encoder_hidden_states", cond.text_states),
                        ("pooled_projections", cond.pooled), ("timestep", np.float32(sigmas))):
        joined = np.concatenate([f[name] for f in feeds])
        assert joined.dtype == np.float32 and all(f[name].flags.c_contiguous for f in feeds)
        np.testing.assert_array_equal(joined, whole)
    assert all(f["img_ids"] is positions["img_ids"] for f in feeds)  # positions are shared, not per row
    np.testing.assert_array_equal(velocity_from_outputs(spec, [f["hidden_states"] for f in feeds]), tokens)


def test_a_batch_that_does_not_fill_the_graphs_runs_is_refused():
    rng = np.random.default_rng(2)
    with pytest.raises(ValueError, match="batches of 2 rows"):
        graph_feeds(FeedSpec("ids", rows_per_run=2), np.zeros((1, 4, 4), np.float32), np.array([0.5]),
                    _cond(rng, 1), {})


def test_positions_become_rope_tables_sincos_embeddings_or_float_ids():
    from ralu_edge.rope import rope_tables
    from ralu_edge.sd3 import position_embeddings

    positions, text = grid_positions(4, 4) + 0.5, np.zeros((3, 3))
    rope = RopeSpec(axes_dim=(2, 4, 4), theta=10000.0, head_dim=10)
    tables = position_feeds(FeedSpec("rope", rope=rope), positions, text)
    expected = rope_tables(np.concatenate([text, positions]), rope.axes_dim, rope.theta)
    assert set(tables) == {"rope_cos", "rope_sin"} and tables["rope_cos"].shape == (19, 10)
    np.testing.assert_array_equal(tables["rope_cos"], expected[0])
    grid = SincosGrid(16, 12, 4)
    sincos = position_feeds(FeedSpec("sincos", sincos=grid, grid_hw=(8, 8)), positions, text)
    np.testing.assert_array_equal(sincos["pos_embed"], position_embeddings(positions, 8, 8, grid))
    ids = position_feeds(FeedSpec("ids"), positions, text)
    assert ids["img_ids"].dtype == np.float32 and ids["txt_ids"].shape == (3, 3)


def test_sd3_outputs_are_permuted_back_to_the_samplers_layout():
    tokens = np.random.default_rng(3).standard_normal((2, 5, 16)).astype(np.float32)
    spec = FeedSpec("ids", output_order="dy_dx_c", latent_channels=4)
    np.testing.assert_array_equal(velocity_from_outputs(spec, [sd3_output_from_packed(tokens, 4)]), tokens)


# ------------------------------------------------------------------------------------------ family x engine

@dataclass
class Family:
    """One model family under test: its desktop bundle's manifest, how to get its bundles and its torch reference,
    and the preset whose stage lengths every engine (the ExecuTorch program included) serves."""

    name: str
    request: pytest.FixtureRequest
    preset: str

    def bundle(self, target: str) -> Path:
        if self.name == "shapes":
            bundle = exported_bundle(self.request, target)
        else:
            extra = ("--presets", self.preset) if target == "executorch" else ()
            bundle = tiny_model_bundle(self.request, self.name.split("-", 1)[1], target, *extra)
        if target == "executorch":
            assert list((bundle / "transformer").glob("*.pte")), f"{bundle}: the export wrote no .pte denoiser"
        return bundle

    def model(self) -> str:
        return "shapes" if self.name == "shapes" else str(tiny_model_folder(self.request, self.name.split("-", 1)[1]))


@pytest.fixture(scope="module", params=["shapes", pytest.param("tiny-flux", marks=slow),
                                        pytest.param("tiny-sd3", marks=slow)])
def family(request) -> Family:
    return Family(request.param, request, "sd3-2x" if request.param == "tiny-sd3" else "flux-4x")


@pytest.fixture(scope="module")
def manifest(family):
    return read_manifest(family.bundle("desktop"))


def _engine(name: str, family: Family, manifest):
    if name == "ort":
        from ralu_runtime.backends import RunClock, open_denoiser
        from ralu_runtime.bundle import open_bundle
        from ralu_runtime.sessions import SessionConfig

        return open_denoiser(open_bundle(family.bundle("desktop")), SessionConfig(threads=1), RunClock())
    if name == "executorch":
        from ralu_export.executorch_backend import ExecutorchDenoiser
        from ralu_runtime.bundle import open_bundle

        return ExecutorchDenoiser(open_bundle(family.bundle("executorch")), threads=1)
    import torch

    from ralu_export import torch_backend as tb
    from ralu_export.models import load_flux_pipeline, load_sd3_pipeline

    torch.set_num_threads(1)
    if manifest.denoiser.positions == "sincos":
        res = manifest.resolutions[0]
        return tb.TorchSd3Denoiser(load_sd3_pipeline(family.model()).transformer, res.grid_height, res.grid_width)
    return tb.TorchFluxDenoiser(load_flux_pipeline(family.model()).transformer)


@pytest.fixture(scope="module")
def reference(family, manifest):
    return _engine("torch", family, manifest)


@pytest.fixture(scope="module", params=["torch", "ort", pytest.param("executorch", marks=slow)])
def engine(request, family, manifest):
    return request.param, _engine(request.param, family, manifest)


def _seam_positions(gh: int, gw: int, length: int) -> np.ndarray:
    """Positions [length, 3] as the sampler makes them: the full grid, the low-res grid, or a stage-2 mix of
    low-res parents and half-integer children (spec/RALU.md §5)."""
    if length == gh * gw:
        return grid_positions(gh, gw)
    low = grid_positions(gh // 2, gw // 2)
    if length == len(low):
        return low
    k = (length - len(low)) // 3
    _, positions, _ = assemble_stage2(np.zeros((1, len(low), 4), np.float32), low, np.arange(k))
    return positions


def _stage_lengths(family: Family, manifest) -> tuple[int, ...]:
    entry = next(p for p in manifest.presets if p.name == family.preset)
    return entry.stages[0].stage_lengths


def _inputs(manifest, length: int, seed: int, batch: int = 2, guidance=None):
    """Seam inputs (tokens, positions, sigmas, cond) at one stage length; batch 2 is CFG's [negative, prompt]."""
    d, res = manifest.denoiser, manifest.resolutions[0]
    rng = rng_for(seed, f"backend-contract-{length}")
    cond = Conditioning(rng.standard_normal((batch, d.text_length, d.text_dim)).astype(np.float32),
                        rng.standard_normal((batch, d.pooled_dim)).astype(np.float32), guidance)
    tokens = rng.standard_normal((batch, length, d.token_channels)).astype(np.float32)
    return tokens, _seam_positions(res.grid_height, res.grid_width, length), rng.uniform(0.1, 0.9, batch), cond


def _relative_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


def test_an_engine_gives_the_reference_velocity_at_every_stage_length(family, manifest, engine, reference):
    name, denoiser = engine
    for length in _stage_lengths(family, manifest):
        tokens, positions, sigmas, cond = _inputs(manifest, length, seed=0)
        got, want = denoiser(tokens, positions, sigmas, cond), reference(tokens, positions, sigmas, cond)
        assert got.shape == tokens.shape and got.dtype == np.float32 and np.isfinite(got).all()
        assert _relative_error(got, want) <= TOLERANCES[name], (name, length)


def test_the_same_call_gives_the_same_bits_after_other_calls(family, manifest, engine):
    _, denoiser = engine
    lengths = _stage_lengths(family, manifest)
    first = _inputs(manifest, lengths[0], seed=1)
    before = denoiser(*first)
    denoiser(*_inputs(manifest, lengths[-1], seed=2))  # other positions in between: no stale position feeds
    np.testing.assert_array_equal(denoiser(*first), before)


def test_batch_rows_are_independent_of_each_other(family, manifest, engine):
    name, denoiser = engine
    tokens, positions, sigmas, cond = _inputs(manifest, _stage_lengths(family, manifest)[1], seed=3)
    both = denoiser(tokens, positions, sigmas, cond)
    rows = [Conditioning(cond.text_states[i:i + 1], cond.pooled[i:i + 1]) for i in range(2)]
    if name == "executorch" and manifest.denoiser.positions == "sincos":
        # SD3 programs are exported for CFG's batch of 2 (static shapes): one row is refused, not padded
        with pytest.raises(ValueError, match="batches of 2 rows"):
            denoiser(tokens[:1], positions, sigmas[:1], rows[0])
        return
    for i, row in enumerate(rows):
        one = denoiser(tokens[i:i + 1], positions, sigmas[i:i + 1], row)
        assert _relative_error(one, both[i:i + 1]) <= 1e-5, i


def test_a_missing_guidance_is_the_flux_default_on_every_engine(family, manifest, engine):
    _, denoiser = engine
    tokens, positions, sigmas, cond = _inputs(manifest, _stage_lengths(family, manifest)[0], seed=4)
    unset = denoiser(tokens, positions, sigmas, cond)
    default = Conditioning(cond.text_states, cond.pooled, np.full(2, FLUX_DEFAULT_GUIDANCE, np.float32))
    np.testing.assert_array_equal(denoiser(tokens, positions, sigmas, default), unset)
    other = Conditioning(cond.text_states, cond.pooled, np.full(2, 1.0, np.float32))
    changed = np.abs(denoiser(tokens, positions, sigmas, other) - unset).max() > 0
    assert changed == manifest.denoiser.guidance  # only guidance-distilled graphs take a guidance at all


def test_a_ralu_loop_matches_the_reference(family, manifest, engine, reference):
    from ralu_edge.guidance import ClassifierFreeGuidance
    from ralu_edge.presets import RaluPreset
    from ralu_edge.sampler import ralu_sample

    name, denoiser = engine
    entry = next(p for p in manifest.presets if p.name == family.preset)
    preset, res, d = RaluPreset.from_dict(entry.preset), manifest.resolutions[0], manifest.denoiser
    gh, gw = res.grid_height, res.grid_width
    rng = rng_for(5, "backend-contract-loop")
    noise = rng.standard_normal((1, gh * gw, d.token_channels)).astype(np.float32)
    batch = 1 if d.guidance_scale is None else 2
    cond = Conditioning(rng.standard_normal((batch, d.text_length, d.text_dim)).astype(np.float32),
                        rng.standard_normal((batch, d.pooled_dim)).astype(np.float32))

    def guided(inner):
        return inner if d.guidance_scale is None else ClassifierFreeGuidance(inner, d.guidance_scale)

    finals = [ralu_sample(guided(den), noise, gh, gw, preset, cond, rng=rng_for(5, "ralu/select"),
                          latent_channels=d.token_channels // 4).tokens for den in (reference, denoiser)]
    assert _relative_error(finals[1], finals[0]) <= LOOP_TOLERANCES[name]


# ------------------------------------------------------------------------------------------ images

PROMPT = "a large blue square on the right"


@pytest.fixture(scope="module")
def shapes_runtime_and_torch(desktop_bundle):
    import torch

    from ralu_export.models import load_flux_pipeline
    from ralu_export.torch_backend import TorchFluxDenoiser, encode_prompt
    from ralu_runtime.pipeline import Pipeline

    torch.set_num_threads(2)
    pipe = load_flux_pipeline("shapes")
    return pipe, TorchFluxDenoiser(pipe.transformer), encode_prompt(pipe, [PROMPT]), Pipeline.from_bundle(
        desktop_bundle, threads=2)


@pytest.mark.parametrize("mode", ["baseline", "ralu-4x", "ralu-5x", "ralu-7x"])
def test_runtime_images_match_the_torch_reference_within_40_db_in_every_mode(shapes_runtime_and_torch, mode):
    """The whole ORT runtime (its text encoders, denoiser and VAE) and the torch reference, same noise and same
    selection generator, give the same image (issue 5: PSNR >= 40 dB, fp32) for the baseline and every preset."""
    from ralu_edge.sampler import ralu_sample, sample_baseline
    from ralu_edge.schedules import flux_baseline_sigmas
    from ralu_edge.tokens import unpack_latents
    from ralu_export.eval.metrics import psnr
    from ralu_export.torch_backend import decode_tokens
    from ralu_runtime.images import latent_image_to_uint8

    pipe, torch_denoiser, torch_cond, runtime = shapes_runtime_and_torch
    gh, gw = runtime.grid
    noise = initial_noise(11, gh * gw, runtime.channels)
    pairs = ((torch_denoiser, torch_cond), (runtime.denoiser, runtime.text.encode(PROMPT)))
    if mode == "baseline":
        tokens = [sample_baseline(d, noise, gh, gw, flux_baseline_sigmas(28, gh * gw), c) for d, c in pairs]
    else:
        preset = runtime.preset_for_mode(mode)
        tokens = [ralu_sample(d, noise, gh, gw, preset, c, rng=rng_for(11, "ralu/select"),
                              latent_channels=runtime.channels // 4).tokens for d, c in pairs]
    reference_image = decode_tokens(pipe, tokens[0], gh, gw)[0]
    ours = latent_image_to_uint8(runtime.vae.decode(unpack_latents(tokens[1], gh, gw)))[0]
    assert psnr(ours, reference_image) >= 40.0
