"""Hardening of the runtime's command lines (issue 13): the manifest trusts nothing outside itself, user mistakes
end in one `error:` sentence with exit status 2 and nothing written, and no finished work is lost. Real
`ralu-run` / `ralu-personalize` processes over a real exported bundle of the built-in model."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ralu_edge.errors import UserError
from ralu_edge.manifest import MANIFEST_NAME
from ralu_runtime.bundle import open_bundle, verify_bundle_files
from tests.conftest import random_image_folder


def _copy(bundle: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    return copy


def _edit_manifest(bundle: Path, edit) -> None:
    path = bundle / MANIFEST_NAME
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})


def _one_error_line(done: subprocess.CompletedProcess) -> str:
    """The refusal's single stderr line; fails on a traceback or any other output."""
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


# ------------------------------------------------------------------------------------ the manifest's paths

def _outside_file(tmp_path: Path) -> Path:
    secret = tmp_path / "outside" / "tokenizer.json"
    secret.parent.mkdir()
    secret.write_text('{"not": "a tokenizer"}')
    return secret


@pytest.mark.parametrize("field", ["tokenizers.file", "tokenizers.files", "text_encoders.token_embeddings"])
@pytest.mark.parametrize("kind", ["absolute", "parent"])
def test_a_manifest_path_outside_its_files_list_is_refused_before_anything_is_read(
        desktop_bundle, tmp_path, field, kind):
    copy = _copy(desktop_bundle, tmp_path)
    secret = _outside_file(tmp_path)
    target = str(secret) if kind == "absolute" else "../" * 12 + str(secret).lstrip("/")
    section, key = field.split(".")

    def edit(data):
        entry = data[section][0]
        entry[key] = [target] + entry[key] if key == "files" else target

    _edit_manifest(copy, edit)
    done = _run("ralu_runtime.cli_run", "--bundle", str(copy), "--prompt", "a red circle", "--steps", "1",
                "--out", str(tmp_path / "o"))
    line = _one_error_line(done)
    assert "which the files list lacks" in line and target in line
    assert not (tmp_path / "o").exists()


def test_a_bundle_file_linked_to_an_identical_file_outside_the_bundle_is_refused(desktop_bundle, tmp_path):
    copy = _copy(desktop_bundle, tmp_path)
    inside = copy / "tokenizer_2" / "tokenizer.json"
    outside = tmp_path / "elsewhere.json"
    shutil.move(inside, outside)
    inside.symlink_to(outside)  # same bytes, so the sha256 matches: only the location is wrong
    with pytest.raises(UserError, match="tokenizer_2/tokenizer.json: a link to .*outside the bundle folder"):
        open_bundle(copy, use_cache=False)


def test_a_link_inside_the_bundle_is_accepted(desktop_bundle, tmp_path):
    copy = _copy(desktop_bundle, tmp_path)
    inside = copy / "tokenizer_2" / "tokenizer.json"
    shutil.move(inside, copy / "moved.json")
    inside.symlink_to(copy / "moved.json")
    open_bundle(copy, use_cache=False)


def test_bundle_path_hands_out_only_vouched_files(desktop_bundle):
    bundle = open_bundle(desktop_bundle)
    assert bundle.path("tokenizer/tokenizer.json").is_file()
    with pytest.raises(UserError, match="not a file the manifest vouches for"):
        bundle.path("../../etc/passwd")


# ------------------------------------------------------------------------------ the verified-files cache

