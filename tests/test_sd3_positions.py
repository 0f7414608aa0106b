"""SD3 on the RALU seam, host side (spec/RALU.md §9.7, issue 8): per-token sin-cos position embeddings equal
diffusers' PatchEmbed crop at integer positions, fractional stage-2 positions follow the project rule,
patchify / output-layout permutations invert each other, and CFG combines the two halves as diffusers."""

import numpy as np
import pytest

from ralu_edge.rng import rng_for
from ralu_edge.sd3 import (
    ClassifierFreeGuidance, SincosGrid, joint_text_states, on_full_grid, packed_from_sd3_output, patchify,
    position_embeddings, sd3_output_from_packed, sincos_embeddings, table_indices, unpatchify,
)
from ralu_edge.seam import Conditioning
from ralu_edge.tokens import assemble_stage2, assemble_stage3, grid_positions, restore_raster_order

# (embed_dim, pos_embed_max_size, sample_size, patch): SD3-medium's table geometry and the tiny test model's.
GEOMETRIES = [(1536, 192, 128, 2), (32, 48, 32, 2), (64, 24, 16, 2)]


def _patch_embed(embed_dim, max_size, sample_size, patch):
    from diffusers.models.embeddings import PatchEmbed

    return PatchEmbed(height=sample_size, width=sample_size, patch_size=patch, in_channels=4, embed_dim=embed_dim,
                      pos_embed_max_size=max_size)


@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("grid_hw", [(16, 16), (8, 12), (6, 4)])
def test_integer_positions_equal_diffusers_patch_embed_crop(geometry, grid_hw):
    import torch

    embed_dim, max_size, sample_size, patch = geometry
    module = _patch_embed(*geometry)
    grid = SincosGrid(embed_dim, max_size, sample_size // patch)
    gh, gw = grid_hw
    expected = module.cropped_pos_embed(gh * patch, gw * patch)[0].numpy()
    ours = position_embeddings(grid_positions(gh, gw), gh, gw, grid)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-6)
    # The crop is also what PatchEmbed adds to the conv output: forward minus the conv part.
    latent = torch.randn(1, 4, gh * patch, gw * patch)
    with torch.no_grad():
        conv = module.proj(latent).flatten(2).transpose(1, 2)
        added = (module(latent) - conv)[0].numpy()
    np.testing.assert_allclose(ours, added, rtol=0, atol=1e-5)


