"""`--cache` through the ORT runtime on a real export of the built-in model (issue 16; runs torch-free too): the
export's TeaCache calibration, every mode with every cache, the counts in --json and the PNG metadata, and the
refusals."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from ralu_edge.errors import UserError
from ralu_edge.manifest import MANIFEST_NAME
from ralu_runtime.pipeline import Pipeline

PROMPT = "a small green triangle at the bottom"


@pytest.fixture(scope="module")
def pipe(desktop_bundle):
    return Pipeline.from_bundle(desktop_bundle, threads=2)


def test_the_export_records_a_teacache_calibration_fitted_on_its_own_runs(pipe):
    calibration = pipe.bundle.manifest.cache
    assert calibration is not None and calibration.signal == "input_rel_l1,sigma_step"
    assert calibration.runs[0].startswith("baseline") and "ralu-4x" in calibration.runs
    assert calibration.samples > 50 and 0.0 < calibration.r2 <= 1.0
    # a larger σ step predicts a larger change of the velocity
    assert calibration.coefficients[1] > 0


@pytest.mark.parametrize("mode", ["baseline", "ralu-4x", "ralu-7x"])
@pytest.mark.parametrize("cache", ["teacache:0.3", "taylorseer:1,2"])
def test_every_mode_takes_every_cache_and_counts_each_step_once(pipe, mode, cache):
    res = pipe(PROMPT, mode=mode, steps=12, seed=2, cache=cache)
    st = res.stats
    assert st.cache == cache and st.calls_made + st.calls_skipped == st.nfe
    assert 0 < st.calls_skipped and st.calls_made >= (1 if mode == "baseline" else 3)
    assert res.image.shape == (128, 128, 3)


def test_no_cache_runs_every_step_and_gives_the_uncached_image(pipe):
    plain = pipe(PROMPT, mode="ralu-7x", seed=2)
    none = pipe(PROMPT, mode="ralu-7x", seed=2, cache="none")
    assert np.array_equal(plain.image, none.image) and none.stats.calls_skipped == 0


def test_a_cached_image_stays_close_to_the_uncached_one(pipe):
    plain = pipe(PROMPT, mode="baseline", steps=28, seed=4).image.astype(np.float64)
    cached = pipe(PROMPT, mode="baseline", steps=28, seed=4, cache="taylorseer:1,2").image.astype(np.float64)
    psnr = 10 * np.log10(255.0 ** 2 / max(np.mean((plain - cached) ** 2), 1e-12))
    assert psnr > 25.0


def test_teacache_on_a_bundle_without_calibration_is_refused_with_the_fix(desktop_bundle, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(desktop_bundle, copy)
    manifest = json.loads((copy / MANIFEST_NAME).read_text())
    del manifest["cache"]
    (copy / MANIFEST_NAME).write_text(json.dumps(manifest))
    old = Pipeline.from_bundle(copy, threads=1)
    with pytest.raises(UserError, match="no TeaCache calibration.*taylorseer"):
        old(PROMPT, cache="teacache")
    assert old(PROMPT, steps=4, cache="taylorseer").stats.calls_skipped == 2  # steps 1 and 3 of 0..3


def _ralu_run(*args):
    return subprocess.run([sys.executable, "-m", "ralu_runtime.cli_run", *args], capture_output=True, text=True)


def test_ralu_run_reports_the_cache_in_json_and_png_metadata(desktop_bundle, tmp_path):
    done = _ralu_run("--bundle", str(desktop_bundle), "--prompt", PROMPT, "--mode", "ralu-7x", "--cache",
                     "teacache:0.5", "--threads", "1", "--out", str(tmp_path / "out"), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["cache"] == "teacache:0.5" and report["calls_made"] + report["calls_skipped"] == 10
    text = Image.open(report["out"]).text["parameters"]
    assert "Cache: teacache:0.5" in text and f"Calls made: {report['calls_made']}" in text


@pytest.mark.parametrize("cache", ["teacache:x", "fastcache", "taylorseer:1,0"])
def test_ralu_run_refuses_a_malformed_cache_in_one_line_before_loading(desktop_bundle, tmp_path, cache):
    done = _ralu_run("--bundle", str(desktop_bundle), "--prompt", PROMPT, "--cache", cache, "--out",
                     str(tmp_path / "out"))
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "e.g." in done.stderr
    assert not (tmp_path / "out").exists()
