"""The bundle manifest schema (ralu_edge.manifest): round trip, validation, and file verification (the one
verifier every layer uses) that refuses a missing, truncated, altered or linked-out file by name and lets a
digest cache spare re-hashing. Standard library + ralu_edge only, so it also runs with torch blocked
(scripts/test.sh)."""

import ast
import json
import pathlib
import subprocess
import sys

import pytest

from ralu_edge.errors import UserError
from ralu_edge.manifest import (
    BUNDLE_FORMAT, FORMAT_VERSION, MANIFEST_NAME, DenoiserSpec, DigestCache, ExporterInfo, GraphEntry, Manifest,
    ModelInfo, Parity, PresetEntry, PresetStages, Resolution, RopeSpec, StageGraph, TensorSpec, TextEncoderSpec,
    TokenizerSpec, VaeSpec, file_entries, read_manifest, verify_files, write_manifest,
)

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _bundle(root: pathlib.Path) -> Manifest:
    """A small but complete bundle on disk: one denoiser, one text encoder, one tokenizer, a manifest."""
    (root / "transformer").mkdir()
    (root / "transformer" / "denoiser.onnx").write_bytes(b"graph" * 100)
    (root / "transformer" / "model.onnx_data").write_bytes(bytes(range(256)) * 8)
    (root / "text_encoder").mkdir()
    (root / "text_encoder" / "model.onnx").write_bytes(b"encoder")
    (root / "tokenizer").mkdir()
    (root / "tokenizer" / "tokenizer.json").write_text("{}")
    ids = TensorSpec("placeholder_ids", "int64", ("num_placeholders",), optional=True)
    embeds = TensorSpec("placeholder_embeds", "float32", ("num_placeholders", 8), optional=True)
    parity = Parity("torch", "max_rel", 1e-3, 1e-6, 1e-7, 1.0, True, ("num_image_tokens=4",))
    graphs = (
        GraphEntry("denoiser", "denoiser", "transformer/denoiser.onnx", "onnx", "fp32",
                   (TensorSpec("hidden_states", "float32", (1, "num_image_tokens", 16)),),
                   (TensorSpec("velocity", "float32", (1, "num_image_tokens", 16)),),
                   data_files=("transformer/model.onnx_data",), parity=parity),
        GraphEntry("text_encoder", "text_encoder", "text_encoder/model.onnx", "onnx", "int8-dynamic",
                   (TensorSpec("input_ids", "int64", (1, 4)), ids, embeds),
                   (TensorSpec("last_hidden_state", "float32", (1, 4, 8)),)),
    )
    preset = {"name": "flux-4x", "N": [5, 6, 7], "e": [0.3, 0.45, 1.0], "h": [5.019, 2.589, 2.226], "Z": 6.317,
              "r": 0.3, "stage_sigmas": [[1.0, 0.0]]}
    manifest = Manifest(
        format=BUNDLE_FORMAT, format_version=FORMAT_VERSION, exporter=ExporterInfo("ralu-export", "0.1.0"),
        model=ModelInfo("flux", "shapes", "FluxPipeline"), target="desktop", precision="fp32",
        resolutions=(Resolution(16, 16, 4, 4, 2, 2),), vae=VaeSpec(4, 4, 1.3, 0.0), text_length=4,
        rope=RopeSpec((8, 12, 12), 10000.0, 32),
        denoiser=DenoiserSpec("dynamic", "measured", "num_image_tokens", "num_rope_tokens", (1, 4), 16, 4, 8, 8,
                              False, "sigma", (StageGraph("denoiser"),)),
        text_encoders=(TextEncoderSpec("text_encoder", "text_encoder", "tokenizer", "clip", "pooled", 8, 10,
                                       "last_hidden_state", None, "placeholder_ids", "placeholder_embeds",
                                       "int8-dynamic"),),
        tokenizers=(TokenizerSpec("tokenizer", ("tokenizer/tokenizer.json",), "tokenizer/tokenizer.json", "clip",
                                  4, 1, 1, 0, 10),),
        graphs=graphs, presets=(PresetEntry("flux-4x", preset, (PresetStages(16, 16, 0, (1, 1, 4)),)),),
        files=file_entries(root),
    )
    write_manifest(root, manifest)
    return manifest


def test_manifest_round_trips_through_json(tmp_path):
    manifest = _bundle(tmp_path)
    again = read_manifest(tmp_path)
    assert again == manifest
    assert again.to_dict() == json.loads((tmp_path / MANIFEST_NAME).read_text())


def test_every_listed_file_verifies_and_the_manifest_itself_is_not_listed(tmp_path):
    manifest = _bundle(tmp_path)
    verify_files(tmp_path, manifest)
    assert MANIFEST_NAME not in {f.path for f in manifest.files}
    assert len(manifest.files) == 4


@pytest.mark.parametrize("damage, words", [
    (lambda p: p.write_bytes(bytes([p.read_bytes()[0] ^ 1]) + p.read_bytes()[1:]), "sha256"),
    (lambda p: p.write_bytes(p.read_bytes()[:-1]), "bytes but the manifest says"),
    (lambda p: p.unlink(), "missing"),
])
def test_a_damaged_file_is_refused_by_name(tmp_path, damage, words):
    manifest = _bundle(tmp_path)
    damage(tmp_path / "transformer" / "model.onnx_data")
    with pytest.raises(UserError, match="transformer/model.onnx_data") as info:
        verify_files(tmp_path, manifest)
    assert words in str(info.value) and "re-export" in str(info.value)


