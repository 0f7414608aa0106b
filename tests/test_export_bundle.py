"""Whole-bundle exports of the built-in `shapes` model (slow: ~1-2 min per export on 2 cores): desktop fp32
in optimum's layout (ORTDiffusionPipeline generates the same image as diffusers), android with int8
denoiser and text encoders as .ort files, parity of every graph recorded in a manifest that verifies, and
failures that leave nothing behind (fast: the graph stage is replaced by one that fails)."""

import copy
import shutil

import numpy as np
import pytest
import torch

from ralu_edge.errors import UserError
from ralu_edge.manifest import MANIFEST_NAME, read_manifest, verify_files
from ralu_edge.rope import rope_tables
from ralu_export import targets
from ralu_export.bundle import ExportConfig, build_bundle
from ralu_export.onnx_files import ort_runner
from ralu_export.parity import ParityError
from ralu_export.pipeline_files import tokenizer_ids

PROMPT = "a small red circle on a white background"


@pytest.fixture(scope="module")
def desktop(tmp_path_factory):
    out = tmp_path_factory.mktemp("desktop") / "bundle"
    return build_bundle(ExportConfig(model="shapes", target="desktop", out=out))


@pytest.fixture(scope="module")
def android(tmp_path_factory):
    out = tmp_path_factory.mktemp("android") / "bundle"
    out.mkdir()
    (out / "old.txt").write_text("an older bundle")  # replaced because of force=True
    # flux-4x only: stage lengths 64 / 121 / 256
    return build_bundle(ExportConfig(model="shapes", target="android", out=out, precision="int8", force=True,
                                     presets=("flux-4x",)))


@pytest.fixture(scope="module")
def pipe():
    from ralu_export.models import load_flux_pipeline

    return load_flux_pipeline("shapes")


