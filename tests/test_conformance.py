"""Conformance vectors (issue 7; ralu_export.conformance): the committed vectors that the Kotlin core replays
still hold what ralu_edge and the runtime's tokenizer recipe compute, the writer works with any seam denoiser (a
numpy stub here), the checker notices a changed value, and the checker's command line runs with torch made
unimportable."""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ralu_edge import presets as ralu_presets
from ralu_edge.rng import initial_noise, rng_for
from ralu_edge.seam import Conditioning
from ralu_edge.zo import PutsConfig, ZOConfig
from ralu_export import conformance as cf
from ralu_runtime.tokenization import TokenizerConfig

REPO = Path(__file__).resolve().parents[1]
VECTORS = REPO / "android_demo/core/src/test/resources/vectors"
SHAPES = REPO / "export/builtin/shapes"  # tokenizer.json files read by path; the pipeline is not loaded
GRID = (16, 16)
# The built-in model's tokenizers as its bundles' manifests describe them: max_length, pad, eos, first free id.
CLIP_CONFIG, T5_CONFIG = TokenizerConfig(32, 1, 1, 400), TokenizerConfig(32, 0, 1, 97)


class StubDenoiser:
    """A deterministic seam denoiser: the exact velocity towards a position-dependent x₀, plus a little σ."""

    def __call__(self, tokens, positions, sigmas, cond):
        target = np.sin(0.3 * positions[:, 1:2] + 0.2 * positions[:, 2:3] * np.arange(1, tokens.shape[2] + 1))
        return ((tokens - target[None]) / np.maximum(sigmas[:, None, None], 0.05)).astype(np.float32)


def stub_query_velocity(theta, x_sigma, sigma):
    return (x_sigma * (1.0 + 0.1 * np.tanh(theta[:16])) - sigma).astype(np.float32)


def _stub_sources(with_zo: bool) -> cf.VectorSources:
    cond = Conditioning(text_states=np.zeros((1, 4, 8), np.float32), pooled=np.zeros((1, 8), np.float32))
    zo_case = cf.ZoCase(config=ZOConfig(tau=3), puts=PutsConfig(), seed=3, steps=4,
                        moments=rng_for(0, "test-moments").standard_normal((2, 2, 8, 32, 32)).astype(np.float32),
                        theta0=np.linspace(-0.1, 0.1, 24, dtype=np.float32), shift_factor=0.1, scaling_factor=1.3,
                        image_pixels=128 * 128)
    return cf.VectorSources(
        denoiser=StubDenoiser(), cond_for=lambda prompt: cond,
        noise_for=lambda seed: initial_noise(seed, 256, 16),
        grid=GRID, latent_channels=4,
        tokenizer_files={"tokenizer": (SHAPES / "tokenizer/tokenizer.json", "clip", CLIP_CONFIG),
                         "tokenizer_2": (SHAPES / "tokenizer_2/tokenizer.json", "t5", T5_CONFIG)},
        provenance={"denoiser": "tests.test_conformance.StubDenoiser"},
        runs=cf.DEFAULT_RUNS[::2], prompts=cf.DEFAULT_PROMPTS[:3],
        zo_case=zo_case if with_zo else None, query_velocity=stub_query_velocity if with_zo else None)


def test_committed_vectors_replay_through_ralu_edge_without_a_mismatch():
    assert cf.check_vectors(VECTORS) == []


def test_committed_vectors_cover_ralu_presets_baseline_tokenizers_and_zo_updates_and_stay_small():
    index = cf.load_vectors(VECTORS).index
    assert {run["mode"] for run in index["runs"]} >= {"flux-4x", "flux-7x", "baseline"}
    assert {t["kind"] for t in index["tokenizers"]} == {"clip", "t5"}
    assert any(step["sg_refreshed"] for step in index["zo"]["steps"])
    assert "torch_backend" in index["provenance"]["denoiser"]
    total = sum(p.stat().st_size for p in VECTORS.rglob("*") if p.is_file())
    assert total < 5_000_000


def test_every_recorded_denoiser_call_has_the_stage_length_of_its_preset():
    vectors = cf.load_vectors(VECTORS)
    for run in vectors.index["runs"]:
        if run["mode"] == "baseline":
            continue
        lengths = [vectors.array(call["tokens"]).shape[1] for call in run["calls"]]
        n = [sum(1 for call in run["calls"] if call["stage"] == s) for s in (1, 2, 3)]
        expected = [length for length, count in zip(run["stage_lengths"], n) for _ in range(count)]
        assert lengths == expected and tuple(n) == ralu_presets.get(run["mode"]).N


def test_vectors_written_from_a_numpy_stub_denoiser_check_clean(tmp_path):
    out = cf.write_vectors(tmp_path / "vectors", _stub_sources(with_zo=True))
    assert (out / cf.INDEX_NAME).is_file()
    assert cf.check_vectors(out) == []


def test_rewriting_replaces_the_folder_only_when_complete(tmp_path):
    out = tmp_path / "vectors"
    cf.write_vectors(out, _stub_sources(with_zo=False))
    broken = _stub_sources(with_zo=False)
    broken = cf.VectorSources(**{**broken.__dict__, "cond_for": lambda prompt: 1 / 0})
    with pytest.raises(ZeroDivisionError):
        cf.write_vectors(out, broken)
    assert cf.check_vectors(out) == [] and [p.name for p in tmp_path.iterdir()] == ["vectors"]


