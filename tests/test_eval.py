"""Evaluation: the metrics' defining properties, the shipped classifier on clean renders, scoring logic."""

import numpy as np
import pytest

from ralu_export.eval.metrics import psnr, ssim
from ralu_export.eval.scoring import Predictions, attribute_report, classify, load_classifier
from ralu_export.shapes_world import COLOURS, SHAPES, Scene, SceneObject, render
from ralu_export.eval.classifier import SLOTS


def test_psnr_and_ssim_are_perfect_for_identical_images_and_drop_with_noise():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    noisy = np.clip(img.astype(int) + rng.integers(-20, 21, img.shape), 0, 255).astype(np.uint8)
    assert np.isinf(psnr(img, img)).all()
    assert np.allclose(ssim(img, img), 1.0)
    assert (psnr(noisy, img) < 30).all() and (ssim(noisy, img) < 0.99).all()


def test_psnr_matches_its_definition():
    a = np.zeros((8, 8, 3), np.uint8)
    b = np.full((8, 8, 3), 10, np.uint8)
    assert psnr(a, b) == pytest.approx(10 * np.log10(255**2 / 100))


def test_shipped_classifier_is_at_least_98_percent_right_on_clean_renders():
    from ralu_export.training.data import render_classifier_set
    from ralu_export.eval.classifier import scene_labels

    images, scenes = render_classifier_set(seed=12345, count=300, workers=1)
    pred = classify(load_classifier(), images)
    labels = scene_labels(scenes)
    all_right = (pred.shapes == labels[..., 0]) & (pred.colours == labels[..., 1])
    assert all_right.all(axis=1).mean() >= 0.98


def test_attribute_report_counts_an_object_right_only_when_shape_and_colour_match_at_its_position():
    scene = Scene((SceneObject("star", "red", "left", "large"),), "plain-light")
    j = SLOTS.index("left")
    shapes = np.zeros((2, 5), int)
    colours = np.zeros((2, 5), int)
    shapes[:, j] = SHAPES.index("star") + 1
    colours[0, j] = list(COLOURS).index("red") + 1
    colours[1, j] = list(COLOURS).index("blue") + 1
    report = attribute_report(Predictions(shapes, colours, np.ones((2, 4))), [scene, scene])
    assert report["attribute_accuracy"] == 0.5 and report["shape_accuracy"] == 1.0
    assert report["n_prompts"] == 2 and report["attribute_accuracy_pair"] is None
    assert report["shape_confusion"] == {"star": {"star": 2}}
    shapes[1, j] = SHAPES.index("diamond") + 1
    assert attribute_report(Predictions(shapes, colours, np.ones((2, 4))), [scene, scene])["shape_confusion"] == \
        {"star": {"star": 1, "diamond": 1}}


def test_classifier_features_are_closer_for_the_same_concept():
    from ralu_export.eval.scoring import concept_similarity

    def feats(shape, colour):
        imgs = np.stack([render(Scene((SceneObject(shape, colour, "centre", "large"),), "plain-light"),
                                angles_deg=np.array([a])) for a in (-8.0, 0.0, 8.0)])
        return classify(load_classifier(), imgs).features

    ref = feats("star", "red")
    assert concept_similarity(feats("star", "red"), ref) > concept_similarity(feats("circle", "blue"), ref)


def test_frechet_distance_matches_the_matrix_square_root_formula_and_orders_shifted_sets():
    from scipy import linalg

    from ralu_export.eval.metrics import frechet_distance

    rng = np.random.default_rng(0)
    real, same, shifted = rng.normal(size=(300, 16)), rng.normal(size=(80, 16)), rng.normal(size=(80, 16)) + 0.7
    s1, s2 = np.cov(same, rowvar=False), np.cov(real, rowvar=False)
    expected = ((same.mean(0) - real.mean(0)) ** 2).sum() + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(same, real) == pytest.approx(expected, rel=1e-6)
    assert frechet_distance(shifted, real) > frechet_distance(same, real) + 16 * 0.7**2 * 0.8


def test_paired_frechet_difference_finds_the_worse_sampler_and_brackets_its_estimate():
    from ralu_export.eval.metrics import paired_frechet_difference

    rng = np.random.default_rng(1)
    reference = rng.normal(size=(60, 4, 8))
    good, bad = rng.normal(size=(60, 8)), rng.normal(size=(60, 8)) * 1.8 + 0.5
    worse = paired_frechet_difference(bad, good, reference, np.random.default_rng(2), samples=100)
    assert worse["ci95"][0] > 0 and worse["ci95"][0] <= worse["delta"] <= worse["ci95"][1]
    assert paired_frechet_difference(good, good, reference, np.random.default_rng(2), samples=20)["delta"] == 0.0


def test_reference_renders_are_deterministic_and_use_only_the_given_backgrounds():
    from ralu_export.eval.scoring import reference_renders
    from ralu_export.shapes_world import heldout_scenes

    scenes = heldout_scenes()[:2]
    a = reference_renders(scenes, 3, 0, ("plain-dark",))
    assert a.shape == (2, 3, 128, 128, 3)
    assert np.array_equal(a, reference_renders(scenes, 3, 0, ("plain-dark",)))
    assert (a[:, :, 0, 0] == 70).all()  # the dark background's grey in every corner
    assert not np.array_equal(a[:, 0], a[:, 1])  # jitter/rotation differ between renders of a prompt
