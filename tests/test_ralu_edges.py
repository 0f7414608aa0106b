"""Edge proxies and region selection (spec/RALU.md §4, §9.4)."""

import numpy as np
import pytest

from ralu_edge import edges
from ralu_edge.tokens import pack_latents


def _x0_tokens_with_block(low_h, low_w, channels, token, rng):
    """Packed x̂₀ [1, low_h·low_w, 4C]: smooth small noise plus one token's 2×2 latent patch raised by 5."""
    latent = 0.01 * rng.standard_normal((1, channels, 2 * low_h, 2 * low_w))
    row, col = divmod(token, low_w)
    latent[:, :, 2 * row:2 * row + 2, 2 * col:2 * col + 2] += 5.0
    return pack_latents(latent.astype(np.float32))


@pytest.mark.parametrize("token", [0, 21, 63, 36])
def test_latent_grad_picks_the_token_holding_a_sharp_edge(token):
    x0 = _x0_tokens_with_block(8, 8, 4, token, np.random.default_rng(token))
    scores = edges.latent_grad_scores(x0, 8, 8)
    assert scores.shape == (1, 64)
    assert int(np.argmax(scores[0])) == token
    assert list(edges.select_regions(scores[0], 1, np.random.default_rng(0))) == [token]


def test_sobel_matches_the_3x3_kernels_with_replicate_padding():
    image = np.random.default_rng(1).integers(0, 255, (6, 7)).astype(np.int32)
    padded = np.pad(image, 1, mode="edge")
    kx = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]])
    gx, gy = edges.sobel_gradients(image)
    for r in range(6):
        for c in range(7):
            window = padded[r:r + 3, c:c + 3]
            assert gx[r, c] == np.sum(window * kx)
            assert gy[r, c] == np.sum(window * kx.T)


def test_gray_mappings_differ_only_below_mid_grey():
    levels = np.linspace(-1, 1, 9, dtype=np.float32)
    images = np.broadcast_to(levels[None, None, None, :], (1, 3, 1, 9))
    affine = edges.gray_uint8(images, "affine")[0, 0]
    clipped = edges.gray_uint8(images, "reference_clip")[0, 0]
    assert list(affine) == [0, 31, 63, 95, 127, 159, 191, 223, 255]  # uint8((g+1)/2·255), truncated
    assert list(clipped[:5]) == [0] * 5  # the reference quirk: the dark half is black
    assert list(clipped[5:]) == [63, 127, 191, 255]


def test_canny_finds_the_outline_of_a_square_and_nothing_in_flat_areas():
    gray = np.full((40, 40), 30, dtype=np.uint8)
    gray[10:30, 12:28] = 220
    edge_map = edges.canny_edges(gray)
    assert set(np.unique(edge_map)) == {0, 255}
    assert edge_map[:5].sum() == 0 and edge_map[15:25, 17:23].sum() == 0
    assert edge_map[10:30, 11:13].any() and edge_map[9:11, 12:28].any()


def test_canny_hysteresis_keeps_weak_edges_only_when_connected_to_strong_ones():
    gray = np.zeros((40, 60), dtype=np.uint8)
    gray[10:, 10:25] = 40  # steps of 40: L1 Sobel magnitude 160, between the thresholds 100 and 200
    gray[:10, 10:25] = 200  # strong edges above, continuing the weak ones
    gray[:, 40:] = 40  # a weak edge over the full height: no corner, nothing strong to reach it from
    edge_map = edges.canny_edges(gray) > 0
    assert edge_map[30, 9:12].any()  # weak, reached from the strong edge
    assert not edge_map[:, 35:].any()  # weak and isolated: dropped


def test_canny_matches_opencv_pixel_for_pixel():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(2)
    for trial in range(8):
        coarse = rng.uniform(0, 255, (12, 15))
        image = cv2.resize(coarse, (150, 120), interpolation=[cv2.INTER_NEAREST, cv2.INTER_CUBIC][trial % 2])
        image = np.clip(image + rng.normal(0, 4 * trial, image.shape), 0, 255).astype(np.uint8)
        np.testing.assert_array_equal(edges.canny_edges(image), cv2.Canny(image, 100, 200))


def _toy_decode(factor):
    """A stand-in VAE: channel 0 of the latent, nearest-upsampled ×factor, as a grey RGB image in [−1, 1]."""

    def decode(latents):
        grey = np.repeat(np.repeat(np.tanh(latents[:, :1]), factor, axis=2), factor, axis=3)
        return np.repeat(grey, 3, axis=1)

    return decode


@pytest.mark.parametrize("vae_factor", [8, 4])
def test_canny_proxy_scores_blocks_of_image_over_low_res_grid_pixels(vae_factor):
    x0 = _x0_tokens_with_block(4, 6, 4, 9, np.random.default_rng(3))
    decode = _toy_decode(vae_factor)
    scores = edges.canny_scores(x0, 4, 6, decode, "affine")
    assert scores.shape == (1, 24)
    assert int(np.argmax(scores[0])) == 9
    assert np.all(scores % 255 == 0)
    dispatched = edges.edge_scores(x0, 4, 6, "canny", decode=decode)
    np.testing.assert_array_equal(dispatched, scores)


def test_edge_scores_accepts_a_custom_proxy_and_rejects_unknown_names():
    x0 = np.zeros((1, 6, 16), dtype=np.float32)
    custom = edges.edge_scores(x0, 2, 3, lambda x, h, w: np.arange(h * w)[None])
    np.testing.assert_array_equal(custom, [np.arange(6)])
    with pytest.raises(ValueError, match="latent_grad"):
        edges.edge_scores(x0, 2, 3, "sobel")
    with pytest.raises(ValueError, match="decode"):
        edges.edge_scores(x0, 2, 3, "canny")


def test_selection_breaks_ties_with_the_generator_and_returns_sorted_indices():
    scores = np.zeros(64)
    scores[[3, 40]] = 255.0
    picks = {tuple(edges.select_regions(scores, 5, np.random.default_rng(seed))) for seed in range(20)}
    assert all(3 in p and 40 in p and list(p) == sorted(p) and len(p) == 5 for p in picks)
    assert len(picks) > 1  # ties among the zeros are broken at random
    same = edges.select_regions(scores, 5, np.random.default_rng(4))
    np.testing.assert_array_equal(same, edges.select_regions(scores, 5, np.random.default_rng(4)))
