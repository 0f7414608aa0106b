"""LoRA on an exported bundle at run time (issue 17), without torch: the real LoRA trained by
scripts/train_lora.py (tests/data/lora/, red objects drawn green; transformer and CLIP attention) applied to the
built-in model's desktop bundle through ORT initializer overrides. Parity with diffusers and the classifier's
reading of the effect are in tests/test_lora.py (they need torch)."""

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from ralu_edge.errors import UserError
from ralu_edge.manifest import read_manifest
from ralu_runtime.lora import LoraRequest

ROOT = Path(__file__).resolve().parents[1]
LORA = ROOT / "tests" / "data" / "lora" / "shapes-red-to-green.safetensors"
PROMPT = "a large red circle on the left"


@pytest.fixture(scope="module")
def pipe(desktop_bundle):
    from ralu_runtime.pipeline import Pipeline

    return Pipeline.from_bundle(desktop_bundle, threads=1)


def _image(pipe, prompt=PROMPT, mode="baseline"):
    return pipe(prompt, mode=mode, steps=4, seed=0).image


def _subset(tmp_path: Path, name: str, keep) -> Path:
    tensors = {k: v for k, v in load_file(str(LORA)).items() if keep(k)}
    path = tmp_path / f"{name}.safetensors"
    save_file(tensors, str(path))
    return path


def kohya_copy(tmp_path: Path) -> tuple[Path, Path]:
    """(diffusers-format subset, the same factors in kohya naming): CLIP attention as `lora_te1_...`, and the
    double blocks' q/k/v fused as kohya stores them (`..._img_attn_qkv`: A stacked, B block-diagonal)."""
    tensors = load_file(str(LORA))
    te = {k: v for k, v in tensors.items() if k.startswith("text_encoder.")}
    diffusers_part, kohya = dict(te), {}
    for key, value in te.items():
        module, _, kind = key[len("text_encoder."):].partition(".lora_linear_layer.")
        kohya[f"lora_te1_{module.replace('.', '_')}.lora_{kind.split('.')[0]}.weight"] = value
    for block in (0, 1):
        for stream, names in (("img", ("to_q", "to_k", "to_v")), ("txt", ("add_q_proj", "add_k_proj", "add_v_proj"))):
            prefix = f"transformer.transformer_blocks.{block}.attn."
            downs = [tensors[f"{prefix}{n}.lora_A.weight"] for n in names]
            ups = [tensors[f"{prefix}{n}.lora_B.weight"] for n in names]
            for n in names:
                for ab in ("A", "B"):
                    diffusers_part[f"{prefix}{n}.lora_{ab}.weight"] = tensors[f"{prefix}{n}.lora_{ab}.weight"]
            rank, out = downs[0].shape[0], ups[0].shape[0]
            up = np.zeros((3 * out, 3 * rank), np.float32)
            for i, u in enumerate(ups):
                up[i * out:(i + 1) * out, i * rank:(i + 1) * rank] = u
            name = f"lora_unet_double_blocks_{block}_{stream}_attn_qkv"
            kohya[f"{name}.lora_down.weight"] = np.concatenate(downs)
            kohya[f"{name}.lora_up.weight"] = up
            kohya[f"{name}.alpha"] = np.array(3.0 * rank, np.float32)  # alpha / rank = 1, as the diffusers file
    paths = tmp_path / "diffusers-subset.safetensors", tmp_path / "kohya-subset.safetensors"
    save_file(diffusers_part, str(paths[0]))
    save_file(kohya, str(paths[1]))
    return paths


def test_the_lora_file_is_real_and_small():
    report = json.loads(LORA.with_suffix(".json").read_text())
    assert report["steps"] >= 200 and LORA.stat().st_size < 400_000
    keys = load_file(str(LORA))
    assert any(k.startswith("transformer.") for k in keys) and any(k.startswith("text_encoder.") for k in keys)
    assert all(np.abs(v).max() > 0 for k, v in keys.items() if ".lora_B." in k or ".up." in k)  # trained, not init


