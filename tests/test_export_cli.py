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
    (["--model", "shapes", "--target", "desktop", "--precision", "int4"], "invalid choice: 'int4'"),
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


def test_an_output_whose_parent_is_missing_is_refused(capsys, tmp_path):
    line = _refused(capsys, tmp_path, "--model", "shapes", "--target", "desktop",
                    "--out", str(tmp_path / "no" / "bundle"))
    assert "does not exist; create" in line


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
    from ralu_export.bundle import ExportConfig, plan_export
    from ralu_export.families import FAMILIES

    assert set(FAMILIES) == set(FAMILY_TEST_MODELS)
    from ralu_export import tiny_models

    for pipeline_class, model in FAMILY_TEST_MODELS.items():
        if hasattr(tiny_models, model):
            model = str(getattr(tiny_models, model)(tmp_path / model))
        plan = plan_export(ExportConfig(model=model, target="desktop", out=tmp_path / "bundle"))
        assert plan.pipeline_class == pipeline_class
