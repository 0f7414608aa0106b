"""The built-in `shapes` model: a genuine diffusers FluxPipeline in miniature (DESIGN.md, issue 2).

Components: CLIPTextModel + CLIP BPE tokenizer (pooled projection), T5EncoderModel + T5 Unigram tokenizer
(sequence conditioning), AutoencoderKL with a 4x spatial factor and 4 latent channels, FluxTransformer2DModel,
FlowMatchEulerDiscreteScheduler. Both tokenizers are built here from the ShapesWorld caption vocabulary with
the `tokenizers` library. 128x128 images -> 32x32x4 latents -> a 16x16 grid of 256 packed tokens of 16
channels, so RALU's low-res stage runs on an 8x8 grid (spec/RALU.md §9.6 is exactly this geometry).

Text length: the model is trained with 32 T5 tokens. FluxPipeline pads T5 to `max_sequence_length` (512 by
default, and FLUX has no text attention mask), so call it with `max_sequence_length=32`, as FLUX.1-schnell
users pass 256."""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ralu_export.shapes_world import BACKGROUNDS, COLOURS, POSITIONS, SHAPES, SIZES
from ralu_export.shapes_world.world import (
    _BACKGROUND_WORDS, _PAIR_TEMPLATES, _POSITION_PHRASES, _SINGLE_TEMPLATES,
)

TEXT_LENGTH = 32  # tokens, both encoders (CLIP pads to it; T5 is trained at it)
CLIP_BOS, CLIP_EOS = "<|startoftext|>", "<|endoftext|>"
_CLIP_PATTERN = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


@dataclass(frozen=True)
class ShapesModelConfig:
    """Sizes of the built-in model. Defaults are what ships (about 36 MB of float32 safetensors)."""

    text_dim: int = 128
    text_layers: int = 2
    text_heads: int = 4
    transformer_heads: int = 6
    transformer_head_dim: int = 32
    axes_dims_rope: tuple[int, int, int] = (8, 12, 12)
    double_layers: int = 2
    single_layers: int = 5
    vae_channels: tuple[int, ...] = (32, 64, 64)
    latent_channels: int = 4
    image_size: int = 128
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def caption_corpus() -> list[str]:
    """Every word and phrase the captions use, repeated in context, for training the tokenizers."""
    words = list(SHAPES) + list(COLOURS) + list(SIZES) + list(_BACKGROUND_WORDS.values())
    lines = [" ".join(words), " ".join(_POSITION_PHRASES.values())]
    for t in _SINGLE_TEMPLATES:
        for s in SHAPES:
            for c in COLOURS:
                lines.append(t.format(size="large", colour=c, shape=s, where=_POSITION_PHRASES["left"]))
    for t in _PAIR_TEMPLATES:
        for p in POSITIONS:
            lines.append(t.format(a="small red circle", b="large blue square", a_where=_POSITION_PHRASES[p],
                                  b_where=_POSITION_PHRASES["right"]))
    for b in BACKGROUNDS:
        lines.append(f"a circle on a {_BACKGROUND_WORDS[b]} background")
    return lines


def build_clip_tokenizer(out_dir: Path) -> Path:
    """Train a CLIP-style byte-level BPE (end-of-word suffix `</w>`) on the captions; write the files that
    transformers' CLIPTokenizer (vocab.json + merges.txt) and CLIPTokenizerFast (tokenizer.json) load."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import CLIPTokenizer, CLIPTokenizerFast

    tok = Tokenizer(models.BPE(end_of_word_suffix="</w>", unk_token=CLIP_EOS))
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                           normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_CLIP_PATTERN), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=[CLIP_BOS, CLIP_EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), end_of_word_suffix="</w>")
    tok.train_from_iterator(caption_corpus() * 4, trainer)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.model.save(str(out_dir))  # vocab.json + merges.txt
    slow = CLIPTokenizer(str(out_dir / "vocab.json"), str(out_dir / "merges.txt"), model_max_length=TEXT_LENGTH,
                         pad_token=CLIP_EOS)
    slow.save_pretrained(str(out_dir))
    fast = CLIPTokenizerFast.from_pretrained(str(out_dir))
    fast.save_pretrained(str(out_dir))  # adds tokenizer.json for the runtime
    return out_dir


def build_t5_tokenizer(out_dir: Path) -> Path:
    """Train a T5-style Unigram tokenizer (Metaspace, `</s>` appended) on the captions; write tokenizer.json
    and the config T5TokenizerFast loads (pad 0, eos 1, unk 2, no extra ids)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    # The vocabulary is built directly from the caption words rather than by UnigramTrainer, which on a
    # corpus this small prunes common words into characters. Whole words score high; single characters
    # and punctuation are the fallback for words the captions never use.
    counts: dict[str, int] = {}
    for line in caption_corpus():
        for word in re.findall(r"[a-z]+|[^\sa-z]", line.lower()):
            counts[word] = counts.get(word, 0) + 1
    total = sum(counts.values())
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [("\u2581" + w, math.log(c / total)) for w, c in sorted(counts.items()) if w.isalpha()]
    pieces += [("\u2581", -12.0)]
    pieces += [(ch, -14.0) for ch in "abcdefghijklmnopqrstuvwxyz0123456789,.:;!?'-<>()[]_/"]
    tok = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase(),
                                           normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", tok.token_to_id("</s>"))])
    fast = T5TokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                           extra_ids=0, model_max_length=TEXT_LENGTH)
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out_dir))
    return out_dir