def test_the_manifest_records_every_module_the_lora_addresses_and_kohya_names_from_diffusers(desktop_bundle):
    manifest = read_manifest(desktop_bundle)
    targets = {t.module for g in manifest.graphs for t in g.lora_targets}
    for key in load_file(str(LORA)):
        module = key.split(".lora_")[0]
        assert module in targets, key
    assert manifest.lora.components == ("transformer", "text_encoder")
    qkv = {a.name: a for a in manifest.lora.aliases}["lora_unet_double_blocks_0_img_attn_qkv"]
    assert [(p.module.rsplit(".", 1)[1], p.start, p.stop) for p in qkv.parts] == [
        ("to_q", 0, 192), ("to_k", 192, 384), ("to_v", 384, 576)]


def test_a_lora_changes_the_image_and_unloading_restores_it_bit_for_bit(pipe):
    base = _image(pipe)
    pipe.load_lora([LoraRequest(LORA, 1.0)])
    changed = _image(pipe)
    pipe.unload_lora()
    assert np.abs(changed.astype(int) - base).max() > 50
    assert np.array_equal(_image(pipe), base)


def test_one_lora_twice_at_half_scale_is_the_lora_once(pipe):
    pipe.load_lora([LoraRequest(LORA, 1.0)])
    once = _image(pipe)
    pipe.load_lora([LoraRequest(LORA, 0.5), LoraRequest(LORA, 0.5)])
    twice = _image(pipe)
    pipe.load_lora([LoraRequest(LORA, 0.5)])
    half = _image(pipe)
    pipe.unload_lora()
    assert np.array_equal(once, twice) and not np.array_equal(once, half)
    assert [lora.scale for lora in pipe.loras] == []


def test_switching_reopens_only_the_sessions_a_lora_touches(pipe, tmp_path):
    transformer_only = _subset(tmp_path, "transformer-only", lambda k: k.startswith("transformer."))
    sessions = lambda: ({n: s.session for n, s in pipe.text._sessions.items()},  # noqa: E731
                        {n: s.session for n, s in pipe.denoiser._sessions.items()}, pipe.vae._decoder)
    text, denoiser, vae = sessions()
    pipe.load_lora([LoraRequest(transformer_only)])
    text2, denoiser2, vae2 = sessions()
    assert text2 == text and vae2 is vae
    assert all(denoiser2[name] is not denoiser[name] for name in denoiser)
    pipe.load_lora([LoraRequest(LORA)])
    text3, denoiser3, _ = sessions()
    changed = {name for name in text3 if text3[name] is not text2[name]}
    assert changed == {"text_encoder"}  # CLIP has LoRA weights, T5 has none
    pipe.unload_lora()


def test_kohya_names_apply_the_same_factors_bit_for_bit(pipe, tmp_path):
    diffusers_file, kohya_file = kohya_copy(tmp_path)
    pipe.load_lora([LoraRequest(diffusers_file, 0.8)])
    ours = _image(pipe)
    pipe.load_lora([LoraRequest(kohya_file, 0.8)])
    kohya = _image(pipe)
    pipe.unload_lora()
    assert np.array_equal(ours, kohya) and not np.array_equal(ours, _image(pipe))


def test_every_ralu_mode_runs_with_the_lora(pipe):
    pipe.load_lora([LoraRequest(LORA)])
    try:
        for mode in pipe.modes[1:]:
            with_lora = _image(pipe, mode=mode)
            assert with_lora.shape == (128, 128, 3) and np.array_equal(with_lora, _image(pipe, mode=mode))
    finally:
        pipe.unload_lora()


def test_a_text_encoder_lora_works_with_a_learned_token(desktop_bundle, tmp_path):
    from ralu_runtime.embeddings import save_learned_embeds
    from ralu_runtime.pipeline import Pipeline

    manifest = read_manifest(desktop_bundle)
    table = {e.name: load_file(str(desktop_bundle / e.token_embeddings)) for e in manifest.text_encoders}
    vectors = {name: next(iter(t.values()))[7] for name, t in table.items()}  # a real row of each encoder's table
    embeds = save_learned_embeds(tmp_path / "learned_embeds.safetensors", "<c>", vectors, manifest)
    pipe = Pipeline.from_bundle(desktop_bundle, threads=1, embeddings=embeds)
    prompt = "a large <c> circle on the left"
    plain = pipe.text.encode(prompt)
    pipe.load_lora([LoraRequest(LORA)])
    merged = pipe.text.encode(prompt)
    assert not np.allclose(plain.pooled, merged.pooled)  # the CLIP LoRA acts on the prompt with the injected token
    image = _image(pipe, prompt)
    pipe.unload_lora()
    assert np.array_equal(pipe.text.encode(prompt).pooled, plain.pooled) and image.shape == (128, 128, 3)


