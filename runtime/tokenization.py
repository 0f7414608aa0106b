"""Prompt tokenisation for bundle text encoders with the `tokenizers` library (no transformers, no torch): the
one recipe (`PromptTokenizer`) that the runtime encodes prompts with, that ralu-export checks each exported
tokenizer.json against transformers with, and that the conformance vectors for ports record.

Ids are produced exactly as diffusers' FluxPipeline produces them (CLIP: <|startoftext|> ... <|endoftext|>
padded with the pad id to max_length; T5: ... </s> padded with <pad>), truncating so the end-of-text token
survives. Learned tokens (Textual Inversion) are added as whole-string tokens that map to the placeholder
ids the text-encoder graphs replace with injected embeddings (spec/ZO_PERSONALIZATION.md §11.3), and they are
added so that they tokenize like one word of the vocabulary (`add_learned_tokens`): "a red <hex> in" has the
same number of ids as "a red square in", with the learned id where '▁square' / 'square</w>' was."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
from tokenizers import AddedToken, Tokenizer

from ralu_edge.errors import UserError
from ralu_edge.manifest import TokenizerSpec

log = logging.getLogger(__name__)


def learned_added_token(token: str) -> AddedToken:
    """The `tokenizers` AddedToken of a learned (Textual Inversion) token.

    lstrip=True: the token absorbs the whitespace before it, as a word-initial piece does. Without it T5's
    Metaspace pre-tokenizer turns the space before the token into a lone '▁' piece ("a red <hex>" becomes
    '▁a', '▁red', '▁', '<hex>'), one token more than "a red square" and a different prompt from the one the
    init word's embedding was trained in. CLIP's pre-tokenizer drops whitespace, so lstrip changes nothing there.
    normalized=False: matched case-sensitively on the raw prompt, never split by the normalizer."""
    return AddedToken(token, single_word=False, lstrip=True, rstrip=False, normalized=False, special=False)


def _first_prepend_scheme(node: dict) -> bool:
    """Switch every Metaspace in a pre-tokenizer's JSON from prepending '▁' to every section ("always") to only
    the text's first section ("first"); returns whether anything changed."""
    changed = False
    if node.get("type") == "Metaspace":
        scheme = node.get("prepend_scheme") or ("always" if node.get("add_prefix_space", True) else "never")
        if scheme == "always":
            node["prepend_scheme"], node["add_prefix_space"], changed = "first", True, True
    for child in node.get("pretokenizers") or ():
        changed |= _first_prepend_scheme(child)
    return changed


def word_like_learned_tokens(tokenizer: Tokenizer) -> None:
    """Make the text after an added token continue the word sequence as it would after a vocabulary word.

    A SentencePiece-style Metaspace with prepend_scheme "always" prepends '▁' to every section between added
    tokens, so "<hex>, in" gives '<hex>', '▁', ',' where "square, in" gives '▁square', ','. "first" prepends
    only at the start of the prompt, which is how SentencePiece itself (and transformers' non-legacy T5/Llama
    tokenizers) treats text after an added token. Prompts without added tokens are one section and tokenize
    exactly as before. Changes `tokenizer` in place; a no-op for tokenizers without a Metaspace (CLIP)."""
    state = json.loads(tokenizer.to_str())
    if state.get("pre_tokenizer") and _first_prepend_scheme(state["pre_tokenizer"]):
        tokenizer.pre_tokenizer = Tokenizer.from_str(json.dumps(state)).pre_tokenizer


def add_learned_tokens(tokenizer: Tokenizer, tokens: Iterable[str]) -> list[int]:
    """Add learned tokens to a `tokenizers` Tokenizer the way every side of the project does (this runtime,
    ralu_export's first-order TI through `transformers`, the Kotlin port and its conformance vectors): the
    AddedToken flags of `learned_added_token` and the pre-tokenizer of `word_like_learned_tokens`. Returns
    their ids."""
    tokens = list(tokens)
    word_like_learned_tokens(tokenizer)
    tokenizer.add_tokens([learned_added_token(t) for t in tokens])
    return [tokenizer.token_to_id(t) for t in tokens]


