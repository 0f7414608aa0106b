"""First-order Textual Inversion on the built-in `shapes` FluxPipeline (ralu_export.textual_inversion; the
baseline of issue 6): a couple of steps train only the new rows, the output file round-trips, and diffusers'
own load_textual_inversion accepts its CLIP entry."""

import copy
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from ralu_edge.errors import UserError  # noqa: E402
from ralu_export import textual_inversion as ti  # noqa: E402
from ralu_export.shapes_world.world import Scene, SceneObject, caption_for, render  # noqa: E402

TOKEN, INIT_WORD = "<sks>", "square"
SCENES = [Scene((SceneObject("hexagon", "red", "left", "large"),), "plain-light"),
          Scene((SceneObject("hexagon", "blue", "right", "small"),), "plain-dark", template=1)]


@pytest.fixture(scope="module")
def base_pipe():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)  # the CI box has 2 shared cores
    from ralu_export.models import load_flux_pipeline

    return load_flux_pipeline("shapes")


@pytest.fixture(scope="module")
def images():
    return np.stack([render(scene) for scene in SCENES])


@pytest.fixture(scope="module")
def fitted(base_pipe, images):
    """(pipe after two steps, original pipe, embeds, history)."""
    pipe = copy.deepcopy(base_pipe)
    captions = [caption_for(scene).replace("hexagon", "{}") for scene in SCENES]
    embeds, history = ti.fit_first_order(pipe, images, TOKEN, INIT_WORD, steps=2, seed=3, lr=5e-2, batch_size=2,
                                         captions=captions, posterior="mean")
    return pipe, base_pipe, embeds, history


def test_two_steps_give_finite_losses_and_embeddings_of_the_encoders_widths(fitted):
    pipe, _, embeds, history = fitted
    assert history.losses.shape == (2,) and np.all(np.isfinite(history.losses))
    assert set(embeds) == {"clip_l", "t5"}
    assert embeds["clip_l"].shape == (1, pipe.text_encoder.config.hidden_size)
    assert embeds["t5"].shape == (1, pipe.text_encoder_2.config.d_model)
    assert all(e.dtype == np.float32 and np.all(np.isfinite(e)) for e in embeds.values())


def test_only_the_new_rows_change(fitted):
    pipe, original, embeds, _ = fitted
    for key, (tok_attr, enc_attr) in ti.ENCODERS.items():
        new_id = getattr(pipe, tok_attr).convert_tokens_to_ids(TOKEN)
        init_id = getattr(pipe, tok_attr).encode(INIT_WORD, add_special_tokens=False)[0]
        before = getattr(original, enc_attr).get_input_embeddings().weight.detach()
        after = getattr(pipe, enc_attr).get_input_embeddings().weight.detach()
        assert after.shape[0] == max(before.shape[0], new_id + 1)
        assert torch.equal(after[: before.shape[0]][torch.arange(before.shape[0]) != new_id],
                           before[torch.arange(before.shape[0]) != new_id])
        np.testing.assert_array_equal(after[new_id].numpy(), embeds[key][0])
        assert not torch.equal(after[new_id], before[init_id])  # it trained, starting from the init word
    for name in ("transformer", "vae"):
        ours, theirs = getattr(pipe, name).state_dict(), getattr(original, name).state_dict()
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    clip_rest = {k: v for k, v in pipe.text_encoder.state_dict().items() if "token_embedding" not in k}
    assert all(torch.equal(v, original.text_encoder.state_dict()[k]) for k, v in clip_rest.items())


def test_learned_embeds_file_round_trips(fitted, tmp_path):
    _, _, embeds, _ = fitted
    path = ti.save_learned_embeds(tmp_path / "learned_embeds.safetensors", embeds, TOKEN, INIT_WORD)
    loaded, metadata = ti.load_learned_embeds(path)
    assert metadata == {"format": "pt", "token": TOKEN, "init_word": INIT_WORD}
    assert set(loaded) == set(embeds) and all(np.array_equal(loaded[k], embeds[k]) for k in embeds)
    assert [p.name for p in tmp_path.iterdir()] == ["learned_embeds.safetensors"]  # no temporary left behind


def test_an_unreadable_embeddings_file_is_a_user_error(tmp_path):
    path = tmp_path / "learned_embeds.safetensors"
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="not a readable"):
        ti.load_learned_embeds(path)
    with pytest.raises(UserError, match="not a readable"):
        ti.load_learned_embeds(tmp_path / "missing.safetensors")


def test_diffusers_load_textual_inversion_accepts_the_entries(fitted, base_pipe, tmp_path):
    from safetensors.torch import load_file

    _, _, embeds, _ = fitted
    state_dict = load_file(ti.save_learned_embeds(tmp_path / "learned_embeds.safetensors", embeds, TOKEN))
    pipe = copy.deepcopy(base_pipe)
    pipe.load_textual_inversion(state_dict["clip_l"], token=TOKEN, text_encoder=pipe.text_encoder,
                                tokenizer=pipe.tokenizer)
    pipe.load_textual_inversion(state_dict["t5"], token=TOKEN, text_encoder=pipe.text_encoder_2,
                                tokenizer=pipe.tokenizer_2)
    for key, (tok_attr, enc_attr) in ti.ENCODERS.items():
        new_id = getattr(pipe, tok_attr).convert_tokens_to_ids(TOKEN)
        row = getattr(pipe, enc_attr).get_input_embeddings().weight[new_id].detach().numpy()
        np.testing.assert_array_equal(row, embeds[key][0])
    with torch.inference_mode():
        states, pooled, _ = pipe.encode_prompt(prompt=[f"a red {TOKEN} on the left"], prompt_2=None,
                                               max_sequence_length=ti.TEXT_LENGTH)
    assert torch.isfinite(states).all() and torch.isfinite(pooled).all()


