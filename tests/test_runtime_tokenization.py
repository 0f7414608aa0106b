"""Learned tokens in the torch-free tokenizer (ralu_runtime.tokenization, issue 6): a learned token tokenizes
like one word of the vocabulary in both bundle tokenizers (CLIP BPE and T5 Unigram), so a prompt with it has as
many ids as the same prompt with the init word and differs only where the word was. NumPy + tokenizers only."""

from pathlib import Path

import pytest
from tokenizers import Tokenizer

from ralu_edge.errors import UserError
from ralu_runtime.tokenization import PromptTokenizer, TokenizerConfig, add_learned_tokens

SHAPES = Path(__file__).resolve().parents[1] / "export/builtin/shapes"
# (tokenizer folder, max_length, pad id, eos id, first free id) of the built-in model, as its manifest records them
TOKENIZERS = {"clip": ("tokenizer", 32, 1, 1, 400), "t5": ("tokenizer_2", 32, 0, 1, 97)}
TOKEN, INIT = "<hex>", "square"
PROMPTS = ("a large red {} in the centre", "{} on the left", "a {}, a circle and a {}", "a {}-like star",
           "A  {}\tbeside a circle")


def _tokenizer(kind: str, *learned: str) -> PromptTokenizer:
    folder, length, pad, eos, first_free = TOKENIZERS[kind]
    return PromptTokenizer(SHAPES / folder / "tokenizer.json", TokenizerConfig(length, pad, eos, first_free), learned)


@pytest.mark.parametrize("kind", sorted(TOKENIZERS))
@pytest.mark.parametrize("template", PROMPTS)
def test_a_learned_token_takes_the_place_of_the_init_word_and_nothing_else(kind, template):
    tok = _tokenizer(kind, TOKEN)
    with_token = tok.encode(template.format(TOKEN, TOKEN))[0].tolist()
    with_word = tok.encode(template.format(INIT, INIT))[0].tolist()
    init_id = _tokenizer(kind)._tokenizer.encode(INIT, add_special_tokens=False).ids
    assert len(init_id) == 1, "the init word must be one token for this test to mean anything"
    learned_id = tok.placeholder_ids[TOKEN]
    assert len(tok.tokens(template.format(TOKEN, TOKEN))) == len(tok.tokens(template.format(INIT, INIT)))
    assert [learned_id if i == init_id[0] else i for i in with_word] == with_token


@pytest.mark.parametrize("kind", sorted(TOKENIZERS))
def test_prompts_without_learned_tokens_tokenize_as_the_bundle_tokenizer_does(kind):
    folder = TOKENIZERS[kind][0]
    plain = Tokenizer.from_file(str(SHAPES / folder / "tokenizer.json"))
    tok = _tokenizer(kind, TOKEN)
    for prompt in ("a large red square in the centre", "  two BLUE circles,  left ", "special </s> and <pad> too"):
        assert tok._tokenizer.encode(prompt).ids == plain.encode(prompt).ids


def test_the_t5_token_no_longer_leaves_a_stray_word_boundary_piece():
    tokens = _tokenizer("t5", TOKEN).tokens(f"a red {TOKEN} in")
    assert "▁" not in tokens and tokens.count(TOKEN) + tokens.count(f" {TOKEN}") == 1


def test_add_learned_tokens_gives_consecutive_ids_and_is_idempotent_in_prompt_tokenizer():
    raw = Tokenizer.from_file(str(SHAPES / "tokenizer_2/tokenizer.json"))
    assert add_learned_tokens(raw, ["<a>", "<b>"]) == [97, 98]
    tok = _tokenizer("t5", "<a>", "<b>")
    assert tok.add_token("<a>") == 97 and tok.placeholder_ids == {"<a>": 97, "<b>": 98}


@pytest.mark.parametrize("token", ["square", "<x y>", ""])
def test_a_known_word_or_a_token_with_spaces_is_a_user_error(token):
    with pytest.raises(UserError):
        _tokenizer("t5", token)


@pytest.mark.parametrize("kind", sorted(TOKENIZERS))
def test_padded_ids_keep_the_end_of_text_token_when_truncating_and_pad_to_max_length(kind):
    _, length, pad, eos, _ = TOKENIZERS[kind]
    tok = _tokenizer(kind)
    short, long = "a red circle", " ".join(["many words"] * 40)
    assert tok.padded_ids(short) == tok.ids(short) + [pad] * (length - len(tok.ids(short)))
    assert len(tok.ids(long)) > length
    assert tok.padded_ids(long) == tok.ids(long)[:length - 1] + [eos]
    assert tok.encode(long)[0].tolist() == tok.padded_ids(long) and tok.encode(long).dtype == "int64"


def test_the_config_of_a_manifest_tokenizer_spec_is_its_subset():
    from ralu_edge.manifest import TokenizerSpec

    spec = TokenizerSpec("tokenizer_2", ("tokenizer_2/tokenizer.json",), "tokenizer_2/tokenizer.json", "t5", 32, 0, 1,
                         None, 97)
    assert TokenizerConfig.from_spec(spec) == TokenizerConfig(32, 0, 1, 97)
