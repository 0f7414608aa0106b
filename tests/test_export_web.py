"""`ralu-export --target web` (issue 18 item 1): the graphs laid out the way onnxruntime-web loads them, and the
same images as the desktop bundle through the Python runtime. The browser side (the page on onnxruntime-web
against ralu-run on this bundle) is web_demo's `npm test`."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from ralu_edge.errors import UserError
from ralu_edge.manifest import read_manifest, verify_files
from tests.conftest import exported_bundle, random_image_folder


@pytest.fixture(scope="module")
def web_bundle(request) -> Path:
    return exported_bundle(request, "web")


def test_each_folder_has_its_own_weights_file_and_the_page_gets_only_what_it_runs(web_bundle):
    manifest = read_manifest(web_bundle)
    verify_files(web_bundle, manifest)
    assert manifest.target == "web"
    assert sorted(g.role for g in manifest.graphs) == ["denoiser", "text_encoder", "text_encoder", "vae_decoder"]
    data_files = [d for g in manifest.graphs for d in g.data_files]
    for graph in manifest.graphs:
        folder = graph.file.split("/")[0]
        assert graph.data_files == (f"{folder}/{folder}.onnx_data",), graph.name
    # onnxruntime-web keys external data by file name: no two graphs may share one
    assert len({Path(d).name for d in data_files}) == len(data_files)
    assert not (web_bundle / "vae_encoder").exists() and not (web_bundle / "transformer" / "model.onnx").exists()
    assert "required" in json.loads((web_bundle / "ralu_config.json").read_text())["notes"]["web.layout"]


def test_learned_token_inputs_are_plain_required_inputs(web_bundle):
    manifest = read_manifest(web_bundle)
    for encoder in manifest.text_encoders:
        graph = manifest.graph(encoder.graph)
        model = onnx.load(str(web_bundle / graph.file), load_external_data=False)
        inputs = {i.name for i in model.graph.input}
        initializers = {i.name for i in model.graph.initializer}
        for name in (encoder.placeholder_ids_input, encoder.placeholder_embeds_input):
            assert name in inputs and name not in initializers, (encoder.name, name)
            assert not graph.input(name).optional


def test_the_web_bundle_makes_the_desktop_bundles_images(web_bundle, desktop_bundle):
    """Same weights and graphs but for the attention: the desktop denoiser runs ORT's fused MultiHeadAttention
    (export/attention_fusion.py), the web one the exported MatMul/Softmax/MatMul, whose sums round differently;
    after decoding, at most a handful of pixel values move by one level."""
    from ralu_runtime.pipeline import Pipeline

    web, desktop = Pipeline.from_bundle(web_bundle, threads=1), Pipeline.from_bundle(desktop_bundle, threads=1)
    assert web.modes == desktop.modes
    for mode in ("baseline", "ralu-7x"):
        a = web("a small blue star at the top", mode=mode, steps=4, seed=2).image
        b = desktop("a small blue star at the top", mode=mode, steps=4, seed=2).image
        moved = np.abs(a.astype(np.int16) - b)
        assert moved.max() <= 1 and (moved > 0).mean() < 1e-3, (mode, moved.max(), (moved > 0).mean())


def test_personalizing_on_a_web_bundle_says_where_to_personalize(web_bundle, tmp_path):
    images = random_image_folder(tmp_path / "photos")
    out = tmp_path / "out" / "learned.safetensors"
    out.parent.mkdir()
    done = subprocess.run([sys.executable, "-m", "ralu_runtime.cli_personalize", "--bundle", str(web_bundle),
                           "--images", str(images), "--token", "<blob>", "--init-word", "square", "--out", str(out),
                           "--steps", "1"],
                          capture_output=True, text=True)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "this web bundle has no VAE encoder graph" in done.stderr.strip().splitlines()[-1]
    assert list(out.parent.iterdir()) == []


def test_a_model_too_large_for_webassembly_memory_is_refused_before_it_loads(monkeypatch, tmp_path):
    from ralu_export import targets
    from ralu_export.plan import ExportConfig, plan_export, weight_bytes

    config = ExportConfig(model="shapes", target="web", out=tmp_path / "web")
    weights = weight_bytes(plan_export(config))
    # the built-in model's fp32 parameters (transformer, both text encoders, the VAE) at 4 bytes each
    assert 25e6 < weights < 35e6
    int8 = weight_bytes(plan_export(dataclasses.replace(config, precision="int8")))
    assert int8 < weights / 2
    # the limit is the target's data: pretend WebAssembly holds less than this model, as it does for FLUX.1
    monkeypatch.setitem(targets.TARGET_SPECS, "web",
                        dataclasses.replace(targets.TARGET_SPECS["web"], max_weight_bytes=weights - 1))
    with pytest.raises(UserError, match=r"^the web bundle of shapes would hold 2\d MiB of weights \(fp32\), over the 2\d MiB its runtime can hold"):
        plan_export(config)
    assert plan_export(dataclasses.replace(config, precision="int8")).target.name == "web"
    assert not (tmp_path / "web").exists()
