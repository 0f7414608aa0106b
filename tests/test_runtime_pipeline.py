"""The NumPy + ONNX Runtime runtime over a real exported bundle of the built-in model (runs under the torch
blocker too): verified loading, modes, determinism, stats, learned embeddings, and refusals."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from ralu_edge.errors import UserError
from ralu_runtime.bundle import open_bundle
from ralu_runtime.pipeline import Pipeline


@pytest.fixture(scope="module")
def pipe(desktop_bundle):
    return Pipeline.from_bundle(desktop_bundle, threads=2)


def test_the_bundle_offers_the_baseline_and_every_flux_preset(pipe):
    assert pipe.modes == ["baseline", "ralu-4x", "ralu-5x", "ralu-7x"]


@pytest.mark.parametrize("mode, nfe, token_steps", [("baseline", 4, 4 * 256), ("ralu-4x", 18, 2838),
                                                    ("ralu-7x", 10, 2 * 64 + 3 * 82 + 5 * 256)])
def test_each_mode_makes_an_image_with_the_expected_cost(pipe, mode, nfe, token_steps):
    res = pipe("a large red circle on the left", mode=mode, steps=4, seed=3)
    assert res.image.shape == (128, 128, 3) and res.image.dtype == np.uint8
    assert res.stats.nfe == nfe and res.stats.image_token_steps == token_steps
    assert 0.0 <= res.stats.host_share_denoise < 1.0


def test_every_session_is_open_before_the_first_image_so_denoising_excludes_loading(desktop_bundle, monkeypatch):
    import ralu_runtime.backends as backends

    pipe = Pipeline.from_bundle(desktop_bundle, threads=1)
    opened = []
    real = backends.open_session
    monkeypatch.setattr(backends, "open_session", lambda *a, **k: opened.append(a[1]) or real(*a, **k))
    pipe("a large red circle on the left", mode="ralu-7x", seed=0)
    assert opened == [] and pipe.seconds_load > 0


def test_same_seed_same_image_and_another_seed_another(pipe):
    a = pipe("a small blue star at the top", mode="ralu-7x", seed=1).image
    b = pipe("a small blue star at the top", mode="ralu-7x", seed=1).image
    c = pipe("a small blue star at the top", mode="ralu-7x", seed=2).image
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_an_unknown_mode_is_refused_with_the_valid_choices(pipe):
    with pytest.raises(UserError, match="choose one of: baseline, ralu-4x"):
        pipe("x", mode="ralu-9x")


def test_a_tampered_file_is_refused_by_name(desktop_bundle, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(desktop_bundle, copy)
    target = copy / "text_encoder_2" / "model.onnx"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(UserError, match="text_encoder_2/model.onnx: sha256 .* the file was altered"):
        open_bundle(copy)


def test_a_truncated_or_missing_file_is_refused_by_name(desktop_bundle, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(desktop_bundle, copy)
    (copy / "vae_decoder" / "model.onnx").write_bytes(b"x")
    with pytest.raises(UserError, match="vae_decoder/model.onnx: 1 bytes but the manifest says"):
        open_bundle(copy)
    (copy / "vae_decoder" / "model.onnx").unlink()
    with pytest.raises(UserError, match="vae_decoder/model.onnx: missing"):
        open_bundle(copy)


def test_a_file_changed_after_caching_is_hashed_again(desktop_bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    copy = tmp_path / "b"
    shutil.copytree(desktop_bundle, copy)
    open_bundle(copy)
    from ralu_runtime.bundle import verify_bundle_files
    assert verify_bundle_files(copy, open_bundle(copy).manifest) == 0  # all from the cache
    tok = copy / "tokenizer_2" / "tokenizer.json"
    tok.write_text(tok.read_text().replace("circle", "circlx"))
    with pytest.raises(UserError, match="tokenizer_2/tokenizer.json"):
        open_bundle(copy)


def test_learned_embeddings_change_the_conditioning_only_through_their_token(desktop_bundle, tmp_path):
    from ralu_runtime.embeddings import save_learned_embeds

    bundle = open_bundle(desktop_bundle)
    rng = np.random.default_rng(0)
    per_encoder = {e.name: rng.standard_normal(e.hidden_size).astype(np.float32) for e in bundle.manifest.text_encoders}
    path = save_learned_embeds(tmp_path / "learned_embeds.safetensors", "<my-shape>", per_encoder, bundle.manifest)
    plain = Pipeline.from_bundle(desktop_bundle, threads=2)
    learned = Pipeline.from_bundle(desktop_bundle, threads=2, embeddings=path)
    same = learned.text.encode("a red circle"), plain.text.encode("a red circle")
    assert np.allclose(same[0].text_states, same[1].text_states, atol=1e-6)
    new = learned.text.encode("a red <my-shape>").text_states
    old = plain.text.encode("a red <my-shape>").text_states
    assert not np.allclose(new, old, atol=1e-3)


def test_ralu_run_writes_pngs_with_parameters_and_json_stats(desktop_bundle, tmp_path):
    from PIL import Image

    out = subprocess.run([sys.executable, "-m", "ralu_runtime.cli_run", "--bundle", str(desktop_bundle),
                          "--prompt", "a large green square in the centre", "--mode", "ralu-7x", "--seed", "5",
                          "--threads", "2", "--out", str(tmp_path / "o"), "--json"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    (image,) = report["images"]
    assert report["mode"] == "ralu-7x" and report["token_steps"] == 1654 and report["out"] == image["out"]
    assert image["nfe"] == 10 and image["mode"] == "ralu-7x"
    assert report["seconds_load"] > 0 and report["seconds_denoise"] > 0
    params = Image.open(image["out"]).text["parameters"]
    assert params.startswith("a large green square in the centre\n") and "Mode: ralu-7x" in params
    assert "Seed: 5" in params and "Bundle: " in params


@pytest.mark.parametrize("args, message", [
    (["--bundle", "/no/such/bundle", "--prompt", "x"], "no such bundle folder"),
    (["--prompt", "x", "--mode", "ralu-3x"], "mode 'ralu-3x' is not in this bundle"),
    (["--prompt", "x", "--embeddings", "/no/such.safetensors"], "no such embeddings file"),
    (["--prompt", "  "], "the prompt is empty"),
    (["--prompt", "a red <my-cat>"], "prompt uses '<my-cat>', which no loaded embedding defines"),
    (["--prompt", "x", "--height", "256"], "this bundle generates 128x128 images, not 256x128"),
    (["--prompt", "x", "--embeddings", "BROKEN"], "not a readable safetensors file"),
    (["--prompt", "x", "--guidance-scale", "5"], "records no classifier-free guidance scale"),
])
def test_ralu_run_user_errors_exit_2_and_write_nothing(desktop_bundle, tmp_path, args, message):
    if "--bundle" not in args:
        args = ["--bundle", str(desktop_bundle)] + args
    if "BROKEN" in args:
        broken = tmp_path / "broken.safetensors"
        broken.write_bytes(b"\x00" * 64)
        args = [str(broken) if a == "BROKEN" else a for a in args]
    out = subprocess.run([sys.executable, "-m", "ralu_runtime.cli_run", *args, "--out", str(tmp_path / "o")],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert message in out.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())


def test_the_same_seed_gives_byte_identical_pngs_across_runs(desktop_bundle, tmp_path):
    outs = []
    for run in ("a", "b"):
        done = subprocess.run([sys.executable, "-m", "ralu_runtime.cli_run", "--bundle", str(desktop_bundle),
                               "--prompt", "a small red star at the bottom", "--mode", "ralu-4x", "--seed", "9",
                               "--threads", "2", "--out", str(tmp_path / run)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        outs.append((tmp_path / run / "000-ralu-4x-seed9.png").read_bytes())
    assert outs[0] == outs[1]
