"""Scoring generated images with the shipped attribute classifier: per-prompt attribute correctness
(shape, colour and position of every prompted object) and concept similarity (cosine of classifier
features, the role CLIP-I/DINO play in papers)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from ralu_edge.errors import UserError
from ralu_export import builtin_file
from ralu_export.eval.classifier import SLOTS, AttributeClassifier, images_to_tensor
from ralu_export.shapes_world import COLOURS, SHAPES, Scene


@dataclass(frozen=True)
class Predictions:
    shapes: np.ndarray  # [B, 5] int, 0 = none, else SHAPES index + 1
    colours: np.ndarray  # [B, 5] int, 0 = none, else COLOURS index + 1
    features: np.ndarray  # [B, 256] float32


def load_classifier(path: Path | None = None) -> AttributeClassifier:
    """The shipped classifier (export/builtin/classifier.safetensors) in eval mode on the CPU."""
    path = path or builtin_file("classifier.safetensors")
    if not path.is_file():
        raise UserError(f"{path}: the attribute classifier's weights are missing; reinstall ralu-edge.")
    clf = AttributeClassifier()
    clf.load_state_dict(load_file(str(path)))
    return clf.eval()


@torch.no_grad()
def classify(clf: AttributeClassifier, images: np.ndarray, batch: int = 64) -> Predictions:
    """Slot predictions and features of uint8 images [B, 128, 128, 3]."""
    shapes, colours, feats = [], [], []
    for i in range(0, len(images), batch):
        s, c, _, f = clf(images_to_tensor(images[i:i + batch]))
        shapes.append(s.argmax(-1).numpy())
        colours.append(c.argmax(-1).numpy())
        feats.append(f.numpy())
    return Predictions(np.concatenate(shapes), np.concatenate(colours), np.concatenate(feats))


def object_checks(pred: Predictions, index: int, scene: Scene) -> dict[str, bool]:
    """For image `index`: is every prompted object's shape / colour right at its position, and all of it."""
    colours = list(COLOURS)
    shape_ok = colour_ok = True
    for o in scene.objects:
        j = SLOTS.index(o.position)
        shape_ok &= bool(pred.shapes[index, j] == SHAPES.index(o.shape) + 1)
        colour_ok &= bool(pred.colours[index, j] == colours.index(o.colour) + 1)
    present = all(pred.shapes[index, SLOTS.index(o.position)] != 0 for o in scene.objects)
    return {"shape": shape_ok, "colour": colour_ok, "position": present, "all": shape_ok and colour_ok}


def attribute_report(pred: Predictions, scenes: list[Scene]) -> dict:
    """Accuracies over a prompt set: all attributes right, split by object count, and per attribute."""
    checks = [object_checks(pred, i, s) for i, s in enumerate(scenes)]
    single = [c["all"] for c, s in zip(checks, scenes) if len(s.objects) == 1]
    pair = [c["all"] for c, s in zip(checks, scenes) if len(s.objects) == 2]
    return {
        "n_prompts": len(scenes),
        "attribute_accuracy": float(np.mean([c["all"] for c in checks])),
        "attribute_accuracy_single": float(np.mean(single)) if single else None,
        "attribute_accuracy_pair": float(np.mean(pair)) if pair else None,
        "shape_accuracy": float(np.mean([c["shape"] for c in checks])),
        "colour_accuracy": float(np.mean([c["colour"] for c in checks])),
        "position_accuracy": float(np.mean([c["position"] for c in checks])),
        "shape_confusion": shape_confusion(pred, scenes),
    }


def shape_confusion(pred: Predictions, scenes: list[Scene]) -> dict[str, dict[str, int]]:
    """For every prompted object: what the classifier read at its position, counted per prompted shape
    ({"circle": {"circle": 8, "hexagon": 9}, ...}; "none" = no object there): which shapes a model confuses."""
    names = ("none", *SHAPES)
    out: dict[str, dict[str, int]] = {}
    for i, scene in enumerate(scenes):
        for o in scene.objects:
            read = names[int(pred.shapes[i, SLOTS.index(o.position)])]
            row = out.setdefault(o.shape, {})
            row[read] = row.get(read, 0) + 1
    return out


def concept_similarity(features: np.ndarray, reference_features: np.ndarray) -> float:
    """Mean cosine similarity between every feature row and the mean reference feature direction."""
    a = features / np.linalg.norm(features, axis=1, keepdims=True)
    ref = reference_features / np.linalg.norm(reference_features, axis=1, keepdims=True)
    return float((a @ ref.mean(0)).mean() / np.linalg.norm(ref.mean(0)))


def reference_renders(scenes: list[Scene], per_prompt: int, seed: int,
                      backgrounds: tuple[str, ...]) -> np.ndarray:
    """Real renders of each prompt's scene, the way the training stream draws them (centre jitter +-0.03,
    rotation +-12 degrees, a background from `backgrounds`, which captions without a background phrase leave
    open): uint8 [P, per_prompt, 128, 128, 3], a pure function of (scenes, per_prompt, seed, backgrounds)."""
    from dataclasses import replace

    from ralu_edge.rng import rng_for
    from ralu_export.shapes_world import render

    out = np.empty((len(scenes), per_prompt, 128, 128, 3), dtype=np.uint8)
    for i, scene in enumerate(scenes):
        rng = rng_for(seed, "eval/reference_renders", i)
        for k in range(per_prompt):
            n = len(scene.objects)
            drawn = replace(scene, background=backgrounds[int(rng.integers(len(backgrounds)))])
            out[i, k] = render(drawn, 128, jitter=rng.uniform(-0.03, 0.03, size=(n, 2)),
                               angles_deg=rng.uniform(-12.0, 12.0, size=n), texture_seed=int(rng.integers(2**31)))
    return out


def model_backgrounds(model_folder: Path) -> tuple[str, ...]:
    """The backgrounds a shapes-family model was trained on (its training_report.json; all when unrecorded)."""
    import json

    from ralu_export.shapes_world.world import BACKGROUNDS, PLAIN_BACKGROUNDS

    report = model_folder / "training_report.json"
    name = json.loads(report.read_text()).get("train_config", {}).get("backgrounds", "all") if report.is_file() else "all"
    return PLAIN_BACKGROUNDS if name == "plain" else BACKGROUNDS