def test_a_link_out_of_the_bundle_is_refused_even_with_the_right_bytes(tmp_path):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    manifest = _bundle(bundle)
    target = bundle / "text_encoder" / "model.onnx"
    outside = tmp_path / "elsewhere.onnx"
    outside.write_bytes(target.read_bytes())
    target.unlink()
    target.symlink_to(outside)
    with pytest.raises(UserError, match="text_encoder/model.onnx: a link to .*outside the bundle folder"):
        verify_files(bundle, manifest)


def test_a_digest_cache_spares_the_files_it_vouches_for_and_learns_the_others(tmp_path):
    manifest = _bundle(tmp_path)

    class Cache(DigestCache):
        def __init__(self):
            self.digests = {}

        def known(self, path, stat):
            return self.digests.get((path, stat.st_size))

        def remember(self, path, stat, sha256):
            self.digests[(path, stat.st_size)] = sha256

    cache = Cache()
    assert verify_files(tmp_path, manifest, cache) == len(manifest.files)
    assert verify_files(tmp_path, manifest, cache) == 0
    cache.digests = {key: "0" * 64 for key in cache.digests}  # a digest the manifest does not list is re-checked
    assert verify_files(tmp_path, manifest, cache) == len(manifest.files)


def _edited(tmp_path, edit) -> dict:
    _bundle(tmp_path)
    data = json.loads((tmp_path / MANIFEST_NAME).read_text())
    edit(data)
    return data


@pytest.mark.parametrize("edit, words", [
    (lambda d: d.pop("target"), "lacks the field 'target'"),
    (lambda d: d.update(target="playstation"), "manifest.target is 'playstation'"),
    (lambda d: d.update(format_version=FORMAT_VERSION + 1), "format_version"),
    (lambda d: d["files"].pop(0), "which the files list lacks"),
    (lambda d: d["files"][0].update(path="../etc/passwd"), "not a relative POSIX path"),
    (lambda d: d["files"][0].update(sha256="xyz"), "malformed sha256"),
    (lambda d: d["graphs"][0]["inputs"][0].update(shape=[1, -3, 16]), "invalid dimension"),
    (lambda d: d["text_encoders"][0].update(placeholder_ids_input="ids"), "has no input 'ids'"),
    (lambda d: d["denoiser"]["stage_graphs"][0].update(graph="nope"), "no graph 'nope'"),
    (lambda d: d["resolutions"][0].update(grid_height=3, latent_height=6), "odd packed grid"),
    (lambda d: d["presets"][0]["preset"].pop("stage_sigmas"), "lacks"),
    (lambda d: d.update(text_length="32"), "should be an integer"),
])
def test_a_malformed_manifest_is_refused_with_the_field_named(tmp_path, edit, words):
    data = _edited(tmp_path, edit)
    with pytest.raises(UserError, match="re-export|ralu-export") as info:
        Manifest.from_dict(data)
    assert words in str(info.value)


def test_a_folder_without_a_manifest_is_not_a_bundle(tmp_path):
    with pytest.raises(UserError, match="no ralu_config.json"):
        read_manifest(tmp_path)


def test_lookups_name_what_the_bundle_has(tmp_path):
    manifest = _bundle(tmp_path)
    assert manifest.denoiser.graph_for(121) == "denoiser"  # dynamic: any length
    assert manifest.graph("text_encoder").input("placeholder_embeds").optional
    with pytest.raises(UserError, match="carries flux-4x"):
        manifest.preset("flux-7x")


@pytest.mark.parametrize("module", ["manifest", "typed_json"])
def test_manifest_modules_import_only_the_standard_library_and_ralu_edge(module):
    tree = ast.parse((ROOT / "ralu_edge" / f"{module}.py").read_text())
    allowed = {"ralu_edge", "__future__"} | set(sys.stdlib_module_names)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            assert {n.split(".")[0] for n in names} <= allowed, names


def test_manifest_module_imports_with_numpy_unimportable():
    probe = ("import sys; sys.modules['numpy'] = None; import ralu_edge.manifest as m; "
             "assert 'numpy' not in [k for k, v in sys.modules.items() if v is not None]; print('ok')")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_a_bundle_may_carry_a_full_and_a_half_resolution_vae_decoder_but_one_encoder(tmp_path):
    """ExecuTorch / Core ML bundles list `vae_decoder` and `vae_decoder_half` (two static programs)."""
    import dataclasses

    manifest = _bundle(tmp_path)
    path = "text_encoder/model.onnx"  # any listed file: only the manifest's own consistency is checked here
    decoders = tuple(GraphEntry(name, "vae_decoder", path, "onnx", "fp32", (), ()) for name in
                     ("vae_decoder", "vae_decoder_half"))
    assert len(dataclasses.replace(manifest, graphs=manifest.graphs + decoders).graphs) == 4
    encoders = tuple(GraphEntry(name, "vae_encoder", path, "onnx", "fp32", (), ()) for name in ("enc_a", "enc_b"))
    with pytest.raises(UserError, match="at most one"):
        dataclasses.replace(manifest, graphs=manifest.graphs + encoders)
