"""`ralu-export` refuses bad requests before loading any model: one `error:` sentence on stderr, exit
status 2, and nothing written next to --out."""

import subprocess
import sys

import pytest

from ralu_export.cli import main


def _refused(capsys, tmp_path, *args: str) -> str:
    before = sorted(p.name for p in tmp_path.iterdir())
    try:
        status = main(list(args))
    except SystemExit as e:  # argparse's own refusals (choices, types) also exit 2
        status = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    return err[-1]


@pytest.mark.parametrize("args, words", [
    (["--model", "no-such-model", "--target", "desktop"], "neither a built-in model"),
    (["--model", "shapes", "--target", "desktop", "--height", "100"], "height 100 is not a positive multiple of 16"),
    (["--model", "shapes", "--target", "desktop", "--width", "0"], "width 0 is not a positive multiple"),
    (["--model", "shapes", "--target", "android", "--presets", "flux-4x,flux-9x"], "unknown RALU preset 'flux-9x'"),
    (["--model", "shapes", "--target", "tv"], "invalid choice: 'tv'"),
    (["--model", "shapes", "--target", "desktop", "--precision", "int2"], "invalid choice: 'int2'"),
    (["--model", "shapes", "--target", "android", "--attention", "fused"], "--attention fused (ONNX Runtime's "
                                                                            "MultiHeadAttention) is for the desktop"),
])
def test_bad_requests_exit_2_with_one_sentence_and_write_nothing(capsys, tmp_path, args, words):
    line = _refused(capsys, tmp_path, *args, "--out", str(tmp_path / "bundle"))
    assert words in line


def test_a_folder_that_is_not_a_pipeline_is_refused(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    line = _refused(capsys, tmp_path, "--model", str(tmp_path / "empty"), "--target", "desktop",
                    "--out", str(tmp_path / "bundle"))
    assert "no model_index.json" in line


def test_an_existing_bundle_is_kept_without_force(capsys, tmp_path):
    (tmp_path / "bundle").mkdir()
    (tmp_path / "bundle" / "keep.txt").write_text("old")
    line = _refused(capsys, tmp_path, "--model", "shapes", "--target", "desktop", "--out", str(tmp_path / "bundle"))
    assert "already exists; pass --force" in line
    assert (tmp_path / "bundle" / "keep.txt").read_text() == "old"


def test_an_output_path_that_is_a_file_is_refused_even_with_force(capsys, tmp_path):
    (tmp_path / "bundle").write_text("not a folder")
    line = _refused(capsys, tmp_path, "--model", "shapes", "--target", "desktop", "--out", str(tmp_path / "bundle"),
                    "--force")
    assert "is an existing file" in line


def test_an_output_below_a_file_is_refused(capsys, tmp_path):
    (tmp_path / "plain").write_text("a file")
    line = _refused(capsys, tmp_path, "--model", "shapes", "--target", "desktop",
                    "--out", str(tmp_path / "plain" / "sub" / "bundle"))
    assert "plain is a file, not a folder" in line


def test_only_temporary_folders_without_a_live_exporter_are_removed(tmp_path):
    """A killed export's `<out>.tmp-*` folder is removed by the next export; one whose exporter still runs (it
    holds the folder's flock, here a real second process) is left alone."""
    import time

    from ralu_export.bundle import _remove_stale_temporaries

    stale, live = tmp_path / "b.tmp-dead", tmp_path / "b.tmp-live"
    for folder in (stale, live):
        folder.mkdir()
        (folder / "part.onnx").write_bytes(b"x")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(live)!r}, os.O_RDONLY); fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "print('locked', flush=True); time.sleep(60)")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        (tmp_path / "other.tmp-x").mkdir()  # another bundle's temporary folder is not ours to judge
        _remove_stale_temporaries(tmp_path / "b")
        assert not stale.exists() and (live / "part.onnx").exists() and (tmp_path / "other.tmp-x").exists()
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.05)
    _remove_stale_temporaries(tmp_path / "b")
    assert not live.exists()


@pytest.mark.slow
def test_a_killed_export_leaves_a_folder_the_next_export_removes_and_parents_are_created(tmp_path):
    import os
    import signal
    import time

    out = tmp_path / "new" / "parents" / "bundle"
    cmd = [sys.executable, "-m", "ralu_export.cli", "--model", "shapes", "--target", "android", "--quiet",
           "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not list(out.parent.glob("bundle.tmp-*")):
        time.sleep(0.05)
    time.sleep(1.0)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert [p.name.startswith("bundle.tmp-") for p in out.parent.iterdir()] == [True]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(p.name for p in out.parent.iterdir()) == ["bundle"]
    assert done.stderr == "" and done.stdout == f"{out}\n"  # --quiet: nothing but errors


def test_an_android_export_prints_only_its_progress_and_parity_table(tmp_path):
    """The README's main command, as a new user runs it: no library chatter on stderr, only one progress line
    per exported graph, one for the ORT conversion, and the parity table (issue 13: it used to be ~80 lines).
    The parent of --out does not exist yet: the export creates it, as `mkdir -p` would."""
    out = tmp_path / "not" / "yet" / "bundle"
    done = subprocess.run([sys.executable, "-m", "ralu_export.cli", "--model", "shapes", "--target", "android",
                           "--out", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout == f"{out}\n"
    from ralu_edge.manifest import read_manifest
    from ralu_export.cli import parity_table

    table = parity_table(read_manifest(out))
    lines = done.stderr.splitlines()
    progress = lines[:-len(table.splitlines())]
    assert "\n".join(lines[len(progress):]) == table
    graphs = read_manifest(out).graphs
    # one line per graph, the ORT conversion, the LoRA name record and the TeaCache calibration: one line each
    assert [line.split(":")[0] for line in progress] == (
        ["INFO ralu_export.onnx_graphs"] * len(graphs) + ["INFO ralu_export.ort_format", "INFO ralu_export.lora_names",
                                                          "INFO ralu_export.cache_calibration"]), done.stderr


def test_help_runs_as_a_module_and_names_every_target():
    done = subprocess.run([sys.executable, "-m", "ralu_export.cli", "--help"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0
    for target in ("desktop", "android", "executorch", "ios"):
        assert target in done.stdout


# Every registered export family needs a tiny model that the bundle tests export (STYLE.md "Tests").
# A value is a built-in name or a builder writing the tiny pipeline folder (ralu_export.tiny_models).
FAMILY_TEST_MODELS = {"FluxPipeline": "shapes", "StableDiffusion3Pipeline": "build_tiny_sd3"}


def test_every_registered_family_has_a_tiny_test_model(tmp_path):
    from ralu_export.families import FAMILIES
    from ralu_export.plan import ExportConfig, plan_export

    assert set(FAMILIES) == set(FAMILY_TEST_MODELS)
    from ralu_export import tiny_models

    for pipeline_class, model in FAMILY_TEST_MODELS.items():
        if hasattr(tiny_models, model):
            model = str(getattr(tiny_models, model)(tmp_path / model))
        plan = plan_export(ExportConfig(model=model, target="desktop", out=tmp_path / "bundle"))
        assert plan.pipeline_class == pipeline_class
