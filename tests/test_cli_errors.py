"""User mistakes end in one sentence on stderr and exit status 2, with nothing written."""

import subprocess
import sys
from pathlib import Path

import pytest


def _run(module: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=cwd)


def _last_line(stderr: str) -> str:
    return [line for line in stderr.strip().splitlines() if line.strip()][-1]


@pytest.mark.parametrize("module", ["ralu_export.eval.cli", "ralu_export.generate"])
def test_unknown_builtin_model_name_exits_2_with_one_sentence(module, tmp_path):
    out = _run(module, "--model", "no-such-model", "--prompt", "x", "--out", str(tmp_path / "o")) \
        if module.endswith("generate") else _run(module, "--model", "no-such-model")
    assert out.returncode == 2
    assert _last_line(out.stderr).startswith("error: model 'no-such-model' is neither a built-in model")
    assert not (tmp_path / "o").exists()


def test_folder_without_model_index_exits_2(tmp_path):
    out = _run("ralu_export.eval.cli", "--model", str(tmp_path))
    assert out.returncode == 2 and "no model_index.json" in _last_line(out.stderr)


def test_corrupt_model_folder_exits_2(tmp_path):
    import shutil

    from ralu_export import builtin_model_path

    bad = tmp_path / "bad"
    shutil.copytree(builtin_model_path("shapes"), bad)
    weights = bad / "transformer" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    out = _run("ralu_export.generate", "--model", str(bad), "--prompt", "x", "--out", str(tmp_path / "o"))
    assert out.returncode == 2, out.stderr
    assert "could not be loaded" in _last_line(out.stderr)
    assert not (tmp_path / "o").exists()


def test_missing_prompts_file_exits_2(tmp_path):
    out = _run("ralu_export.generate", "--prompts", str(tmp_path / "none.txt"), "--out", str(tmp_path / "o"))
    assert out.returncode == 2 and "no such prompts file" in _last_line(out.stderr)


@pytest.mark.parametrize("flag", ["--limit", "--threads"])
def test_eval_refuses_a_negative_count(flag):
    out = _run("ralu_export.eval.cli", "--model", "shapes", flag, "-1")
    assert out.returncode == 2
    assert _last_line(out.stderr).startswith("error: --limit and --threads must be 0 (all) or positive")
