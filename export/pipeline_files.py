"""The non-graph files of a bundle, in optimum's layout: model_index.json, scheduler/, each component's
config.json beside its graph, and the tokenizer folders. Every tokenizer folder gets a `tokenizer.json`
(converted from CLIP's vocab.json + merges.txt when missing) that the runtime loads with the `tokenizers`
library, and the conversion is checked: the runtime's own recipe (`ralu_runtime.tokenization.PromptTokenizer`,
truncate and pad to max_length) must give the same ids as the pipeline's transformers tokenizer on the check
prompts."""

from __future__ import annotations

import shutil
from pathlib import Path

from ralu_edge.errors import UserError
from ralu_edge.manifest import TokenizerSpec
from ralu_export.families import FamilySpec, Geometry
from ralu_runtime.tokenization import PromptTokenizer, TokenizerConfig

# Prompts for the tokenizer check: ordinary captions, a long one that must be truncated, an empty one.
CHECK_PROMPTS = (
    "a photo of a cat",
    "a small red circle at the top left and a large blue square at the bottom right on a white background",
    " ".join(["many words"] * 80),
    "",
)

# Component folder -> the source folder whose config.json it carries (optimum splits the VAE in two).
_CONFIG_SOURCES = {"transformer": "transformer", "text_encoder": "text_encoder", "text_encoder_2": "text_encoder_2",
                   "text_encoder_3": "text_encoder_3", "vae_decoder": "vae", "vae_encoder": "vae"}


class TokenizerMismatch(RuntimeError):
    """The bundle's tokenizer.json does not reproduce the pipeline tokenizer (an exporter bug)."""


def copy_pipeline_files(source: Path, root: Path, folders: set[str]) -> None:
    """model_index.json, scheduler/ and config.json of each graph folder in `folders`, from the pipeline."""
    shutil.copy2(source / "model_index.json", root / "model_index.json")
    shutil.copytree(source / "scheduler", root / "scheduler")
    for folder in sorted(folders):
        (root / folder).mkdir(exist_ok=True)
        shutil.copy2(source / _CONFIG_SOURCES[folder] / "config.json", root / folder / "config.json")


def copy_tokenizers(source: Path, root: Path, family: FamilySpec, geometry: Geometry) -> tuple[TokenizerSpec, ...]:
    """Copy each encoder's tokenizer folder, add tokenizer.json where missing, check the runtime recipe
    against transformers, and describe the result for the manifest."""
    from transformers import AutoTokenizer

    specs = []
    for encoder in family.encoders:
        destination = root / encoder.tokenizer
        shutil.copytree(source / encoder.tokenizer, destination)
        reference = AutoTokenizer.from_pretrained(str(destination), use_fast=False) if encoder.kind == "clip" \
            else AutoTokenizer.from_pretrained(str(destination))
        if not (destination / "tokenizer.json").is_file():
            AutoTokenizer.from_pretrained(str(destination), use_fast=True).backend_tokenizer.save(
                str(destination / "tokenizer.json"))
        files = tuple(sorted(p.relative_to(root).as_posix() for p in destination.rglob("*") if p.is_file()))
        spec = TokenizerSpec(
            name=encoder.tokenizer, files=files, file=f"{encoder.tokenizer}/tokenizer.json", kind=encoder.kind,
            max_length=geometry.clip_length if encoder.kind == "clip" else geometry.text_length,
            pad_token_id=int(reference.pad_token_id), eos_token_id=int(reference.eos_token_id),
            bos_token_id=None if reference.bos_token_id is None else int(reference.bos_token_id),
            first_free_id=len(reference),
        )
        _check_tokenizer(root, spec, reference)
        specs.append(spec)
    return tuple(specs)


def _check_tokenizer(root: Path, spec: TokenizerSpec, reference) -> None:
    """The runtime's PromptTokenizer over the bundle's tokenizer.json gives the transformers tokenizer's ids."""
    try:
        runtime = PromptTokenizer(root / spec.file, TokenizerConfig.from_spec(spec))
    except UserError as e:
        raise TokenizerMismatch(f"the runtime refuses {spec.file}: {e}") from None
    for prompt in CHECK_PROMPTS:
        expected = list(reference(prompt, padding="max_length", max_length=spec.max_length, truncation=True).input_ids)
        got = runtime.padded_ids(prompt)
        if expected != got:
            raise TokenizerMismatch(f"{spec.file} gives {got[:8]}… for {prompt[:30]!r} but the pipeline tokenizer "
                                    f"gives {expected[:8]}…")


def tokenizer_ids(root: Path, spec: TokenizerSpec, prompt: str):
    """[1, max_length] int64 ids of `prompt` through the bundle's tokenizer, as the runtime encodes it."""
    return PromptTokenizer(root / spec.file, TokenizerConfig.from_spec(spec)).encode(prompt)