def _leftovers(folder):
    return [p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


@pytest.mark.slow
def test_desktop_bundle_verifies_and_every_graph_passed_parity(desktop):
    manifest = read_manifest(desktop)
    verify_files(desktop, manifest)
    on_disk = {p.relative_to(desktop).as_posix() for p in desktop.rglob("*") if p.is_file()} - {MANIFEST_NAME}
    assert on_disk == {f.path for f in manifest.files}
    assert {g.name for g in manifest.graphs} == {"denoiser", "transformer", "text_encoder", "text_encoder_2",
                                                 "vae_decoder", "vae_encoder"}
    assert all(g.parity.passed and g.parity.max_rel_error < 1e-3 for g in manifest.graphs)
    assert manifest.graph("denoiser").parity.cases == tuple(f"num_image_tokens={n}" for n in (64, 82, 100, 121, 256))
    assert manifest.denoiser.packaging == "dynamic" and manifest.denoiser.stage_lengths == (64, 82, 100, 121, 256)
    assert not _leftovers(desktop.parent)


@pytest.mark.slow
def test_denoiser_graphs_share_one_weight_file(desktop, pipe):
    manifest = read_manifest(desktop)
    assert manifest.graph("denoiser").data_files == manifest.graph("transformer").data_files
    weights = desktop / "transformer" / "model.onnx_data"
    parameter_bytes = sum(p.numel() * 4 for p in pipe.transformer.parameters())
    assert weights.stat().st_size < 1.05 * parameter_bytes  # one float32 copy, not one per graph


@pytest.mark.slow
def test_a_tampered_bundle_file_is_refused_by_name(desktop, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(desktop, copy)
    target = copy / "text_encoder_2" / "model.onnx_data"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(UserError, match="text_encoder_2/model.onnx_data: sha256"):
        verify_files(copy, read_manifest(copy))


@pytest.mark.slow
def test_denoiser_graph_matches_the_diffusers_transformer_at_every_stage_length(desktop, pipe):
    run = ort_runner(desktop / "transformer" / "denoiser.onnx")
    rng = np.random.default_rng(3)
    text = rng.standard_normal((1, 32, 128)).astype(np.float32)
    pooled = rng.standard_normal((1, 128)).astype(np.float32)
    for length in read_manifest(desktop).denoiser.stage_lengths:
        ids = np.stack([np.zeros(length), rng.integers(0, 32, length) / 2, rng.integers(0, 32, length) / 2], 1)
        cos, sin = rope_tables(np.concatenate([np.zeros((32, 3)), ids]), (8, 12, 12), 10000.0)
        tokens = rng.standard_normal((1, length, 16)).astype(np.float32)
        got = run({"hidden_states": tokens, "encoder_hidden_states": text, "pooled_projections": pooled,
                   "timestep": np.array([0.4], np.float32), "rope_cos": cos, "rope_sin": sin})[0]
        with torch.no_grad():
            expected = pipe.transformer(
                hidden_states=torch.from_numpy(tokens), encoder_hidden_states=torch.from_numpy(text),
                pooled_projections=torch.from_numpy(pooled), timestep=torch.tensor([0.4]),
                img_ids=torch.from_numpy(ids).float(), txt_ids=torch.zeros(32, 3), return_dict=False)[0].numpy()
        assert np.abs(got - expected).max() / np.abs(expected).max() < 1e-3, length


@pytest.mark.slow
def test_text_encoder_graph_injects_a_learned_token_like_a_replaced_table_row(desktop, pipe):
    manifest = read_manifest(desktop)
    ids = tokenizer_ids(desktop, manifest.tokenizer("tokenizer"), PROMPT)
    run = ort_runner(desktop / "text_encoder" / "model.onnx")
    plain = run({"input_ids": ids})  # optional inputs left out: zero placeholders
    with torch.no_grad():
        stock = pipe.text_encoder(torch.from_numpy(ids))
    np.testing.assert_allclose(plain[1], stock.pooler_output.numpy(), atol=1e-4)
    new_id = manifest.tokenizer("tokenizer").first_free_id  # what the runtime gives a learned token
    learned = np.random.default_rng(0).standard_normal((1, 128)).astype(np.float32) * 0.05
    with_token = ids.copy()
    with_token[0, 3] = new_id
    got = run({"input_ids": with_token, "placeholder_ids": np.array([new_id]), "placeholder_embeds": learned})
    edited = copy.deepcopy(pipe.text_encoder)  # the stock encoder with the replaced word's row set to the token
    with torch.no_grad():
        edited.get_input_embeddings().weight[int(ids[0, 3])] = torch.from_numpy(learned[0])
        expected = edited(torch.from_numpy(ids))
    np.testing.assert_allclose(got[0], expected.last_hidden_state.numpy(), atol=1e-4)
    np.testing.assert_allclose(got[1], expected.pooler_output.numpy(), atol=1e-4)


@pytest.mark.slow
def test_optimum_opens_the_desktop_bundle_and_generates_the_diffusers_image(desktop, pipe):
    from optimum.onnxruntime import ORTDiffusionPipeline

    ort_pipe = ORTDiffusionPipeline.from_pretrained(str(desktop))
    kwargs = dict(num_inference_steps=4, height=128, width=128, max_sequence_length=32, output_type="np")
    got = ort_pipe(PROMPT, generator=torch.Generator().manual_seed(0), **kwargs).images
    expected = pipe(PROMPT, generator=torch.Generator().manual_seed(0), **kwargs).images
    assert got.shape == (1, 128, 128, 3)
    assert np.abs(got - expected).max() < 1e-3


@pytest.mark.slow
def test_android_bundle_is_ort_files_with_operator_config_and_usability_reports(android):
    manifest = read_manifest(android)
    verify_files(android, manifest)
    assert not (android / "old.txt").exists() and not _leftovers(android.parent)
    assert {g.format for g in manifest.graphs} == {"ort"} and not list(android.rglob("*.onnx*"))
    config = (android / "required_operators.config").read_text()
    assert "ai.onnx;" in config and "MatMul" in config
    for graph in manifest.graphs:
        assert (android / "mobile_usability" / f"{graph.name}.txt").read_text().strip()
        assert float(manifest.notes[f"ort_vs_onnx.{graph.name}"].split()[3]) <= 1e-5
        ort_runner(android / graph.file)  # every .ort loads in onnxruntime's Python API


@pytest.mark.slow
def test_android_int8_graphs_are_judged_by_cosine(android):
    manifest = read_manifest(android)
    precisions = {g.name: g.precision for g in manifest.graphs}
    assert precisions == {"denoiser": "int8-weight_qdq", "text_encoder": "int8-weight_qdq",
                          "text_encoder_2": "int8-weight_qdq", "vae_decoder": "fp32", "vae_encoder": "fp32"}
    for graph in manifest.graphs:
        if graph.precision != "fp32":
            assert graph.parity.metric == "cosine" and graph.parity.cosine >= 0.99
            assert graph.session_config == {"session.qdq_matmulnbits_accuracy_level": "1"}
        # a .ort's fusions and their accuracy level are fixed at conversion: no generation-only kernels
        assert graph.generation_session_config == {} and graph.generation_file is None
    assert manifest.denoiser.stage_lengths == (64, 121, 256)


@pytest.mark.parametrize("failure", [KeyboardInterrupt, ParityError])
def test_a_failed_export_leaves_nothing_behind(monkeypatch, tmp_path, failure):
    def failing_graphs(plan, root):
        (root / "transformer").mkdir()
        (root / "transformer" / "model.onnx_data").write_bytes(b"partial")
        raise failure("stop")

    monkeypatch.setattr(targets, "build", failing_graphs)
    with pytest.raises(failure):
        build_bundle(ExportConfig(model="shapes", target="desktop", out=tmp_path / "bundle"))
    assert list(tmp_path.iterdir()) == []


def test_a_failed_forced_export_keeps_the_old_bundle(monkeypatch, tmp_path):
    (tmp_path / "bundle").mkdir()
    (tmp_path / "bundle" / "old.txt").write_text("old")
    monkeypatch.setattr(targets, "build", lambda plan, root: (_ for _ in ()).throw(ParityError("stop")))
    with pytest.raises(ParityError):
        build_bundle(ExportConfig(model="shapes", target="desktop", out=tmp_path / "bundle", force=True))
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]
    assert (tmp_path / "bundle" / "old.txt").read_text() == "old"
