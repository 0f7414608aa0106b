"""The command lines' one contract for user mistakes (DESIGN.md "Conventions"): one `error:` sentence on stderr,
exit status 2, nothing written; Ctrl-C exits 130. Every CLI ends through `ralu_edge.errors.run_cli`, so the
contract is tested once there, then per CLI on the refusals that need no exported bundle (in-process, with one
`python -m` run per CLI for its wiring). Refusals that need a bundle live beside the bundle's own tests
(test_runtime_hardening.py, test_runtime_pipeline.py, test_runtime_personalize.py, test_export_cli.py)."""

import ast
import importlib
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

# Imported at collection, before capsys swaps stderr: these libraries bind log handlers to the stderr of their
# import, and a handler bound to one test's capture would outlive it (and their import-time warnings are not ours).
import diffusers  # noqa: F401
import pytest
import torch  # noqa: F401

from ralu_edge.errors import UserError, run_cli

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
PACKAGE_FOLDERS = {"ralu_edge": "ralu_edge", "ralu_runtime": "runtime", "ralu_export": "export"}


# ------------------------------------------------------------------------------------ the epilogue, once

def test_run_cli_gives_the_body_status_and_zero_for_none():
    assert run_cli(lambda: None) == 0
    assert run_cli(lambda: 1) == 1


def test_a_user_error_is_one_line_exit_2_after_the_clean_up(capsys):
    events = []

    def body():
        raise UserError("x.png: no such image file.")

    assert run_cli(body, cleanup=lambda: events.append("cleanup")) == 2
    assert capsys.readouterr().err == "error: x.png: no such image file.\n"
    assert events == ["cleanup"]


def test_ctrl_c_exits_130_with_its_message_after_the_clean_up(capsys):
    events = []

    def body():
        raise KeyboardInterrupt

    assert run_cli(body, cleanup=lambda: events.append("cleanup"), interrupted="interrupted; rerun") == 130
    assert capsys.readouterr().err == "interrupted; rerun\n"
    assert events == ["cleanup"]


def test_a_bug_keeps_its_traceback_and_skips_the_clean_up():
    events = []

    def body():
        raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        run_cli(body, cleanup=lambda: events.append("cleanup"))
    assert events == []


