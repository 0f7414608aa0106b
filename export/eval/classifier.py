"""The ShapesWorld attribute classifier: the objective judge of generated images (issue 2, item 6).

For each of the five position slots it predicts the shape (or none), the colour (or none) and the size (or
none) of the object there, and it exposes a 256-d feature vector whose cosine plays the role CLIP-I/DINO
play in papers (concept similarity). Input: [B, 3, 128, 128] float in [-1, 1]."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ralu_export.shapes_world import COLOURS, POSITIONS, SHAPES, SIZES, Scene

SLOTS = tuple(POSITIONS)
NUM_SHAPE_CLASSES = len(SHAPES) + 1  # class 0 = no object in the slot
NUM_COLOUR_CLASSES = len(COLOURS) + 1
NUM_SIZE_CLASSES = len(SIZES) + 1
FEATURE_DIM = 256


class AttributeClassifier(nn.Module):
    def __init__(self, image_size: int = 128):
        super().__init__()
        layers, ch = [], 3
        for out in (32, 64, 96, 128, 128):  # 128 -> 4 after five stride-2 stages
            layers += [nn.Conv2d(ch, out, 3, stride=2, padding=1), nn.GroupNorm(8, out), nn.SiLU(),
                       nn.Conv2d(out, out, 3, padding=1), nn.GroupNorm(8, out), nn.SiLU()]
            ch = out
        self.backbone = nn.Sequential(*layers)
        grid = image_size // 32
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(ch * grid * grid, FEATURE_DIM), nn.SiLU())
        self.head = nn.Linear(FEATURE_DIM, len(SLOTS) * (NUM_SHAPE_CLASSES + NUM_COLOUR_CLASSES + NUM_SIZE_CLASSES))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(shape_logits [B,5,7], colour_logits [B,5,8], size_logits [B,5,3], features [B,256])."""
        feats = self.features(self.backbone(images))
        logits = self.head(feats).view(images.shape[0], len(SLOTS), -1)
        s, c = NUM_SHAPE_CLASSES, NUM_COLOUR_CLASSES
        return logits[..., :s], logits[..., s:s + c], logits[..., s + c:], feats


def scene_labels(scenes: list[Scene]) -> np.ndarray:
    """Slot labels: [B, 5, 3] int64 (shape, colour, size), 0 meaning no object in that slot."""
    labels = np.zeros((len(scenes), len(SLOTS), 3), dtype=np.int64)
    colours, sizes = list(COLOURS), list(SIZES)
    for i, scene in enumerate(scenes):
        for o in scene.objects:
            j = SLOTS.index(o.position)
            labels[i, j] = (SHAPES.index(o.shape) + 1, colours.index(o.colour) + 1, sizes.index(o.size) + 1)
    return labels


def images_to_tensor(images_u8: np.ndarray) -> torch.Tensor:
    """[B, H, W, 3] uint8 -> [B, 3, H, W] float32 in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images_u8)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
