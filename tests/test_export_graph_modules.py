"""The graph boundary modules compute what the diffusers/transformers modules compute: the RALU denoiser
with host RoPE tables equals FluxTransformer2DModel with position ids (fractional ones included), and the
text encoders with injected embeddings equal the stock encoders with that table row replaced."""

import copy

import numpy as np
import pytest
import torch

from ralu_edge.rope import rope_tables
from ralu_export import graph_modules as gm
from ralu_export.models import load_flux_pipeline


@pytest.fixture(scope="module")
def pipe():
    return load_flux_pipeline("shapes")


def _ids(tokenizer, prompt: str) -> torch.Tensor:
    return tokenizer([prompt], padding="max_length", max_length=32, truncation=True, return_tensors="pt").input_ids


@torch.no_grad()
def test_denoiser_with_host_rope_equals_the_diffusers_transformer(pipe):
    rng = np.random.default_rng(0)
    tokens = 121  # a RALU stage-2 length, with half-integer child positions
    image_ids = np.stack([np.zeros(tokens), rng.integers(0, 32, tokens) / 2, rng.integers(0, 32, tokens) / 2], 1)
    text_ids = np.zeros((32, 3))
    cos, sin = rope_tables(np.concatenate([text_ids, image_ids]), (8, 12, 12), 10000.0)
    hidden = torch.randn(1, tokens, 16)
    text, pooled, sigma = torch.randn(1, 32, 128), torch.randn(1, 128), torch.tensor([0.7])
    expected = pipe.transformer(hidden_states=hidden, encoder_hidden_states=text, pooled_projections=pooled,
                                timestep=sigma, img_ids=torch.from_numpy(image_ids).float(),
                                txt_ids=torch.from_numpy(text_ids).float(), return_dict=False)[0]
    got = gm.FluxDenoiser(pipe.transformer)(hidden, text, pooled, sigma, torch.from_numpy(cos), torch.from_numpy(sin))
    from_ids = gm.FluxDenoiserFromIds(pipe.transformer)(hidden, text, pooled, sigma,
                                                        torch.from_numpy(text_ids).float(),
                                                        torch.from_numpy(image_ids).float())
    scale = expected.abs().max()
    assert (got - expected).abs().max() / scale < 1e-5
    assert (from_ids - expected).abs().max() / scale < 1e-5


@torch.no_grad()
def test_clip_with_no_placeholders_is_the_plain_clip_text_model(pipe):
    ids = _ids(pipe.tokenizer, "a small red circle")
    expected = pipe.text_encoder(ids)
    hidden, pooled = gm.ClipTextEncoder(pipe.text_encoder)(ids, torch.zeros(0, dtype=torch.long), torch.zeros(0, 128))
    torch.testing.assert_close(hidden, expected.last_hidden_state)
    torch.testing.assert_close(pooled, expected.pooler_output)


@pytest.mark.parametrize("encoder, tokenizer, width", [("text_encoder", "tokenizer", 128),
                                                       ("text_encoder_2", "tokenizer_2", 128)])
@torch.no_grad()
def test_a_placeholder_equals_the_stock_encoder_with_that_row_replaced(pipe, encoder, tokenizer, width):
    stock = getattr(pipe, encoder)
    ids = _ids(getattr(pipe, tokenizer), "a small red circle")
    token = int(ids[0, 2])  # a word of the prompt becomes the learned token
    learned = torch.randn(1, width) * 0.05
    edited = copy.deepcopy(stock)
    edited.get_input_embeddings().weight[token] = learned[0]
    expected = edited(ids)
    wrapper = gm.ClipTextEncoder(stock) if encoder == "text_encoder" else gm.T5TextEncoder(stock)
    got = wrapper(ids, torch.tensor([token]), learned)
    got = got if isinstance(got, tuple) else (got,)
    torch.testing.assert_close(got[0], expected.last_hidden_state)
    if encoder == "text_encoder":
        torch.testing.assert_close(got[1], expected.pooler_output)


@torch.no_grad()
def test_a_new_token_id_beyond_the_table_does_not_move_the_clip_pooling_position(pipe):
    ids = _ids(pipe.tokenizer, "a small red circle")
    new_id = pipe.text_encoder.config.vocab_size + 5  # the largest id: argmax pooling would pick it
    with_new = ids.clone()
    with_new[0, 2] = new_id
    learned = torch.randn(1, 128) * 0.05
    hidden, pooled = gm.ClipTextEncoder(pipe.text_encoder)(with_new, torch.tensor([new_id]), learned)
    eos = int((ids[0] == pipe.text_encoder.config.eos_token_id).nonzero()[0])
    torch.testing.assert_close(pooled[0], hidden[0, eos])


@torch.no_grad()
def test_vae_encoder_returns_optimum_moments_and_the_normalised_mean(pipe):
    image = torch.rand(1, 3, 128, 128) * 2 - 1
    parameters, mean = gm.VaeEncoder(pipe.vae)(image)
    config = pipe.vae.config
    expected = pipe.vae.encode(image).latent_dist.mean
    torch.testing.assert_close(parameters[:, :4], expected)
    torch.testing.assert_close(mean, (expected - config.shift_factor) * config.scaling_factor)


@pytest.mark.parametrize("eos_token_id", [2, 99])  # 2: a pre-#24773 config, as FLUX.1's CLIP-L ships
def test_the_flux_clip_module_pools_where_transformers_does(eos_token_id):
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    config = CLIPTextConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=2, max_position_embeddings=16, eos_token_id=eos_token_id,
                            bos_token_id=98, pad_token_id=99)
    model = CLIPTextModel(config).eval()
    ids = torch.tensor([[98, 5, 17, 40, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99]])
    with torch.no_grad():
        expected = model(ids)
        hidden, pooled = gm.ClipTextEncoder(model)(ids, torch.zeros(0, dtype=torch.long), torch.zeros(0, 32))
    torch.testing.assert_close(hidden, expected.last_hidden_state)
    torch.testing.assert_close(pooled, expected.pooler_output)