@dataclass(frozen=True)
class TokenizerConfig:
    """What the manifest says about one tokenizer (a subset of ralu_edge.manifest.TokenizerSpec)."""

    max_length: int
    pad_token_id: int
    eos_token_id: int
    first_free_id: int

    @classmethod
    def from_spec(cls, spec: TokenizerSpec) -> "TokenizerConfig":
        """The config a manifest's TokenizerSpec describes."""
        return cls(spec.max_length, spec.pad_token_id, spec.eos_token_id, spec.first_free_id)


class PromptTokenizer:
    """A loaded tokenizer.json plus the learned tokens added to it (token string -> placeholder id)."""

    def __init__(self, path: Path, config: TokenizerConfig, learned_tokens: tuple[str, ...] = ()):
        if not path.is_file():
            raise UserError(f"{path}: tokenizer file missing; re-export the bundle.")
        try:
            self._tokenizer = Tokenizer.from_file(str(path))
        except Exception as e:  # the tokenizers library raises a bare Exception for a malformed file
            raise UserError(f"{path}: not a tokenizer file the tokenizers library can read "
                            f"({' '.join(str(e).split())[:120]}); re-export the bundle.") from None
        self.name = path.parent.name
        self.config = config
        size = self._tokenizer.get_vocab_size(with_added_tokens=True)
        if size != config.first_free_id:
            raise UserError(f"{path}: the tokenizer has {size} tokens but the manifest says the first free id is "
                            f"{config.first_free_id}; the bundle's tokenizer and manifest disagree, re-export it.")
        self.placeholder_ids: dict[str, int] = {}
        self._truncated: set[str] = set()  # prompts already warned about, so each is reported once
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
        new_id = add_learned_tokens(self._tokenizer, [token])[0]
        expected = self.config.first_free_id + len(self.placeholder_ids)
        if new_id != expected:
            raise UserError(f"tokenizer gave learned token {token!r} id {new_id}, expected {expected}; the "
                            "bundle's tokenizer and manifest disagree, re-export the bundle.")
        self.placeholder_ids[token] = new_id
        return new_id

    def ids(self, prompt: str) -> list[int]:
        """The ids of a prompt with the tokenizer's special tokens, neither truncated nor padded."""
        return self._tokenizer.encode(prompt).ids

    def padded_ids(self, prompt: str) -> list[int]:
        """The max_length ids a text encoder reads: `ids` truncated as FluxPipeline truncates (the end-of-text
        token kept last) and padded with the pad id."""
        return self._fit(self.ids(prompt))

    def _fit(self, ids: list[int]) -> list[int]:
        length = self.config.max_length
        if len(ids) > length:
            ids = ids[:length - 1] + [self.config.eos_token_id]
        return ids + [self.config.pad_token_id] * (length - len(ids))

    def encode(self, prompt: str) -> np.ndarray:
        """`padded_ids` of one prompt as [1, max_length] int64; warns once per prompt that is truncated."""
        encoding = self._tokenizer.encode(prompt)
        length = self.config.max_length
        if len(encoding.ids) > length and prompt not in self._truncated:
            self._truncated.add(prompt)
            kept_chars = max(end for _, end in encoding.offsets[:length - 1])
            log.warning("the prompt is %d tokens for %s, which reads %d; %r is ignored (as in diffusers).",
                        len(encoding.ids), self.name, length, prompt[kept_chars:].strip())
        return np.asarray(self._fit(encoding.ids), dtype=np.int64)[None, :]

    def tokens(self, prompt: str) -> list[str]:
        """The token strings of a prompt (for messages and debugging)."""
        return self._tokenizer.encode(prompt).tokens