def _module_file(module: str) -> Path:
    package, _, rest = module.partition(".")
    return ROOT / PACKAGE_FOLDERS[package] / (rest.replace(".", "/") + ".py")


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_every_command_line_ends_through_run_cli(script):
    module = SCRIPTS[script].split(":")[0]
    tree = ast.parse(_module_file(module).read_text())
    main = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main")
    calls = {n.func.id for n in ast.walk(main) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert "run_cli" in calls, f"{script}: main() does not end through ralu_edge.errors.run_cli"


def test_only_run_cli_catches_ctrl_c():
    """The epilogue is written once: no other module of the three packages or benchmarks/ catches Ctrl-C."""
    catchers = []
    for folder in (*PACKAGE_FOLDERS.values(), "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ExceptHandler) and node.type is not None \
                        and "KeyboardInterrupt" in ast.unparse(node.type):
                    catchers.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert [c for c in catchers if not c.startswith("ralu_edge/errors.py:")] == []


# ------------------------------------------------------------------- per CLI: refusals that need no bundle

def _incomplete_pipeline(tmp_path: Path) -> str:
    pipe = tmp_path / "pipe"
    pipe.mkdir()
    (pipe / "model_index.json").write_text("{}")
    (pipe / "training_report.json").write_text('{"latent_scaling_factor": 1, "latent_shift_factor": 0}')
    return str(pipe)


def _corrupt_builtin_copy(tmp_path: Path) -> str:
    from ralu_export import builtin_model_path

    bad = tmp_path / "bad"
    shutil.copytree(builtin_model_path("shapes"), bad)
    weights = bad / "transformer" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    return str(bad)


def _empty_folder(tmp_path: Path) -> str:
    (tmp_path / "empty").mkdir()
    return str(tmp_path / "empty")


def _file(tmp_path: Path) -> str:
    (tmp_path / "taken").write_text("mine")
    return str(tmp_path / "taken")


def _checkpoint_taken(tmp_path: Path) -> str:
    """An --out whose checkpoint folder's name is taken by a file."""
    (tmp_path / "e.safetensors.checkpoint").write_text("mine")
    return str(tmp_path / "e.safetensors")


# (module, argv, the refusal's words); "OUT" is an output path under tmp_path, "NONE" a missing file, and
# callables build an input under tmp_path before the run.
REFUSALS = {
    "eval-unknown-model": ("ralu_export.eval.cli", ["--model", "no-such-model"],
                           "error: model 'no-such-model' is neither a built-in model"),
    "eval-not-a-pipeline": ("ralu_export.eval.cli", ["--model", _empty_folder], "no model_index.json"),
    "eval-bundle-diffusers-noise": ("ralu_export.eval.cli", ["--bundle", _empty_folder, "--noise", "diffusers"],
                                    "needs --model"),
    "eval-negative-limit": ("ralu_export.eval.cli", ["--model", "shapes", "--limit", "-1"],
                            "error: --limit and --threads must be 0 (all) or positive"),
    "eval-negative-threads": ("ralu_export.eval.cli", ["--model", "shapes", "--threads", "-1"],
                              "error: --limit and --threads must be 0 (all) or positive"),
    "generate-unknown-model": ("ralu_export.generate", ["--model", "no-such-model", "--prompt", "x", "--out", "OUT"],
                               "error: model 'no-such-model' is neither a built-in model"),
    "generate-corrupt-model": ("ralu_export.generate", ["--model", _corrupt_builtin_copy, "--prompt", "x",
                                                        "--out", "OUT"], "could not be loaded"),
    "generate-missing-prompts": ("ralu_export.generate", ["--prompts", "NONE", "--out", "OUT"],
                                 "no such prompts file"),
    "generate-bad-size": ("ralu_export.generate", ["--prompt", "x", "--size", "100", "--out", "OUT"],
                          "--size a multiple of 16 (got 28, 100)"),
    "train-assemble-no-report": ("ralu_export.training.cli", ["assemble", "--weights", _empty_folder, "--out", "OUT",
                                                              "--classifier-out", "NONE"], "no training_report.json"),
    "train-unknown-backgrounds": ("ralu_export.training.cli", ["all", "--work", "OUT", "--weights-out", "NONE",
                                                               "--backgrounds", "textured"],
                                  "--backgrounds must be one of"),
    "train-bad-shape-weights": ("ralu_export.training.cli", ["all", "--work", "OUT", "--weights-out", "NONE",
                                                             "--shape-weights", "circle:2,ellipse:3"],
                                "--shape-weights 'circle:2,ellipse:3': 'ellipse:3' is not SHAPE:WEIGHT"),
    "run-missing-prompts": ("ralu_runtime.cli_run", ["--bundle", "NONE", "--prompts", "NONE", "--out", "OUT"],
                            "no such prompts file"),
    "run-no-prompt": ("ralu_runtime.cli_run", ["--bundle", "NONE", "--out", "OUT"], "error: no prompt given"),
    "run-out-is-a-file": ("ralu_runtime.cli_run", ["--bundle", "NONE", "--prompt", "x", "--out", _file],
                          "exists and is not a folder"),
    "personalize-no-out-folder": ("ralu_runtime.cli_personalize", [
        "--bundle", "NONE", "--images", "NONE", "--token", "<x>", "--init-word", "square", "--out", "NONE/e.st"],
        "the output folder does not exist"),
    "personalize-negative-seed": ("ralu_runtime.cli_personalize", [
        "--bundle", "NONE", "--images", "NONE", "--token", "<x>", "--init-word", "square", "--seed", "-1",
        "--out", "OUT"], "error: --seed must be 0 or more, got -1"),
    "personalize-checkpoint-is-a-file": ("ralu_runtime.cli_personalize", [
        "--bundle", "NONE", "--images", "NONE", "--token", "<x>", "--init-word", "square",
        "--out", _checkpoint_taken], "exists and is not a checkpoint folder"),
}
# `ralu-train all` writes its tokenizers into --work before it opens --init-weights (export/training/run.py;
# reported in issue 14, left because a training run depends on that code).
REFUSALS_THAT_WRITE = {
    "train-incomplete-init-weights": ("ralu_export.training.cli", [
        "all", "--work", "OUT", "--weights-out", "NONE", "--num-images", "4", "--workers", "1",
        "--init-weights", _incomplete_pipeline], "has no transformer/diffusion_pytorch_model.safetensors"),
}


def _argv(args: list, tmp_path: Path) -> list[str]:
    def one(a):
        if callable(a):
            return a(tmp_path)
        return a.replace("OUT", str(tmp_path / "out")).replace("NONE", str(tmp_path / "none"))
    return [one(a) for a in args]


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _refusal_line(module: str, argv: list[str], capsys) -> str:
    """Run the CLI's main in this process; its one stderr line."""
    try:
        status = importlib.import_module(module).main(argv)
    except SystemExit as e:
        status = e.code
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert status == 2, lines
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_a_bad_input_is_one_sentence_exit_2_and_nothing_written(case, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    module, args, words = REFUSALS[case]
    argv = _argv(args, tmp_path)
    before = _listing(tmp_path)
    assert words in _refusal_line(module, argv, capsys)
    assert _listing(tmp_path) == before


@pytest.mark.parametrize("case", sorted(REFUSALS_THAT_WRITE))
def test_a_bad_input_is_one_sentence_and_exit_2_though_it_writes(case, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    module, args, words = REFUSALS_THAT_WRITE[case]
    assert words in _refusal_line(module, _argv(args, tmp_path), capsys)
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize("case", ["eval-negative-limit", "generate-missing-prompts", "train-assemble-no-report",
                                  "run-no-prompt", "personalize-negative-seed"])
def test_each_command_line_refuses_through_python_m_with_one_last_line(case, tmp_path):
    """The wiring of `sys.exit(main())`: the process's exit status and the refusal as its last stderr line (module
    imports may log before it; the in-process cases above check that the refusal is the only line of ours)."""
    module, args, words = REFUSALS[case]
    done = subprocess.run([sys.executable, "-m", module, *_argv(args, tmp_path)], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 2, done.stderr[-2000:]
    assert words in done.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------- per CLI: Ctrl-C

@pytest.mark.parametrize("out_existed", [False, True])
def test_ctrl_c_in_ralu_run_exits_130_and_takes_back_only_an_out_it_created(out_existed, desktop_bundle, tmp_path,
                                                                          capsys, monkeypatch):
    # the real pipeline and every check before the first image; Ctrl-C arrives as generation starts
    from ralu_runtime import cli_run

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_run, "generate_images", interrupted)
    out = tmp_path / "out"
    if out_existed:
        out.mkdir()
    assert cli_run.main(["--bundle", str(desktop_bundle), "--prompt", "x", "--out", str(out)]) == 130
    assert capsys.readouterr().err == "interrupted\n"
    assert out.is_dir() == out_existed


def test_ctrl_c_in_ralu_personalize_exits_130_and_says_how_to_resume(tmp_path, capsys, monkeypatch):
    from ralu_runtime import cli_personalize
    from ralu_runtime.personalize import Personalizer

    def interrupted(cls, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Personalizer, "from_bundle", classmethod(interrupted))
    status = cli_personalize.main(["--bundle", str(tmp_path), "--images", str(tmp_path), "--token", "<x>",
                                   "--init-word", "square", "--out", str(tmp_path / "e.safetensors")])
    assert status == 130
    assert capsys.readouterr().err == "interrupted; rerun with --resume to continue from the last checkpoint\n"
