"""The exported SD3 transformer core on token sequences (spec/RALU.md §9.7): host patchify -> core with
per-token position embeddings -> host permute + unpatchify equals SD3Transformer2DModel.forward on a full
grid, takes sigma * 1000 as its timestep, and serves a RALU mixed-resolution sequence."""

import numpy as np
import pytest

from ralu_edge.rng import rng_for
from ralu_edge.sd3 import patchify, unpatchify
from ralu_edge.seam import Conditioning
from ralu_edge.tokens import assemble_stage2, grid_positions


@pytest.fixture(scope="module")
def transformer():
    import torch
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(0)
    return SD3Transformer2DModel(sample_size=32, patch_size=2, in_channels=16, num_layers=2, attention_head_dim=16,
                                 num_attention_heads=2, joint_attention_dim=96, caption_projection_dim=32,
                                 pooled_projection_dim=80, out_channels=16, pos_embed_max_size=48).eval()


def _inputs(batch: int, grid: int):
    rng = rng_for(0, "test-sd3-core")
    latent = rng.standard_normal((batch, 16, 2 * grid, 2 * grid)).astype(np.float32)
    cond = Conditioning(text_states=rng.standard_normal((batch, 12, 96)).astype(np.float32),
                        pooled=rng.standard_normal((batch, 80)).astype(np.float32))
    return latent, cond


@pytest.mark.parametrize("grid", [8, 6])
def test_patchify_core_unpatchify_equals_sd3_forward_on_a_full_grid(transformer, grid):
    import torch

    from ralu_export.torch_backend import TorchSd3Denoiser

    latent, cond = _inputs(2, grid)
    sigmas = np.array([0.7, 0.3], np.float32)
    with torch.no_grad():
        expected = transformer(hidden_states=torch.from_numpy(latent),
                               encoder_hidden_states=torch.from_numpy(cond.text_states),
                               pooled_projections=torch.from_numpy(cond.pooled),
                               timestep=torch.from_numpy(sigmas * 1000), return_dict=False)[0].numpy()
    denoiser = TorchSd3Denoiser(transformer, grid, grid)
    velocity = denoiser(patchify(latent), grid_positions(grid, grid), sigmas, cond)
    ours = unpatchify(velocity, grid, grid)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-5 * np.abs(expected).max())


def test_the_core_takes_sigma_times_1000(transformer):
    import torch

    from ralu_export.graph_modules import Sd3Denoiser
    from ralu_export.torch_backend import TorchSd3Denoiser

    latent, cond = _inputs(1, 4)
    denoiser = TorchSd3Denoiser(transformer, 4, 4)
    seam = denoiser(patchify(latent), grid_positions(4, 4), np.array([0.5], np.float32), cond)
    core = Sd3Denoiser(transformer)
    from ralu_edge.sd3 import packed_from_sd3_output, position_embeddings

    embeds = torch.from_numpy(position_embeddings(grid_positions(4, 4), 4, 4, denoiser.grid))
    args = (torch.from_numpy(patchify(latent)), torch.from_numpy(cond.text_states), torch.from_numpy(cond.pooled))
    with torch.no_grad():
        at_500 = packed_from_sd3_output(core(*args, torch.tensor([500.0]), embeds).numpy(), 16)
        at_half = packed_from_sd3_output(core(*args, torch.tensor([0.5]), embeds).numpy(), 16)
    np.testing.assert_allclose(seam, at_500, atol=1e-6)
    assert np.abs(seam - at_half).max() > 1e-3


def test_the_core_runs_a_mixed_resolution_stage_two_sequence(transformer):
    from ralu_export.torch_backend import TorchSd3Denoiser

    latent, cond = _inputs(1, 4)
    tokens = patchify(latent)
    x, positions, _ = assemble_stage2(tokens, grid_positions(4, 4), np.array([2, 7]))
    denoiser = TorchSd3Denoiser(transformer, 8, 8)
    velocity = denoiser(x, positions, np.array([0.6], np.float32), cond)
    assert velocity.shape == x.shape and np.isfinite(velocity).all()
    # Children of one parent share its token but not its position, so their velocities differ.
    children = velocity[0, -8:-4]
    assert np.abs(children[0] - children[3]).max() > 1e-4


@pytest.mark.parametrize("eos_token_id", [2, 99])  # 2: a pre-#24773 config (SD3's, FLUX.1's CLIPs), pooled at argmax
def test_the_clip_graph_module_equals_transformers_clip_with_projection(eos_token_id):
    import torch
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from ralu_export.graph_modules import ClipProjectionTextEncoder

    torch.manual_seed(0)
    config = CLIPTextConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                            num_attention_heads=2, max_position_embeddings=16, projection_dim=24,
                            eos_token_id=eos_token_id, bos_token_id=98, pad_token_id=99)
    model = CLIPTextModelWithProjection(config).eval()
    ids = torch.tensor([[98, 5, 17, 40, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99]])
    with torch.no_grad():
        expected = model(ids, output_hidden_states=True)
        text_embeds, last, *hidden = ClipProjectionTextEncoder(model)(ids, torch.zeros(0, dtype=torch.long),
                                                                      torch.zeros(0, 32))
    torch.testing.assert_close(text_embeds, expected.text_embeds)
    torch.testing.assert_close(last, expected.last_hidden_state)
    assert len(hidden) == len(expected.hidden_states) == 4
    torch.testing.assert_close(hidden[-2], expected.hidden_states[-2])  # what StableDiffusion3Pipeline uses