def test_stage_one_uses_the_half_size_centre_crop():
    grid = SincosGrid(32, 48, 16)
    low = grid_positions(8, 8)
    indices = table_indices(low, 16, 16, grid)
    assert not on_full_grid(low, 16, 16)
    top = (48 - 8) // 2
    np.testing.assert_array_equal(indices, low[:, 1:] + top)
    full = table_indices(grid_positions(16, 16), 16, 16, grid)
    np.testing.assert_array_equal(full, grid_positions(16, 16)[:, 1:] + (48 - 16) // 2)


def test_stage_two_children_sit_half_a_low_res_patch_from_their_parent():
    grid = SincosGrid(32, 48, 16)
    gh = gw = 16
    low = grid_positions(gh // 2, gw // 2)
    tokens = np.zeros((1, len(low), 4), np.float32)
    selected = np.array([3, 10, 42])
    _, positions, _ = assemble_stage2(tokens, low, selected)
    indices = table_indices(positions, gh, gw, grid)
    top = (48 - gh // 2) // 2
    children = indices[len(low) - len(selected):].reshape(len(selected), 4, 2)
    for parent, kids in zip(low[selected], children):
        base = parent[1:] + top
        np.testing.assert_array_equal(kids, base + np.array([[0, 0], [0, 0.5], [0.5, 0], [0.5, 0.5]]))
    # The embedding of a child is the sin-cos formula at its fractional coordinate (1/3 per index for SD3).
    embeds = position_embeddings(positions, gh, gw, grid)
    row, col = children[0, 3]
    step = 16 / 48
    half = 16
    omega = 1.0 / 10000 ** (np.arange(half // 2) / (half / 2))
    expected = np.concatenate([np.sin(col * step * omega), np.cos(col * step * omega),
                               np.sin(row * step * omega), np.cos(row * step * omega)])
    np.testing.assert_allclose(embeds[len(low) - len(selected) + 3], expected, atol=1e-6)


def test_stage_three_positions_after_raster_restore_are_the_full_grid_crop():
    grid = SincosGrid(32, 48, 16)
    gh = gw = 8
    low = grid_positions(4, 4)
    tokens = np.zeros((1, 16, 4), np.float32)
    x, positions, _ = assemble_stage2(tokens, low, np.array([1, 5]))
    x, positions, _ = assemble_stage3(x, positions, 16 - 2)
    _, positions = restore_raster_order(x, positions)
    assert on_full_grid(positions, gh, gw)
    np.testing.assert_array_equal(position_embeddings(positions, gh, gw, grid),
                                  sincos_embeddings(grid_positions(gh, gw)[:, 1] + 20, grid_positions(gh, gw)[:, 2] + 20,
                                                    grid))


def test_all_children_at_r_one_stay_in_low_res_units():
    gh = gw = 8
    low = grid_positions(4, 4)
    _, positions, _ = assemble_stage2(np.zeros((1, 16, 4), np.float32), low, np.arange(16))
    assert positions.shape[0] == gh * gw and not on_full_grid(positions, gh, gw)


def test_patchify_output_layout_permutations_invert_each_other():
    rng = rng_for(0, "test-sd3-layout")
    latent = rng.standard_normal((2, 16, 8, 6)).astype(np.float32)
    tokens = patchify(latent)
    np.testing.assert_array_equal(unpatchify(tokens, 4, 3), latent)
    sd3 = sd3_output_from_packed(tokens, 16)
    assert not np.array_equal(sd3, tokens)
    np.testing.assert_array_equal(packed_from_sd3_output(sd3, 16), tokens)


def test_sd3_output_layout_matches_diffusers_unpatchify():
    import torch

    rng = rng_for(0, "test-sd3-unpatchify")
    out = rng.standard_normal((1, 12, 2 * 2 * 16)).astype(np.float32)  # [B, L, (dy, dx, c)] on a 3x4 grid
    h, w, p, c = 3, 4, 2, 16
    hidden = torch.from_numpy(out).reshape(1, h, w, p, p, c)
    image = torch.einsum("nhwpqc->nchpwq", hidden).reshape(1, c, h * p, w * p).numpy()  # SD3's forward
    np.testing.assert_array_equal(unpatchify(packed_from_sd3_output(out, c), h, w), image)


def test_joint_text_states_pad_clip_to_the_t5_width_then_append_t5():
    clip_l, clip_g = np.ones((1, 5, 3), np.float32), 2 * np.ones((1, 5, 4), np.float32)
    t5 = 3 * np.ones((1, 7, 10), np.float32)
    joint = joint_text_states([clip_l, clip_g], t5)
    assert joint.shape == (1, 12, 10)
    np.testing.assert_array_equal(joint[0, :5, :3], 1)
    np.testing.assert_array_equal(joint[0, :5, 3:7], 2)
    np.testing.assert_array_equal(joint[0, :5, 7:], 0)
    np.testing.assert_array_equal(joint[0, 5:], 3)
    np.testing.assert_array_equal(joint_text_states([], t5), t5)


def test_classifier_free_guidance_combines_negative_and_prompt_halves():
    calls = []

    def inner(tokens, positions, sigmas, cond):
        calls.append(tokens.shape[0])
        return tokens * cond.pooled[:, :1, None]

    cond = Conditioning(text_states=np.zeros((2, 3, 4), np.float32), pooled=np.array([[1.0], [3.0]], np.float32))
    tokens = np.ones((1, 5, 4), np.float32)
    velocity = ClassifierFreeGuidance(inner, 7.0)(tokens, grid_positions(1, 5), np.ones(1, np.float32), cond)
    assert calls == [2]
    np.testing.assert_allclose(velocity, 1.0 + 7.0 * (3.0 - 1.0))
