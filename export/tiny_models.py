"""Tiny random-weight pipelines of the real architectures, for tests of everything that must work on user
checkpoints (issue 8): a FLUX.1-dev-like FluxPipeline (guidance embedding, VAE factor 8, 16 latent channels,
CLIP + T5) and an SD3-like StableDiffusion3Pipeline (CLIP-L + CLIP-G with projection, T5, patchified
SD3Transformer2DModel with absolute position embeddings). Saved with save_pretrained, loadable offline.
Tokenizers are the hand-built ones of the built-in model (ralu_export.shapes_model)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from ralu_export import shapes_model as sm

TEXT_LENGTH = sm.TEXT_LENGTH


def _tokenizers(root: Path):
    sm.build_clip_tokenizer(root / "clip")
    sm.build_t5_tokenizer(root / "t5")
    from transformers import CLIPTokenizer, T5TokenizerFast

    return CLIPTokenizer.from_pretrained(str(root / "clip")), T5TokenizerFast.from_pretrained(str(root / "t5"))


def _clip_config(clip_tok, hidden: int):
    from transformers import CLIPTextConfig

    ids = sm.clip_special_ids(clip_tok)
    return CLIPTextConfig(vocab_size=len(clip_tok), hidden_size=hidden, intermediate_size=hidden * 2,
                          num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=TEXT_LENGTH,
                          projection_dim=hidden, hidden_act="gelu", bos_token_id=ids["bos"],
                          eos_token_id=ids["eos"], pad_token_id=ids["eos"])


def _t5(t5_tok, d_model: int):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=len(t5_tok), d_model=d_model, d_kv=16, d_ff=d_model * 2,
                                   num_layers=2, num_heads=2, feed_forward_proj="gated-gelu", dropout_rate=0.0,
                                   relative_attention_num_buckets=8, relative_attention_max_distance=32,
                                   is_encoder_decoder=False, use_cache=False))


def _vae(latent_channels: int, factor_blocks: int):
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * factor_blocks,
                         up_block_types=("UpDecoderBlock2D",) * factor_blocks,
                         block_out_channels=(16,) * factor_blocks, layers_per_block=1,
                         latent_channels=latent_channels, norm_num_groups=8, sample_size=64,
                         scaling_factor=0.3611, shift_factor=0.1159)


def random_flux_pipeline(clip_tok, t5_tok, heads: int, head_dim: int, layers: int, single_layers: int,
                         text_dim: int, rope_axes: tuple[int, int, int]):
    """A guidance-distilled FluxPipeline (guidance_embeds=True, VAE factor 8, 16 latent channels) with random
    weights drawn from torch's global generator: the transformer (heads x head_dim inner width), then the VAE,
    CLIP and T5 of width `text_dim`. Every random FLUX of the tests and benchmarks is built here."""
    from diffusers import FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=layers, num_single_layers=single_layers,
        attention_head_dim=head_dim, num_attention_heads=heads, joint_attention_dim=text_dim,
        pooled_projection_dim=text_dim, guidance_embeds=True, axes_dims_rope=tuple(rope_axes))
    return FluxPipeline(scheduler=sm.build_scheduler(), vae=_vae(16, 4), text_encoder=CLIPTextModel(
        _clip_config(clip_tok, text_dim)), tokenizer=clip_tok, text_encoder_2=_t5(t5_tok, text_dim),
        tokenizer_2=t5_tok, transformer=transformer)


def build_random_flux(out: Path, heads: int, head_dim: int, layers: int, single_layers: int,
                      seed: int = 0) -> dict[str, int]:
    """A benchmark-sized random FluxPipeline folder at `out`: heads x head_dim inner width, FLUX's 16/56/56 RoPE
    proportions (even dims), the tiny CLIP/T5 at width 64 with the built-in vocabulary (so 'square' is one
    token). Returns the parameter count of each component."""
    import torch

    torch.manual_seed(seed)
    rope_axes = (head_dim // 4, 3 * head_dim // 8, 3 * head_dim // 8)
    with tempfile.TemporaryDirectory() as tmp:
        clip_tok, t5_tok = _tokenizers(Path(tmp))
        pipe = random_flux_pipeline(clip_tok, t5_tok, heads, head_dim, layers, single_layers, 64, rope_axes)
        _save(pipe, out)
    return {name: sum(p.numel() for p in getattr(pipe, name).parameters())
            for name in ("transformer", "text_encoder", "text_encoder_2", "vae")}


def build_tiny_flux(out: Path, seed: int = 0) -> Path:
    """A FLUX.1-dev-shaped FluxPipeline (guidance-distilled: guidance_embeds=True) with random weights."""
    import torch

    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        clip_tok, t5_tok = _tokenizers(Path(tmp))
        pipe = random_flux_pipeline(clip_tok, t5_tok, heads=2, head_dim=16, layers=1, single_layers=1,
                                    text_dim=32, rope_axes=(4, 6, 6))
        return _save(pipe, out)


def build_tiny_sd3(out: Path, seed: int = 0) -> Path:
    """An SD3-shaped StableDiffusion3Pipeline with random weights. Widths keep SD3's relations: CLIP-L (32)
    and CLIP-G (48) pooled together give pooled_projection_dim 80; their joint sequence width (80) is
    zero-padded to T5's width 96 = joint_attention_dim (SD3: 768 + 1280 padded to 4096); pos_embed_max_size
    48 over base size 16 makes one patch step the coordinate 1/3, as SD3's 192 over 64."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        clip_tok, t5_tok = _tokenizers(Path(tmp))
        transformer = SD3Transformer2DModel(
            sample_size=32, patch_size=2, in_channels=16, num_layers=2, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=96, caption_projection_dim=32, pooled_projection_dim=80,
            out_channels=16, pos_embed_max_size=48)
        pipe = StableDiffusion3Pipeline(
            transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=_vae(16, 4),
            text_encoder=CLIPTextModelWithProjection(_clip_config(clip_tok, 32)), tokenizer=clip_tok,
            text_encoder_2=CLIPTextModelWithProjection(_clip_config(clip_tok, 48)), tokenizer_2=clip_tok,
            text_encoder_3=_t5(t5_tok, 96), tokenizer_3=t5_tok)
        return _save(pipe, out)


