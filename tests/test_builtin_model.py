"""The built-in `shapes` model: found by name, a genuine diffusers FluxPipeline that generates offline, within
its size budget, safetensors only, with tokenizers equal to the ones the training code builds."""

import json
from pathlib import Path

import numpy as np
import pytest

from ralu_edge.errors import UserError
from ralu_export import builtin_model_path


def test_builtin_model_path_finds_shapes_and_rejects_unknown_names():
    path = builtin_model_path("shapes")
    assert (path / "model_index.json").is_file()
    with pytest.raises(UserError, match="unknown built-in model"):
        builtin_model_path("sdxl")


def test_shapes_is_safetensors_only_and_within_40_mb():
    path = builtin_model_path("shapes")
    files = [f for f in path.rglob("*") if f.is_file()]
    assert not [f for f in files if f.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt")]
    classifier = path.parent / "classifier.safetensors"
    total = sum(f.stat().st_size for f in files) + classifier.stat().st_size
    assert total <= 40 * 2**20


def test_shapes_geometry_gives_a_16x16_token_grid():
    path = builtin_model_path("shapes")
    vae = json.loads((path / "vae" / "config.json").read_text())
    transformer = json.loads((path / "transformer" / "config.json").read_text())
    factor = 2 ** (len(vae["block_out_channels"]) - 1)
    grid = 128 // factor // 2
    assert grid * grid >= 256 and transformer["in_channels"] == 4 * vae["latent_channels"]


def test_flux_pipeline_generates_offline_from_the_builtin_folder():
    import torch
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(str(builtin_model_path("shapes")), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a large red circle on the left", num_inference_steps=2, height=128, width=128,
                 max_sequence_length=32, generator=torch.Generator().manual_seed(0), output_type="np").images[0]
    assert image.shape == (128, 128, 3) and np.isfinite(image).all()


def test_a_fresh_tokenizer_build_has_the_shipped_vocabulary(tmp_path: Path):
    """T5's tokenizer is rebuilt id for id; the CLIP BPE has the same tokens (BpeTrainer's id order among
    equal-count merges is not stable, which is why training reuses the shipped tokenizers)."""
    from tokenizers import Tokenizer

    from ralu_export import shapes_model as sm
    from ralu_export.shapes_world import caption_for, heldout_scenes

    sm.build_clip_tokenizer(tmp_path / "tokenizer")
    sm.build_t5_tokenizer(tmp_path / "tokenizer_2")
    shipped = builtin_model_path("shapes")
    fresh_t5 = Tokenizer.from_file(str(tmp_path / "tokenizer_2" / "tokenizer.json"))
    ours_t5 = Tokenizer.from_file(str(shipped / "tokenizer_2" / "tokenizer.json"))
    fresh_clip = Tokenizer.from_file(str(tmp_path / "tokenizer" / "tokenizer.json"))
    ours_clip = Tokenizer.from_file(str(shipped / "tokenizer" / "tokenizer.json"))
    assert set(fresh_clip.get_vocab()) == set(ours_clip.get_vocab())
    for scene in heldout_scenes()[:20]:
        text = caption_for(scene)
        assert fresh_t5.encode(text).ids == ours_t5.encode(text).ids
        assert fresh_clip.encode(text).tokens == ours_clip.encode(text).tokens


def test_slow_clip_tokenizer_equals_the_runtime_tokenizer_json():
    from tokenizers import Tokenizer
    from transformers import CLIPTokenizer

    from ralu_export.shapes_world import training_sample

    path = builtin_model_path("shapes") / "tokenizer"
    slow, fast = CLIPTokenizer.from_pretrained(str(path)), Tokenizer.from_file(str(path / "tokenizer.json"))
    for i in range(100):
        caption = training_sample(1, i, size=16)[1]
        assert slow(caption).input_ids == fast.encode(caption).ids