def test_checker_reports_a_changed_velocity_and_a_changed_draw(tmp_path):
    copy = tmp_path / "vectors"
    shutil.copytree(VECTORS, copy)
    vectors = cf.load_vectors(copy)
    run = vectors.index["runs"][0]
    velocity_file = copy / vectors.index["arrays"][run["calls"][3]["velocity"]]["file"]
    velocity = np.fromfile(velocity_file, dtype="<f4")
    (velocity * 1.01).astype("<f4").tofile(velocity_file)
    draw_file = copy / vectors.index["arrays"][run["draws"][1]["values"]]["file"]
    draw = np.fromfile(draw_file, dtype="<f8")
    (-draw).astype("<f8").tofile(draw_file)
    problems = cf.check_vectors(copy)
    assert any("denoiser call 4 tokens" in p for p in problems)
    assert any("renoise1_noise" in p for p in problems)


class ConditionedStubDenoiser(StubDenoiser):
    """StubDenoiser plus a per-row offset read from the conditioning, so guidance changes the velocity."""

    def __call__(self, tokens, positions, sigmas, cond):
        return (super().__call__(tokens, positions, sigmas, cond) + cond.pooled[:, :1, None]).astype(np.float32)


def _guided_stub_sources() -> cf.VectorSources:
    def cond_for(prompt):
        offset = 0.0 if prompt == "" else 0.25  # the negative prompt "" and the prompt condition differently
        return Conditioning(text_states=np.zeros((1, 4, 8), np.float32), pooled=np.full((1, 8), offset, np.float32))

    guided = [run for run in cf.DEFAULT_RUNS if run.guidance_scale is not None]
    return cf.VectorSources(**{**_stub_sources(with_zo=False).__dict__, "denoiser": ConditionedStubDenoiser(),
                               "cond_for": cond_for, "runs": guided})


def test_a_guided_run_records_both_halves_and_ralu_edge_guidance_of_them_replays_clean(tmp_path):
    out = cf.write_vectors(tmp_path / "vectors", _guided_stub_sources())
    vectors = cf.load_vectors(out)
    (run,) = vectors.index["runs"]
    assert run["guidance_scale"] == 3.0 and run["negative_prompt"] == ""
    for call in run["calls"]:
        uncond, cond = vectors.array(call["velocity_uncond"]), vectors.array(call["velocity_cond"])
        np.testing.assert_allclose(cond - uncond, 0.25, atol=1e-5)  # negative row first
        np.testing.assert_array_equal(vectors.array(call["velocity"]), uncond + np.float32(3.0) * (cond - uncond))
    assert cf.check_vectors(out) == []
    cond_file = out / vectors.index["arrays"][run["calls"][2]["velocity_cond"]]["file"]
    (np.fromfile(cond_file, dtype="<f4") + 0.5).astype("<f4").tofile(cond_file)
    assert any("denoiser call 2 guided velocity" in p for p in cf.check_vectors(out))


def test_replay_rng_refuses_a_draw_of_another_shape():
    replay = cf.ReplayRng([cf.Draw("standard_normal", np.zeros((1, 4, 2)))])
    with pytest.raises(AssertionError, match="recorded"):
        replay.standard_normal((1, 5, 2))


def test_projector_error_ignores_signs_and_null_space_rows():
    p = np.eye(4)[2:]
    flipped = np.stack([-p[0], np.eye(4)[0]])  # same determined row up to sign; another null-space row
    assert cf.projector_error(flipped, p, np.array([3.0, 2.0, 1.0, 0.0])) == 0.0
    assert cf.projector_error(np.eye(4)[[1, 3]], p, np.array([3.0, 2.0, 1.0, 0.0])) > 0.1


def test_the_checker_command_line_runs_with_torch_unimportable():
    probe = ("import sys\n"
             "for name in ('torch', 'torchvision', 'diffusers', 'transformers', 'executorch'):\n"
             "    sys.modules[name] = None  # makes `import name` raise ImportError\n"
             "from ralu_export.conformance.cli import main\n"
             f"status = main([{str(VECTORS)!r}])\n"
             "leaked = [m for m in sys.modules if m.split('.')[0] == 'torch' and sys.modules[m] is not None]\n"
             "sys.exit(3 if leaked else status)\n")
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == "" and "0 mismatches" in done.stderr


def test_the_checker_reports_a_folder_that_is_not_one_in_one_line_with_status_2(tmp_path, capsys):
    from ralu_export.conformance.cli import main

    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "make_vectors.py" in err and err.count("\n") == 1


def test_a_changed_padded_id_is_reported(tmp_path):
    import json

    copy = tmp_path / "vectors"
    shutil.copytree(VECTORS, copy)
    index = json.loads((copy / cf.INDEX_NAME).read_text())
    case = index["tokenizers"][1]["cases"][0]
    case["padded"][-1] += 1
    (copy / cf.INDEX_NAME).write_text(json.dumps(index))
    assert any("padded ids of" in p and "tokenizer_2" in p for p in cf.check_vectors(copy))