def test_first_loss_is_the_seam_velocity_mse_at_the_init_embedding(base_pipe, images):
    """The trainer's loss, recomputed the way the runtime does: draw_step → ralu_edge.zo.training_pair of the
    cached moments → the prompt with the token (its row = the init word's) through FluxPipeline.encode_prompt →
    the denoiser seam → velocity_mse."""
    from ralu_edge.tokens import grid_positions
    from ralu_edge.zo.timesteps import PutsConfig, draw_step, training_pair, velocity_mse
    from ralu_export.torch_backend import TorchFluxDenoiser, encode_prompt

    caption = caption_for(SCENES[0]).replace("hexagon", "{}")
    _, history = ti.fit_first_order(copy.deepcopy(base_pipe), images[:1], TOKEN, INIT_WORD, steps=1, seed=8,
                                    captions=[caption])
    pipe = copy.deepcopy(base_pipe)
    ti.add_placeholder_token(pipe, TOKEN, INIT_WORD)
    means, logvars = ti.encode_image_moments(pipe, images[:1])
    draw = draw_step(8, 1, num_images=1, latent_shape=means.shape[2:], puts=PutsConfig(), image_pixels=128 * 128)
    pair = training_pair(draw, means, logvars, shift_factor=pipe.vae.config.shift_factor,
                         scaling_factor=pipe.vae.config.scaling_factor)
    cond = encode_prompt(pipe, [caption.replace("{}", TOKEN)], max_sequence_length=ti.TEXT_LENGTH)
    velocity = TorchFluxDenoiser(pipe.transformer)(pair.x_sigma, grid_positions(16, 16),
                                                   draw.sigmas.astype(np.float32), cond)
    expected = velocity_mse(velocity, pair.target)
    assert history.losses[0] == pytest.approx(expected, rel=1e-5)


def test_same_seed_gives_the_same_embeddings(base_pipe, images):
    runs = [ti.fit_first_order(copy.deepcopy(base_pipe), images[:1], TOKEN, INIT_WORD, steps=1, seed=5)[0]
            for _ in range(2)]
    assert all(np.array_equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_bad_token_init_word_or_images_are_user_errors_and_change_nothing(base_pipe, images):
    pipe = copy.deepcopy(base_pipe)
    sizes = (len(pipe.tokenizer), len(pipe.tokenizer_2))
    with pytest.raises(UserError, match="already in"):
        ti.add_placeholder_token(pipe, "circle", INIT_WORD)
    with pytest.raises(UserError, match="not one"):
        ti.add_placeholder_token(pipe, TOKEN, "red circle")
    with pytest.raises(UserError, match="multiple of"):
        ti.fit_first_order(pipe, images[:, :100, :100], TOKEN, INIT_WORD, steps=1, seed=0)
    with pytest.raises(UserError, match="one caption per image"):
        ti.fit_first_order(pipe, images, TOKEN, INIT_WORD, steps=1, seed=0, captions=["a red circle", "a {}"])
    assert (len(pipe.tokenizer), len(pipe.tokenizer_2)) == sizes


def test_first_order_side_tokenizes_learned_tokens_exactly_as_the_runtime(base_pipe):
    """transformers' tokenizers after add_placeholder_token give the torch-free runtime's ids (same prompt
    length as with the init word: the T5 token must not leave a stray '▁' piece)."""
    from ralu_export.models import resolve_model
    from ralu_runtime.tokenization import PromptTokenizer, TokenizerConfig

    pipe = copy.deepcopy(base_pipe)
    placeholder = ti.add_placeholder_token(pipe, TOKEN, INIT_WORD)
    folder = resolve_model("shapes")
    for key, (tok_attr, _) in ti.ENCODERS.items():
        hf = getattr(pipe, tok_attr)
        spec = (1, 1) if key == "clip_l" else (0, 1)  # pad, eos of the built-in model's tokenizers
        runtime = PromptTokenizer(folder / tok_attr / "tokenizer.json",
                                  TokenizerConfig(ti.TEXT_LENGTH, *spec, placeholder.ids[key]), (TOKEN,))
        for prompt in (f"a large red {TOKEN} in the centre", f"{TOKEN}, a circle and a {TOKEN}-like star"):
            ids = hf(prompt, padding="max_length", max_length=ti.TEXT_LENGTH, truncation=True).input_ids
            assert ids == runtime.encode(prompt)[0].tolist(), (key, prompt)
            word = hf(prompt.replace(TOKEN, INIT_WORD), padding="max_length", max_length=ti.TEXT_LENGTH,
                      truncation=True).input_ids
            assert [placeholder.ids[key] if i == placeholder.init_ids[key] else i for i in word] == ids
