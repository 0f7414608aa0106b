"""ExecuTorch and Core ML bundles of the built-in `shapes` model (slow: ~3 min and ~1 min on 2 cores, flux-4x
only): the denoiser is one program / package with a method / function per RALU stage length and one copy of
the weights; every ExecuTorch method runs in executorch's Python runtime within XNNPACK tolerance of torch;
Core ML packages (no prediction off macOS) have the declared inputs and outputs."""

import numpy as np
import pytest
import torch

from ralu_edge.manifest import read_manifest, verify_files
from ralu_export.bundle import ExportConfig, build_bundle

pytestmark = pytest.mark.slow


def _weights_bytes() -> int:
    from safetensors import safe_open

    from ralu_export.models import resolve_model

    path = resolve_model("shapes") / "transformer" / "diffusion_pytorch_model.safetensors"
    with safe_open(str(path), "pt") as weights:
        return sum(weights.get_tensor(k).numel() * 4 for k in weights.keys())


@pytest.fixture(scope="module")
def executorch_bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("executorch") / "bundle"
    return build_bundle(ExportConfig(model="shapes", target="executorch", out=out, presets=("flux-4x",)))


@pytest.fixture(scope="module")
def ios_bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("ios") / "bundle"
    return build_bundle(ExportConfig(model="shapes", target="ios", out=out, presets=("flux-4x",)))


def test_executorch_denoiser_is_one_program_with_a_method_per_stage(executorch_bundle):
    manifest = read_manifest(executorch_bundle)
    verify_files(executorch_bundle, manifest)
    denoisers = [g for g in manifest.graphs if g.role == "denoiser"]
    assert {(g.file, g.method) for g in denoisers} == {("transformer/denoiser.pte", f"denoise_{n}")
                                                       for n in (64, 121, 256)}
    assert manifest.denoiser.packaging == "static"
    assert manifest.denoiser.graph_for(121) == "denoiser_121"
    assert (executorch_bundle / "transformer" / "denoiser.pte").stat().st_size < 1.1 * _weights_bytes()
    assert all(g.parity.passed for g in manifest.graphs)
    assert manifest.text_encoders[0].placeholder_slots == 4


def test_executorch_method_runs_in_the_python_runtime_like_torch(executorch_bundle):
    from executorch.runtime import Runtime

    from ralu_edge.rope import rope_tables
    from ralu_export.graph_modules import FluxDenoiser
    from ralu_export.models import load_flux_pipeline

    method = Runtime.get().load_program(str(executorch_bundle / "transformer" / "denoiser.pte")).load_method(
        "denoise_121")
    rng = np.random.default_rng(5)
    ids = np.stack([np.zeros(121), rng.integers(0, 32, 121) / 2, rng.integers(0, 32, 121) / 2], 1)
    cos, sin = rope_tables(np.concatenate([np.zeros((32, 3)), ids]), (8, 12, 12), 10000.0)
    inputs = [torch.randn(1, 121, 16), torch.randn(1, 32, 128), torch.randn(1, 128), torch.tensor([0.3]),
              torch.from_numpy(cos), torch.from_numpy(sin)]
    got = method.execute(inputs)[0]
    with torch.no_grad():
        expected = FluxDenoiser(load_flux_pipeline("shapes").transformer)(*inputs)
    assert (got - expected).abs().max() / expected.abs().max() < 1e-2


def test_ios_packages_have_the_declared_functions_inputs_and_outputs(ios_bundle):
    import coremltools as ct

    manifest = read_manifest(ios_bundle)
    verify_files(ios_bundle, manifest)
    package = ios_bundle / "transformer" / "denoiser.mlpackage"
    functions = {f.name: f for f in ct.utils.load_spec(str(package)).description.functions}
    assert set(functions) == {"denoise_64", "denoise_121", "denoise_256"}
    inputs = {i.name: list(i.type.multiArrayType.shape) for i in functions["denoise_121"].input}
    assert inputs["hidden_states"] == [1, 121, 16] and inputs["rope_cos"] == [153, 32]
    assert [o.name for o in functions["denoise_121"].output] == ["velocity"]
    size = sum(p.stat().st_size for p in package.rglob("*") if p.is_file())
    assert size < 1.1 * _weights_bytes()  # one weight copy for three functions
    encoder = manifest.graph("text_encoder")
    assert encoder.precision == "int8-coreml_weight_int8" and encoder.parity is None
    assert [s.name for s in encoder.inputs] == ["input_ids", "placeholder_ids", "placeholder_embeds"]