def _save(pipe, out: Path) -> Path:
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(str(tmp), safe_serialization=True)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def build_large_flux(out: Path, layers: int = 4, single_layers: int = 9, heads: int = 12, head_dim: int = 128,
                     seed: int = 0, max_shard_size: str = "1GB") -> Path:
    """A FluxPipeline folder whose random-weight transformer is large enough to test weights beyond the 2 GB
    protobuf / .ort limit (issue 8 "Large weights"): FLUX.1's head size (128) and RoPE axes (16, 56, 56) at
    heads x 128 inner width; the defaults give 671 M parameters, 2.69 GB (2.50 GiB) in fp32. The text
    encoders and VAE are the tiny ones above, so the transformer is ~all of the weights. Saved as
    safetensors shards of at most `max_shard_size`, like the real checkpoints. Building holds the
    transformer once (~1x its size)."""
    import torch

    torch.manual_seed(seed)
    rope_axes = (head_dim // 8, 7 * head_dim // 16, 7 * head_dim // 16)  # FLUX.1: (16, 56, 56) at 128
    with tempfile.TemporaryDirectory() as tmp:
        clip_tok, t5_tok = _tokenizers(Path(tmp))
        pipe = random_flux_pipeline(clip_tok, t5_tok, heads, head_dim, layers, single_layers, 32, rope_axes)
        tmp_out = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp_out, ignore_errors=True)
        pipe.save_pretrained(str(tmp_out), safe_serialization=True, max_shard_size=max_shard_size)
    del pipe
    if out.exists():
        shutil.rmtree(out)
    tmp_out.rename(out)
    return out
