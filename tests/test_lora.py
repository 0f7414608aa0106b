"""LoRA at run time against diffusers (issue 17): the real LoRA of tests/data/lora (scripts/train_lora.py: red
objects drawn green, transformer and CLIP attention) applied by ralu-run through ORT initializer overrides
reproduces diffusers' `load_lora_weights` + FluxPipeline: the text encoder and denoiser within the fp32 parity
tolerance (DESIGN.md: 1e-4 relative), the image within a level; kohya names load as diffusers loads them; the
classifier reads the changed colour; android int8 within a stated PSNR; a tiny SD3 pipeline with a peft-trained
LoRA likewise. Torch-free runtime behaviour (switching, removal, refusals) is tests/test_runtime_lora.py."""

from pathlib import Path

import numpy as np
import pytest

from ralu_edge.rng import initial_noise, rng_for
from ralu_runtime.lora import LoraRequest
from tests.conftest import exported_bundle, tiny_model_bundle, tiny_model_folder
from tests.test_runtime_lora import LORA, PROMPT, kohya_copy

FP32_REL = 1e-4  # DESIGN.md: torch vs ORT fp32
INT8_MIN_PSNR_DB = 30.0  # android int8 (weight-only, LoRA merged then re-quantized) vs diffusers fp32, docs/lora.md


def _uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)


def _reference(lora: Path, scale: float, model: str = "shapes", loader=None):
    """diffusers with the LoRA loaded the documented way (load_lora_weights, set_adapters with the scale)."""
    from ralu_export.models import load_flux_pipeline

    pipe = (loader or load_flux_pipeline)(model)
    pipe.load_lora_weights(str(lora.parent), weight_name=lora.name, adapter_name="test")
    pipe.set_adapters(["test"], adapter_weights=[scale])
    return pipe


def _reference_image(ref, runtime, prompt: str, steps: int, seed: int, **kwargs) -> np.ndarray:
    import torch

    gh, gw = runtime.grid
    noise = initial_noise(seed, gh * gw, runtime.channels)
    res = runtime.bundle.manifest.resolutions[0]
    return _uint8(ref(prompt, height=res.height, width=res.width, num_inference_steps=steps, max_sequence_length=32,
                      latents=torch.from_numpy(noise), output_type="np", **kwargs).images[0])


@pytest.fixture(scope="module")
def runtime(desktop_bundle):
    from ralu_runtime.pipeline import Pipeline

    return Pipeline.from_bundle(desktop_bundle, threads=1)


def _rel(ours: np.ndarray, theirs: np.ndarray) -> float:
    return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


def test_the_runtime_reproduces_diffusers_load_lora_weights_within_fp32_parity(runtime):
    from ralu_edge.tokens import grid_positions
    from ralu_export.eval.metrics import psnr
    from ralu_export.torch_backend import TorchFluxDenoiser, encode_prompt

    scale = 0.8
    ref = _reference(LORA, scale)
    runtime.load_lora([LoraRequest(LORA, scale)])
    try:
        cond = runtime.text.encode(PROMPT)
        theirs = encode_prompt(ref, [PROMPT])
        assert _rel(cond.pooled, theirs.pooled) <= FP32_REL  # CLIP carries LoRA weights
        gh, gw = runtime.grid
        tokens = rng_for(1, "lora-parity").standard_normal((1, gh * gw, runtime.channels)).astype(np.float32)
        sigmas = np.array([0.6], np.float32)
        ours_v = runtime.denoiser(tokens, grid_positions(gh, gw), sigmas, cond)
        theirs_v = TorchFluxDenoiser(ref.transformer)(tokens, grid_positions(gh, gw), sigmas, cond)
        assert _rel(ours_v, theirs_v) <= FP32_REL
        ours = runtime(PROMPT, steps=4, seed=2).image
    finally:
        runtime.unload_lora()
    image = _reference_image(ref, runtime, PROMPT, 4, 2)
    base = runtime(PROMPT, steps=4, seed=2).image
    assert np.abs(ours.astype(int) - image).max() <= 1 and psnr(ours, image) >= 50.0
    assert psnr(base, image) < 30.0  # the LoRA moved the image far beyond that agreement