def _ralu_run(bundle: Path, out: Path, *lora_args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "ralu_runtime.cli_run", "--bundle", str(bundle), "--prompt", PROMPT, "--steps", "2",
           "--threads", "1", "--out", str(out), "--json", *[a for lora in lora_args for a in ("--lora", lora)]]
    return subprocess.run(cmd, capture_output=True, text=True)


def test_ralu_run_names_the_loras_and_scales_in_the_png_and_json(desktop_bundle, tmp_path):
    from PIL import Image

    done = _ralu_run(desktop_bundle, tmp_path / "out", f"{LORA}:0.7", str(LORA))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert [(x["name"], x["scale"]) for x in report["loras"]] == [(LORA.stem, 0.7), (LORA.stem, 1.0)]
    text = Image.open(report["images"][0]["out"]).text["parameters"]
    assert f"LoRA: {LORA.stem}:0.7, {LORA.stem}:1" in text


def _bad_files(tmp_path: Path) -> dict[str, tuple[str, str]]:
    """case -> (--lora argument, words the one sentence must hold)."""
    tensors = load_file(str(LORA))
    wrong = dict(tensors)
    key = next(k for k in tensors if k.endswith("to_q.lora_A.weight"))
    wrong[key] = np.ascontiguousarray(wrong[key][:, :100])
    save_file(wrong, str(tmp_path / "wrong.safetensors"))
    unknown = dict(tensors)
    unknown["transformer.no_such_block.proj.lora_A.weight"] = tensors[key]
    save_file(unknown, str(tmp_path / "unknown.safetensors"))
    (tmp_path / "lora.bin").write_bytes(pickle.dumps({"a": 1}, protocol=4))
    return {"wrong base model shapes": (str(tmp_path / "wrong.safetensors"), "another base model"),
            "unknown keys": (str(tmp_path / "unknown.safetensors"), "no_such_block"),
            "a pickle file": (str(tmp_path / "lora.bin"), ".safetensors only"),
            "a missing file": (str(tmp_path / "absent.safetensors"), "no such LoRA file"),
            "a scale that is not a number": (f"{LORA}:strong", "must be a number")}


@pytest.mark.parametrize("case", ["wrong base model shapes", "unknown keys", "a pickle file", "a missing file",
                                  "a scale that is not a number"])
def test_bad_lora_input_is_one_sentence_and_exit_2_writing_nothing(desktop_bundle, tmp_path, case):
    argument, words = _bad_files(tmp_path)[case]
    done = _ralu_run(desktop_bundle, tmp_path / "out", argument)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ") and words in lines[0], done.stderr
    assert not (tmp_path / "out").exists()


def test_a_bundle_without_lora_support_refuses_in_its_manifests_sentence(pipe):
    import dataclasses

    from ralu_edge.manifest import LoraSpec
    from ralu_runtime.bundle import Bundle
    from ralu_runtime.lora import load_lora

    note = "ExecuTorch programs carry their weights packed; merge the LoRA with diffusers and export again."
    program_like = Bundle(pipe.bundle.root, dataclasses.replace(pipe.bundle.manifest, lora=LoraSpec((), note=note)))
    with pytest.raises(UserError, match="^ExecuTorch programs"):
        load_lora(program_like, LoraRequest(LORA))
    old = Bundle(pipe.bundle.root, dataclasses.replace(pipe.bundle.manifest, lora=None))
    with pytest.raises(UserError, match="records no LoRA targets"):
        load_lora(old, LoraRequest(LORA))


def test_an_int4_bundle_refuses_a_lora_on_its_4_bit_denoiser_in_one_sentence(pipe):
    import dataclasses

    from ralu_runtime.bundle import Bundle
    from ralu_runtime.lora import load_lora

    manifest = pipe.bundle.manifest  # issue 15's int4 bundles: the denoiser's MatMulNBits 4-bit blocks record no targets
    graphs = tuple(dataclasses.replace(g, lora_targets=()) if g.role.startswith("denoiser") else g
                   for g in manifest.graphs)
    int4 = Bundle(pipe.bundle.root, dataclasses.replace(manifest, precision="int4", graphs=graphs))
    with pytest.raises(UserError, match="int4 bundle holds in 4-bit blocks"):
        load_lora(int4, LoraRequest(LORA))