def build_components(config: ShapesModelConfig, clip_vocab_size: int, t5_vocab_size: int,
                     clip_special_ids: dict[str, int]) -> dict:
    """Freshly initialised torch modules of the pipeline: text_encoder, text_encoder_2, vae, transformer."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    clip = CLIPTextModel(CLIPTextConfig(
        vocab_size=clip_vocab_size, hidden_size=config.text_dim, intermediate_size=config.text_dim * 2,
        num_hidden_layers=config.text_layers, num_attention_heads=config.text_heads,
        max_position_embeddings=TEXT_LENGTH, projection_dim=config.text_dim, hidden_act="quick_gelu",
        bos_token_id=clip_special_ids["bos"], eos_token_id=clip_special_ids["eos"],
        pad_token_id=clip_special_ids["eos"]))
    t5 = T5EncoderModel(T5Config(
        vocab_size=t5_vocab_size, d_model=config.text_dim, d_kv=config.text_dim // config.text_heads,
        d_ff=config.text_dim * 2, num_layers=config.text_layers, num_heads=config.text_heads,
        feed_forward_proj="gated-gelu", relative_attention_num_buckets=16, relative_attention_max_distance=64,
        dropout_rate=0.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, is_encoder_decoder=False,
        use_cache=False))
    n = len(config.vae_channels)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=tuple(config.vae_channels),
        layers_per_block=1, latent_channels=config.latent_channels, norm_num_groups=16,
        sample_size=config.image_size, scaling_factor=1.0, shift_factor=0.0, use_quant_conv=False,
        use_post_quant_conv=False)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=config.latent_channels * 4, num_layers=config.double_layers,
        num_single_layers=config.single_layers, attention_head_dim=config.transformer_head_dim,
        num_attention_heads=config.transformer_heads, joint_attention_dim=config.text_dim,
        pooled_projection_dim=config.text_dim, guidance_embeds=False, axes_dims_rope=config.axes_dims_rope)
    return {"text_encoder": clip, "text_encoder_2": t5, "vae": vae, "transformer": transformer}


def build_scheduler():
    """FLUX.1's scheduler configuration (dynamic shift by sequence length; 256 tokens -> mu = 0.5)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096)


def load_tokenizers(tokenizer_root: Path):
    """(CLIPTokenizer, T5TokenizerFast) from `tokenizer_root/{tokenizer,tokenizer_2}`."""
    from transformers import CLIPTokenizer, T5TokenizerFast

    return (CLIPTokenizer.from_pretrained(str(tokenizer_root / "tokenizer")),
            T5TokenizerFast.from_pretrained(str(tokenizer_root / "tokenizer_2")))


def clip_special_ids(clip_tokenizer) -> dict[str, int]:
    return {"bos": clip_tokenizer.convert_tokens_to_ids(CLIP_BOS), "eos": clip_tokenizer.convert_tokens_to_ids(CLIP_EOS)}


def assemble_pipeline(components: dict, tokenizer_root: Path):
    """A diffusers FluxPipeline from trained components and the tokenizers on disk."""
    from diffusers import FluxPipeline

    clip_tok, t5_tok = load_tokenizers(tokenizer_root)
    return FluxPipeline(scheduler=build_scheduler(), vae=components["vae"], text_encoder=components["text_encoder"],
                        tokenizer=clip_tok, text_encoder_2=components["text_encoder_2"], tokenizer_2=t5_tok,
                        transformer=components["transformer"])


def write_config(config: ShapesModelConfig, path: Path) -> None:
    path.write_text(json.dumps(config.to_dict(), indent=2) + "\n")
