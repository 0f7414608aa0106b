"""The non-graph files of a bundle, in optimum's layout: model_index.json, scheduler/, each component's
config.json beside its graph, and the tokenizer folders. Every tokenizer folder gets a `tokenizer.json`
(converted from CLIP's vocab.json + merges.txt when missing) that the runtime loads with the `tokenizers`
library, and the conversion is checked: the runtime recipe (truncate and pad to max_length) must give the
same ids as the pipeline's own transformers tokenizer on the check prompts."""

from __future__ import annotations

import shutil
from pathlib import Path

from ralu_edge.manifest import TokenizerSpec
from ralu_export.families import FamilySpec, Geometry

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


def runtime_tokenizer(path: Path, max_length: int, pad_id: int):
    """The tokenizer the runtime uses: `tokenizers` from tokenizer.json, truncated and padded to max_length."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer.enable_padding(length=max_length, pad_id=pad_id)
    return tokenizer


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
        max_length = geometry.clip_length if encoder.kind == "clip" else geometry.text_length
        pad_id = int(reference.pad_token_id)
        _check_tokenizer(encoder.tokenizer, reference, runtime_tokenizer(destination / "tokenizer.json", max_length,
                                                                          pad_id), max_length)
        files = tuple(sorted(p.relative_to(root).as_posix() for p in destination.rglob("*") if p.is_file()))
        specs.append(TokenizerSpec(
            name=encoder.tokenizer, files=files, file=f"{encoder.tokenizer}/tokenizer.json", kind=encoder.kind,
            max_length=max_length, pad_token_id=pad_id, eos_token_id=int(reference.eos_token_id),
            bos_token_id=None if reference.bos_token_id is None else int(reference.bos_token_id),
            first_free_id=len(reference),
        ))
    return tuple(specs)


def _check_tokenizer(name: str, reference, runtime, max_length: int) -> None:
    for prompt in CHECK_PROMPTS:
        expected = reference(prompt, padding="max_length", max_length=max_length, truncation=True).input_ids
        got = runtime.encode(prompt).ids
        if list(expected) != list(got):
            raise TokenizerMismatch(f"{name}/tokenizer.json gives {got[:8]}… for {prompt[:30]!r} but the pipeline "
                                    f"tokenizer gives {list(expected)[:8]}…")


def tokenizer_ids(root: Path, spec: TokenizerSpec, prompt: str):
    """[1, max_length] int64 ids of `prompt` through the bundle's tokenizer (runtime recipe)."""
    import numpy as np

    ids = runtime_tokenizer(root / spec.file, spec.max_length, spec.pad_token_id).encode(prompt).ids
    return np.array([ids], dtype=np.int64)
