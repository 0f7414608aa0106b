"""ShapesWorld: a deterministic synthetic world of coloured shapes with captions and ground truth.

The built-in `shapes` model is trained on it and judged by it: every image comes with the attributes it was
drawn from, so generated images can be scored objectively by the attribute classifier (ralu_export.eval).
Depends on numpy and Pillow only (no torch), so data can be rendered anywhere."""

from ralu_export.shapes_world.world import (
    BACKGROUNDS,
    COLOURS,
    POSITIONS,
    SHAPES,
    SIZES,
    Scene,
    SceneObject,
    caption_for,
    heldout_scenes,
    is_heldout,
    render,
    render_batch,
    sample_scene,
    training_sample,
)

__all__ = [
    "BACKGROUNDS", "COLOURS", "POSITIONS", "SHAPES", "SIZES", "Scene", "SceneObject", "caption_for",
    "heldout_scenes", "is_heldout", "render", "render_batch", "sample_scene", "training_sample",
]