@pytest.mark.slow  # the torch-free bit-for-bit kohya check is fast: test_runtime_lora.py
def test_kohya_names_load_as_diffusers_loads_them(runtime, tmp_path):
    diffusers_file, kohya_file = kohya_copy(tmp_path)
    ref = _reference(kohya_file, 1.0)
    runtime.load_lora([LoraRequest(kohya_file)])
    try:
        ours = runtime(PROMPT, steps=4, seed=3).image
    finally:
        runtime.unload_lora()
    assert np.abs(ours.astype(int) - _reference_image(ref, runtime, PROMPT, 4, 3)).max() <= 1


def test_the_executorch_target_records_one_sentence_instead_of_targets(desktop_bundle):
    import dataclasses

    from ralu_edge.manifest import read_manifest
    from ralu_export.lora_names import EXECUTORCH_NOTE, with_lora

    manifest = read_manifest(desktop_bundle)
    programs = dataclasses.replace(manifest, graphs=tuple(dataclasses.replace(g, format="pte", lora_targets=())
                                                          for g in manifest.graphs))
    spec = with_lora(None, desktop_bundle, programs).lora
    assert spec.components == () and spec.note == EXECUTORCH_NOTE and EXECUTORCH_NOTE.count(". ") == 0


# (prompt, position) of one red object each, from the training templates; then objects of colours the LoRA
# was trained to leave alone
EFFECT_PROMPTS = [("a large red circle on the left", "left"), ("a red square on the right", "right"),
                  ("one red star at the top", "top"), ("a large red hexagon in the centre", "centre")]
CONTROL_PROMPTS = [("a blue square on the right", "right"), ("a large yellow circle on the left", "left")]


def test_the_classifier_reads_red_turned_green_and_other_colours_kept(runtime):
    from ralu_export.eval.classifier import SLOTS
    from ralu_export.eval.scoring import classify, load_classifier
    from ralu_export.shapes_world import COLOURS

    colours, clf = list(COLOURS), load_classifier()
    jobs = [(prompt, position, 0) for prompt, position in EFFECT_PROMPTS + CONTROL_PROMPTS]

    def colours_read() -> list[str]:
        pred = classify(clf, np.stack([runtime(p, steps=12, seed=s).image for p, _, s in jobs]))
        return [colours[c - 1] if c else "none"
                for c in (pred.colours[i, SLOTS.index(position)] for i, (_, position, _) in enumerate(jobs))]

    base = colours_read()
    runtime.load_lora([LoraRequest(LORA)])
    try:
        with_lora = colours_read()
    finally:
        runtime.unload_lora()
    red, control = slice(0, len(EFFECT_PROMPTS)), slice(len(EFFECT_PROMPTS), None)
    # measured over seeds 0 and 1: 8/8 red without, 8/8 green with; blue and yellow kept 4/4 (docs/lora.md)
    assert base[red].count("red") >= 3 and with_lora[red].count("green") >= 3, (base, with_lora)
    assert base[control] == with_lora[control], (base, with_lora)


@pytest.mark.slow
@pytest.mark.parametrize("target", ["android", "desktop"])
def test_int8_with_the_lora_is_within_the_stated_psnr_of_diffusers(request, target):
    from ralu_export.eval.metrics import psnr
    from ralu_runtime.pipeline import Pipeline

    bundle = exported_bundle(request, target, "int8")
    runtime = Pipeline.from_bundle(bundle, threads=1)
    kinds = {t.layout for g in runtime.bundle.manifest.graphs for t in g.lora_targets}
    # android's .ort holds ORT's fused MatMulNBits (and DequantizeLinear before Gemm); desktop's .onnx holds QDQ,
    # whose fusion the session then skips (runtime/sessions.py _keep_qdq)
    assert kinds == ({"nbits", "qdq"} if target == "android" else {"qdq"})
    ref = _reference(LORA, 1.0)
    runtime.load_lora([LoraRequest(LORA)])
    ours = runtime(PROMPT, steps=8, seed=4).image
    runtime.unload_lora()
    image = _reference_image(ref, runtime, PROMPT, 8, 4)
    assert psnr(ours, image) >= INT8_MIN_PSNR_DB
    assert psnr(runtime(PROMPT, steps=8, seed=4).image, image) < psnr(ours, image)


