"""ShapesWorld: determinism, coverage of the attribute space, and a held-out set never drawn for training."""

import numpy as np

from ralu_edge.rng import rng_for
from ralu_export.shapes_world import (
    BACKGROUNDS, COLOURS, POSITIONS, SHAPES, SIZES, caption_for, heldout_scenes, is_heldout, sample_scene,
    training_sample,
)


def test_a_sample_is_a_pure_function_of_seed_and_index():
    a_img, a_cap, _ = training_sample(3, 17)
    b_img, b_cap, _ = training_sample(3, 17)
    c_img, _, _ = training_sample(4, 17)
    assert a_cap == b_cap and np.array_equal(a_img, b_img)
    assert not np.array_equal(a_img, c_img)
    assert a_img.shape == (128, 128, 3) and a_img.dtype == np.uint8


def test_the_world_has_the_attribute_space_the_issue_asks_for():
    assert len(SHAPES) >= 5 and len(COLOURS) >= 6 and len(SIZES) == 2
    assert set(POSITIONS) == {"left", "right", "top", "bottom", "centre"}
    assert any(b.startswith("plain") for b in BACKGROUNDS) and len(BACKGROUNDS) >= 4


def test_heldout_set_has_at_least_64_prompts_and_training_never_draws_them():
    held = heldout_scenes()
    assert len(held) >= 64
    assert sum(len(s.objects) == 1 for s in held) >= 32 and sum(len(s.objects) == 2 for s in held) >= 16
    assert all(is_heldout(s) for s in held)
    held_captions = {caption_for(s) for s in held}
    for i in range(3000):
        scene = sample_scene(rng_for(0, "test", i))
        assert not is_heldout(scene)
        assert caption_for(scene) not in held_captions


def test_captions_use_several_templates_and_name_every_attribute():
    captions = {training_sample(0, i)[1].split()[0] for i in range(200)}
    assert len(captions) >= 4
    _, caption, scene = training_sample(0, 5)
    for o in scene.objects:
        assert o.shape in caption and o.colour in caption


def test_rotation_and_jitter_are_training_levers_that_leave_scene_and_caption_alone():
    from ralu_export.shapes_world.world import PLAIN_BACKGROUNDS, render

    turned, caption, scene = training_sample(3, 17, backgrounds=PLAIN_BACKGROUNDS)
    fixed, fixed_caption, fixed_scene = training_sample(3, 17, backgrounds=PLAIN_BACKGROUNDS,
                                                        max_rotation=0.0, position_jitter=0.0)
    assert fixed_caption == caption and fixed_scene == scene
    # No rotation and no jitter is the scene drawn at its nominal place and angle.
    assert np.array_equal(fixed, render(scene, 128))
    assert not np.array_equal(fixed, turned)


def test_the_two_object_share_is_a_training_lever():
    from ralu_export.shapes_world.world import TWO_OBJECT_FRACTION

    counts = {f: [len(training_sample(5, i, size=16, two_object_fraction=f)[2].objects) for i in range(40)]
              for f in (0.0, TWO_OBJECT_FRACTION, 1.0)}
    assert set(counts[0.0]) == {1} and set(counts[1.0]) == {2}
    # The default share is the stream every earlier round was trained on.
    assert counts[TWO_OBJECT_FRACTION] == [len(training_sample(5, i, size=16)[2].objects) for i in range(40)]
    assert set(counts[TWO_OBJECT_FRACTION]) == {1, 2}


def test_shape_weights_are_a_training_lever():
    from collections import Counter

    import pytest

    from ralu_export.shapes_world.world import SHAPE_WEIGHTS, shape_probabilities

    assert shape_probabilities(SHAPE_WEIGHTS) is None  # the default draws as every earlier round drew
    assert [training_sample(5, i, size=16, shape_weights=SHAPE_WEIGHTS)[1] for i in range(20)] == \
        [training_sample(5, i, size=16)[1] for i in range(20)]
    p = shape_probabilities("circle:2, hexagon:2")
    assert p[0] == p[-1] == 0.25 and abs(sum(p) - 1.0) < 1e-12 and p[1] == 0.125
    drawn = Counter(o.shape for i in range(400)
                    for o in training_sample(7, i, size=16, shape_weights="circle:3,hexagon:3")[2].objects)
    others = sum(drawn[s] for s in ("square", "triangle", "star", "diamond")) / 4
    assert drawn["circle"] > 2 * others and drawn["hexagon"] > 2 * others  # 3x expected
    for bad in ("circle", "circle:0", "ellipse:2", "circle:nan", "circle:-1"):
        with pytest.raises(ValueError, match="is not SHAPE:WEIGHT"):
            shape_probabilities(bad)
