"""Prompt tokenisation for bundle text encoders with the `tokenizers` library (no transformers, no torch).

Ids are produced exactly as diffusers' FluxPipeline produces them (CLIP: <|startoftext|> ... <|endoftext|>
padded with the pad id to max_length; T5: ... </s> padded with <pad>), truncating so the end-of-text token
survives. Learned tokens (Textual Inversion) are added as whole-string tokens that map to the placeholder
ids the text-encoder graphs replace with injected embeddings (spec/ZO_PERSONALIZATION.md §11.3)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import AddedToken, Tokenizer

from ralu_edge.errors import UserError


@dataclass(frozen=True)
class TokenizerConfig:
    """What the manifest says about one tokenizer (a subset of ralu_edge.manifest.TokenizerSpec)."""

    max_length: int
    pad_token_id: int
    eos_token_id: int
    first_free_id: int


class PromptTokenizer:
    """A loaded tokenizer.json plus the learned tokens added to it (token string -> placeholder id)."""

    def __init__(self, path: Path, config: TokenizerConfig, learned_tokens: tuple[str, ...] = ()):
        if not path.is_file():
            raise UserError(f"{path}: tokenizer file missing; re-export the bundle.")
        self._tokenizer = Tokenizer.from_file(str(path))
        self.config = config
        self.placeholder_ids: dict[str, int] = {}
        for token in learned_tokens:
            self.add_token(token)

    def add_token(self, token: str) -> int:
        """Register a learned token; returns its placeholder id (first_free_id, first_free_id + 1, ...)."""
        if token in self.placeholder_ids:
            return self.placeholder_ids[token]
        if not token or any(ch.isspace() for ch in token):
            raise UserError(f"learned token {token!r} must be one word without spaces, e.g. '<my-cat>'.")
        known = self._tokenizer.encode(token, add_special_tokens=False).ids
        if self._tokenizer.token_to_id(token) is not None or len(known) == 1:  # it would shadow a known word
            raise UserError(f"token {token!r} is already in the vocabulary; pick a new string such as '<{token}>'.")
        self._tokenizer.add_tokens([AddedToken(token, single_word=False, normalized=False, special=False)])
        new_id = self._tokenizer.token_to_id(token)
        expected = self.config.first_free_id + len(self.placeholder_ids)
        if new_id != expected:
            raise UserError(f"tokenizer gave learned token {token!r} id {new_id}, expected {expected}; the "
                            "bundle's tokenizer and manifest disagree, re-export the bundle.")
        self.placeholder_ids[token] = new_id
        return new_id

    def encode(self, prompt: str) -> np.ndarray:
        """Ids of one prompt: [1, max_length] int64, padded and truncated like FluxPipeline."""
        ids = self._tokenizer.encode(prompt).ids
        length = self.config.max_length
        if len(ids) > length:
            ids = ids[:length - 1] + [self.config.eos_token_id]
        ids = ids + [self.config.pad_token_id] * (length - len(ids))
        return np.asarray(ids, dtype=np.int64)[None, :]

    def tokens(self, prompt: str) -> list[str]:
        """The token strings of a prompt (for messages and debugging)."""
        return self._tokenizer.encode(prompt).tokens