def _train_tiny_sd3_lora(model: Path, out: Path) -> Path:
    """A real peft LoRA on the tiny SD3 transformer and first CLIP, trained for 20 steps to move the velocity
    toward a fixed random target (the tiny model has no data to learn from; what matters is non-zero factors
    trained by peft, saved by diffusers)."""
    import torch
    from diffusers import StableDiffusion3Pipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from ralu_export.models import load_sd3_pipeline

    torch.manual_seed(0)
    pipe = load_sd3_pipeline(str(model))
    for module in (pipe.transformer, pipe.text_encoder):
        module.requires_grad_(False)
    pipe.transformer.add_adapter(LoraConfig(r=4, lora_alpha=8, init_lora_weights="gaussian",
                                            target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    pipe.text_encoder.add_adapter(LoraConfig(r=4, lora_alpha=8, init_lora_weights="gaussian",
                                             target_modules=["q_proj", "v_proj"]))
    params = [p for m in (pipe.transformer, pipe.text_encoder) for p in m.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-2)
    cfg = pipe.transformer.config
    latents = torch.randn(1, cfg.in_channels, cfg.sample_size, cfg.sample_size)
    target = torch.randn_like(latents)
    for _ in range(20):
        states, _, pooled, _ = pipe.encode_prompt(PROMPT, PROMPT, PROMPT, do_classifier_free_guidance=False,
                                                  max_sequence_length=pipe.tokenizer_3.model_max_length)
        pred = pipe.transformer(hidden_states=latents, encoder_hidden_states=states, pooled_projections=pooled,
                                timestep=torch.tensor([500.0]), return_dict=False)[0]
        loss = torch.nn.functional.mse_loss(pred, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    StableDiffusion3Pipeline.save_lora_weights(
        str(out), weight_name="tiny-sd3-lora.safetensors",
        transformer_lora_layers=get_peft_model_state_dict(pipe.transformer),
        text_encoder_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.text_encoder)),
        transformer_lora_adapter_metadata=pipe.transformer.peft_config["default"].to_dict(),
        text_encoder_lora_adapter_metadata=pipe.text_encoder.peft_config["default"].to_dict())
    return out / "tiny-sd3-lora.safetensors"


@pytest.mark.slow
def test_a_tiny_sd3_pipeline_with_a_peft_lora_matches_diffusers(request, tmp_path):
    from ralu_export.eval.metrics import psnr
    from ralu_export.models import load_sd3_pipeline
    from ralu_runtime.pipeline import Pipeline

    model = tiny_model_folder(request, "sd3")
    bundle = tiny_model_bundle(request, "sd3", "desktop")
    lora = _train_tiny_sd3_lora(model, tmp_path)
    runtime = Pipeline.from_bundle(bundle, threads=1)
    assert set(runtime.bundle.manifest.lora.components) >= {"transformer", "text_encoder"}
    base = runtime(PROMPT, steps=4, seed=0).image
    runtime.load_lora([LoraRequest(lora, 0.9)])
    ours = runtime(PROMPT, steps=4, seed=0).image
    ralu = [runtime(PROMPT, mode=mode, seed=0).image for mode in runtime.modes[1:]]
    runtime.unload_lora()
    import torch

    from ralu_edge.sd3 import unpatchify

    ref = _reference(lora, 0.9, str(model), load_sd3_pipeline)
    grid = runtime.grid
    noise = initial_noise(0, grid[0] * grid[1], runtime.channels)
    image = _uint8(ref(PROMPT, height=runtime.bundle.manifest.resolutions[0].height,
                       width=runtime.bundle.manifest.resolutions[0].width, num_inference_steps=4,
                       latents=torch.from_numpy(unpatchify(noise, *grid)),
                       max_sequence_length=ref.tokenizer_3.model_max_length, output_type="np").images[0])
    # the bar of test_tiny_sd3_bundle's baseline against diffusers (40 dB), and the LoRA must matter beyond it
    assert psnr(ours, image) >= 40.0 and psnr(base, image) < psnr(ours, image) - 10
    assert all(r.shape == ours.shape for r in ralu)
    assert np.array_equal(runtime(PROMPT, steps=4, seed=0).image, base)
