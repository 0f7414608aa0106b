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