def test_bytes_flipped_with_the_mtime_put_back_are_found_on_the_next_run(desktop_bundle, tmp_path):
    copy = _copy(desktop_bundle, tmp_path)
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    args = ("ralu_runtime.cli_run", "--bundle", str(copy), "--prompt", "a red circle", "--steps", "1",
            "--threads", "1")
    first = _run(*args, "--out", str(tmp_path / "a"), env=env)
    assert first.returncode == 0, first.stderr
    assert (tmp_path / "cache" / "ralu-edge" / "verified-files.json").is_file()
    weights = copy / "transformer" / "model.onnx_data"
    before = weights.stat()
    data = bytearray(weights.read_bytes())
    data[len(data) // 3] ^= 0x5A
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert weights.stat().st_mtime_ns == before.st_mtime_ns and weights.stat().st_size == before.st_size
    second = _run(*args, "--out", str(tmp_path / "b"), env=env)
    assert "transformer/model.onnx_data: sha256" in _one_error_line(second)
    assert not (tmp_path / "b").exists()



# ------------------------------------------------------------------ ralu-run: one sentence, nothing written

def _ralu_run(bundle: Path, out: Path, *args: str) -> subprocess.CompletedProcess:
    return _run("ralu_runtime.cli_run", "--bundle", str(bundle), "--steps", "1", "--threads", "1",
                "--out", str(out), *args)


@pytest.mark.parametrize("args, message", [
    (["--prompt", "x", "--seed", "-1"], "--seed must be 0 or more, got -1"),
    (["--prompt", "x", "--threads", "-4"], "--threads must be 0 (all cores) or a positive count, got -4"),
    (["--prompt", "x", "--steps", "0"], "--steps must be at least 1, got 0"),
    (["--prompt", "a red circle", "--prompt", "   "], "the prompt is empty"),
    (["--prompt", "a red circle", "--prompt", "a <nope>"], "prompt uses '<nope>'"),
])
def test_ralu_run_refuses_before_writing_anything(desktop_bundle, tmp_path, args, message):
    done = _ralu_run(desktop_bundle, tmp_path / "o", *args)
    assert message in _one_error_line(done)
    assert not (tmp_path / "o").exists()


def test_ralu_run_refuses_an_out_that_is_a_file(desktop_bundle, tmp_path):
    taken = tmp_path / "o"
    taken.write_text("mine")
    done = _ralu_run(desktop_bundle, taken, "--prompt", "a red circle")
    assert "exists and is not a folder" in _one_error_line(done)
    assert taken.read_text() == "mine"


def test_ralu_run_refuses_a_png_path_taken_by_a_folder_before_the_first_image(desktop_bundle, tmp_path):
    out = tmp_path / "o"
    (out / "001-baseline-seed1.png").mkdir(parents=True)  # the second prompt's image
    done = _ralu_run(desktop_bundle, out, "--prompt", "a red circle", "--prompt", "a blue star")
    assert "001-baseline-seed1.png: exists and is not a file" in _one_error_line(done)
    assert sorted(p.name for p in out.iterdir()) == ["001-baseline-seed1.png"]


def test_a_manifest_with_a_wrong_token_channels_is_refused_in_one_sentence(desktop_bundle, tmp_path):
    copy = _copy(desktop_bundle, tmp_path)
    _edit_manifest(copy, lambda d: d["denoiser"].__setitem__("token_channels", 12))
    done = _ralu_run(copy, tmp_path / "o", "--prompt", "a red circle")
    assert "denoiser.token_channels is 12" in _one_error_line(done)
    assert not (tmp_path / "o").exists()


def test_a_graph_spec_that_disagrees_with_the_graph_file_is_refused_at_load(desktop_bundle, tmp_path):
    copy = _copy(desktop_bundle, tmp_path)

    def edit(data):
        graph = next(g for g in data["graphs"] if g["role"] == "vae_decoder")
        graph["inputs"][0]["name"] = "latents"

    _edit_manifest(copy, edit)
    done = _ralu_run(copy, tmp_path / "o", "--prompt", "a red circle")
    assert "vae_decoder/model.onnx: the graph has no input 'latents'" in _one_error_line(done)


def _resign(bundle: Path, relative: str) -> None:
    """Make the manifest vouch for the file's new bytes, as a careless re-packager would."""
    import hashlib

    data = (bundle / relative).read_bytes()

    def edit(manifest):
        entry = next(f for f in manifest["files"] if f["path"] == relative)
        entry["sha256"], entry["size"] = hashlib.sha256(data).hexdigest(), len(data)

    _edit_manifest(bundle, edit)


def test_a_nan_graph_output_is_an_error_naming_the_graph_not_a_black_image(desktop_bundle, tmp_path):
    import numpy as np

    copy = _copy(desktop_bundle, tmp_path)
    weights = copy / "transformer" / "model.onnx_data"
    weights.write_bytes(np.full(weights.stat().st_size // 4, np.nan, np.float32).tobytes())
    _resign(copy, "transformer/model.onnx_data")
    done = _ralu_run(copy, tmp_path / "o", "--prompt", "a red circle")
    assert "transformer/denoiser.onnx: output 'velocity' holds NaN or infinite values" in _one_error_line(done)
    assert not (tmp_path / "o").exists()


def test_a_long_prompt_is_cut_with_one_warning_per_tokenizer(desktop_bundle, tmp_path):
    prompt = "a red circle on the left and " * 8 + "a tiny green star"
    done = _ralu_run(desktop_bundle, tmp_path / "o", "--prompt", prompt)
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 2 and all("'a tiny green star' is ignored" in w or "is ignored" in w for w in warnings)
    assert "tokenizer," in warnings[0] and "tokenizer_2," in warnings[1]


def test_compare_labels_each_panel_and_json_reports_peak_memory(desktop_bundle, tmp_path):
    import numpy as np
    from PIL import Image

    done = _ralu_run(desktop_bundle, tmp_path / "o", "--prompt", "a red circle", "--compare", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert 50 < report["peak_rss_mb"] < 4096
    grid_path = next(r["out"] for r in report["images"] if r["mode"] == "compare")
    grid = np.asarray(Image.open(grid_path))
    panel = np.asarray(Image.open(report["images"][0]["out"]))
    band = grid.shape[0] - panel.shape[0]
    assert band > 0 and np.array_equal(grid[band:, :panel.shape[1]], panel)  # the image under its label
    labels = grid[:band]
    assert (labels < 128).any() and (labels == 255).mean() > 0.5  # dark text on white


# --------------------------------------------------------- ralu-personalize: validate outputs before work



def _personalize(bundle: Path, images: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return _run("ralu_runtime.cli_personalize", "--bundle", str(bundle), "--images", str(images), "--token",
                "<blob>", "--init-word", "square", "--threads", "1", "--out", str(out), *extra)


@pytest.mark.parametrize("case, message", [
    ("out_is_folder", "exists and is not a file"),
    ("threads", "--threads must be 0 (all cores) or a positive count, got -4"),
    ("tiny_image", "1x1 pixels, too small to learn from"),
])
def test_ralu_personalize_refuses_before_the_first_step_and_leaves_nothing(desktop_bundle, tmp_path, case, message):
    images = random_image_folder(tmp_path / "imgs", size=1 if case == "tiny_image" else 128)
    out = tmp_path / "work" / "learned.safetensors"
    out.parent.mkdir()
    if case == "out_is_folder":
        out.mkdir()
    extra = ["--threads", "-4"] if case == "threads" else []
    done = _personalize(desktop_bundle, images, out, "--steps", "3", "--checkpoint-every", "1", *extra)
    assert message in _one_error_line(done)
    left = sorted(p.name for p in out.parent.iterdir())
    assert left == (["learned.safetensors"] if case == "out_is_folder" else [])
    assert not (out.is_dir() and any(out.iterdir()))


def test_resume_without_a_checkpoint_says_it_starts_over(desktop_bundle, tmp_path):
    images = random_image_folder(tmp_path / "imgs", n=1)
    done = _personalize(desktop_bundle, images, tmp_path / "l.safetensors", "--steps", "1", "--resume", "--json")
    assert done.returncode == 0, done.stderr
    assert f"warning: no checkpoint at {tmp_path / 'l.safetensors.checkpoint'} to resume from" in done.stderr
    assert json.loads(done.stdout)["resumed_from"] == 0 and json.loads(done.stdout)["peak_rss_mb"] > 50


def test_identical_runs_write_identical_learned_embedding_files_readable_by_others(desktop_bundle, tmp_path):
    import stat

    images = random_image_folder(tmp_path / "imgs", n=1)
    files = []
    for name in ("a", "b"):
        done = _personalize(desktop_bundle, images, tmp_path / f"{name}.safetensors", "--steps", "2", "--seed", "4")
        assert done.returncode == 0, done.stderr
        files.append(tmp_path / f"{name}.safetensors")
    assert files[0].read_bytes() == files[1].read_bytes()
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o666 & ~umask


@pytest.mark.parametrize("problem, message", [
    ("nan", "holds NaN, infinite or out-of-range values"),
    ("int", "holds int32 values, not floats"),
    ("short", "has 3 values but text_encoder needs 128"),
])
def test_a_damaged_embeddings_file_is_refused_in_one_sentence(desktop_bundle, tmp_path, problem, message):
    import numpy as np
    from safetensors.numpy import save_file

    vectors = {"clip_l": np.zeros((1, 128), np.float32), "t5": np.zeros((1, 128), np.float32)}
    if problem == "nan":
        vectors["t5"][0, 5] = np.nan
    elif problem == "int":
        vectors["clip_l"] = np.zeros((1, 128), np.int32)
    else:
        vectors["clip_l"] = np.zeros((1, 3), np.float32)
    path = tmp_path / "e.safetensors"
    save_file(vectors, str(path), metadata={"token": "<blob>"})
    done = _ralu_run(desktop_bundle, tmp_path / "o", "--prompt", "a <blob>", "--embeddings", str(path))
    assert message in _one_error_line(done)
    assert not (tmp_path / "o").exists()


def test_a_graph_onnx_runtime_cannot_load_is_one_sentence_without_its_log_lines(desktop_bundle, tmp_path):
    """ORT logs its own error line to the terminal before raising; only our sentence may reach stderr."""
    copy = _copy(desktop_bundle, tmp_path)
    data = copy / "vae_decoder" / "model.onnx_data"
    data.write_bytes(data.read_bytes()[:data.stat().st_size // 2])
    _resign(copy, "vae_decoder/model.onnx_data")
    done = _ralu_run(copy, tmp_path / "o", "--prompt", "a red circle")
    assert "vae_decoder/model.onnx: ONNX Runtime could not load it" in _one_error_line(done)
    assert not (tmp_path / "o").exists()
