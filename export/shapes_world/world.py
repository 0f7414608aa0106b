"""Scenes, captions and rendering of ShapesWorld (see the package docstring).

A scene is 1-2 objects, each a (shape, colour, position, size), on a plain or textured grey background.
Two-object scenes use opposite positions (left/right or top/bottom) so objects never overlap. Rendering is
a pure function of the scene (and of the seed of the background noise), at any square resolution, with 4x
supersampling for anti-aliased edges.

Held-out evaluation set: 48 single-object and 24 two-object attribute combinations are never drawn for
training (`is_heldout`), so the evaluation prompts are unseen compositions, not just unseen strings."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from ralu_edge.rng import rng_for

SHAPES = ("circle", "square", "triangle", "star", "diamond", "hexagon")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 230),
    "yellow": (240, 220, 40),
    "purple": (150, 60, 200),
    "orange": (250, 140, 20),
    "cyan": (40, 210, 220),
}
# Object centres as fractions of the image side; two-object scenes pair opposite positions.
POSITIONS = {
    "left": (0.25, 0.5),
    "right": (0.75, 0.5),
    "top": (0.5, 0.25),
    "bottom": (0.5, 0.75),
    "centre": (0.5, 0.5),
}
PAIRS = (("left", "right"), ("top", "bottom"))
SIZES = {"small": 0.12, "large": 0.2}  # circumradius as a fraction of the image side
# Training renders turn each object by up to ±MAX_ROTATION degrees and move its centre by up to ±POSITION_JITTER
# of the side (issue 12's round 5 sets both to 0: fixed templates).
MAX_ROTATION = 12.0
POSITION_JITTER = 0.03
TWO_OBJECT_FRACTION = 0.35  # share of two-object scenes in the training stream (held-out pairs are large-large)
# Relative frequencies of the shapes in the training stream, e.g. "circle:2,hexagon:2" (issue 12's round 8: the
# two shapes the model confuses most). "" = every shape equally often, drawn as every earlier round drew them.
SHAPE_WEIGHTS = ""
BACKGROUNDS = ("plain-light", "plain-dark", "stripes", "checker", "dots", "noise")
PLAIN_BACKGROUNDS = ("plain-light", "plain-dark")
_BACKGROUND_WORDS = {
    "plain-light": "light grey", "plain-dark": "dark grey", "stripes": "striped",
    "checker": "checkered", "dots": "dotted", "noise": "grainy",
}
_POSITION_PHRASES = {
    "left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom",
    "centre": "in the centre",
}
_SINGLE_TEMPLATES = (
    "a {size} {colour} {shape} {where}",
    "a {colour} {shape} {where}",
    "{where} there is a {size} {colour} {shape}",
    "a picture of a {size} {colour} {shape} {where}",
    "one {colour} {shape} {where}",
)
_PAIR_TEMPLATES = (
    "a {a} {a_where} and a {b} {b_where}",
    "a {a} {a_where}, a {b} {b_where}",
    "{a_where} a {a}, {b_where} a {b}",
    "two shapes: a {a} {a_where} and a {b} {b_where}",
)


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    position: str
    size: str


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]
    background: str
    template: int = 0  # index into the caption templates for this number of objects
    mention_background: bool = False


def _describe(obj: SceneObject, with_size: bool) -> str:
    return f"{obj.size} {obj.colour} {obj.shape}" if with_size else f"{obj.colour} {obj.shape}"


def caption_for(scene: Scene) -> str:
    """The caption of a scene: lower-case words, one of several natural templates."""
    if len(scene.objects) == 1:
        (o,) = scene.objects
        text = _SINGLE_TEMPLATES[scene.template % len(_SINGLE_TEMPLATES)].format(
            size=o.size, colour=o.colour, shape=o.shape, where=_POSITION_PHRASES[o.position])
    else:
        a, b = scene.objects
        text = _PAIR_TEMPLATES[scene.template % len(_PAIR_TEMPLATES)].format(
            a=_describe(a, True), b=_describe(b, True),
            a_where=_POSITION_PHRASES[a.position], b_where=_POSITION_PHRASES[b.position])
    if scene.mention_background:
        text += f" on a {_BACKGROUND_WORDS[scene.background]} background"
    return text


# ---------------------------------------------------------------------------------------------- held out

def _single_key(o: SceneObject) -> tuple:
    return (o.shape, o.colour, o.position, o.size)


def _heldout_keys() -> tuple[frozenset, frozenset]:
    rng = rng_for(20261126, "shapes_world/heldout")
    singles = [(s, c, p, z) for s in SHAPES for c in COLOURS for p in POSITIONS for z in SIZES]
    chosen = rng.choice(len(singles), size=48, replace=False)
    single_keys = frozenset(singles[i] for i in chosen)
    pair_keys = set()
    while len(pair_keys) < 24:
        pa, pb = PAIRS[int(rng.integers(len(PAIRS)))]
        sa, sb = rng.choice(len(SHAPES), 2, replace=False)
        ca, cb = rng.choice(len(COLOURS), 2, replace=False)
        colours = list(COLOURS)
        a = (SHAPES[sa], colours[ca], pa, "large")
        b = (SHAPES[sb], colours[cb], pb, "large")
        pair_keys.add((a, b))
    return single_keys, frozenset(pair_keys)


_HELDOUT_SINGLE, _HELDOUT_PAIRS = _heldout_keys()


def _pair_key(scene: Scene) -> tuple:
    a, b = scene.objects
    return (_single_key(a)[:3], _single_key(b)[:3])


def is_heldout(scene: Scene) -> bool:
    """True when the scene's attribute combination belongs to the evaluation set (never trained on).

    Pairs are held out whatever their sizes and in either order."""
    if len(scene.objects) == 1:
        return _single_key(scene.objects[0]) in _HELDOUT_SINGLE
    a, b = scene.objects
    ka, kb = _single_key(a)[:3], _single_key(b)[:3]
    held = {(x[:3], y[:3]) for x, y in _HELDOUT_PAIRS}
    return (ka, kb) in held or (kb, ka) in held


def heldout_scenes() -> list[Scene]:
    """The fixed evaluation set: 48 single-object and 24 two-object scenes, template 0, plain background."""
    scenes = [Scene((SceneObject(*k),), "plain-light") for k in sorted(_HELDOUT_SINGLE)]
    scenes += [Scene((SceneObject(*a), SceneObject(*b)), "plain-light") for a, b in sorted(_HELDOUT_PAIRS)]
    return scenes


# ---------------------------------------------------------------------------------------------- sampling

@functools.lru_cache(maxsize=8)  # sample_scene asks once per training sample
def shape_probabilities(weights: str) -> tuple[float, ...] | None:
    """"circle:2,hexagon:2" -> each shape's probability in SHAPES order (unnamed shapes weigh 1); "" -> None
    (uniform, the stream of every earlier round). ValueError with the fix for anything else."""
    if not weights.strip():
        return None
    fix = f"write SHAPE:WEIGHT[,SHAPE:WEIGHT...] with shapes from {', '.join(SHAPES)} and positive weights"
    w = dict.fromkeys(SHAPES, 1.0)
    for item in weights.split(","):
        name, sep, value = item.strip().partition(":")
        try:
            weight = float(value)
        except ValueError:
            weight = float("nan")
        if not sep or name not in w or not math.isfinite(weight) or weight <= 0:
            raise ValueError(f"{weights!r}: {item.strip()!r} is not SHAPE:WEIGHT; {fix}")
        w[name] = weight
    total = sum(w.values())
    return tuple(w[s] / total for s in SHAPES)


def _draw_shape(rng: np.random.Generator, shape_p: tuple[float, ...] | None) -> str:
    if shape_p is None:
        return SHAPES[int(rng.integers(len(SHAPES)))]
    return SHAPES[int(rng.choice(len(SHAPES), p=shape_p))]


def sample_scene(rng: np.random.Generator, two_object_fraction: float = TWO_OBJECT_FRACTION,
                 backgrounds: tuple[str, ...] = BACKGROUNDS, shape_weights: str = SHAPE_WEIGHTS) -> Scene:
    """One random training scene (never a held-out combination) on one of `backgrounds`, its shapes drawn with
    `shape_weights` (shape_probabilities)."""
    colours = list(COLOURS)
    sizes = list(SIZES)
    shape_p = shape_probabilities(shape_weights)
    while True:
        if rng.random() < two_object_fraction:
            pa, pb = PAIRS[int(rng.integers(len(PAIRS)))]
            if rng.random() < 0.5:
                pa, pb = pb, pa
            objs = tuple(
                SceneObject(_draw_shape(rng, shape_p), colours[int(rng.integers(len(colours)))],
                            p, sizes[int(rng.integers(len(sizes)))])
                for p in (pa, pb))
            template = int(rng.integers(len(_PAIR_TEMPLATES)))
        else:
            objs = (SceneObject(_draw_shape(rng, shape_p), colours[int(rng.integers(len(colours)))],
                                list(POSITIONS)[int(rng.integers(len(POSITIONS)))],
                                sizes[int(rng.integers(len(sizes)))]),)
            template = int(rng.integers(len(_SINGLE_TEMPLATES)))
        scene = Scene(objs, backgrounds[int(rng.integers(len(backgrounds)))], template,
                      mention_background=bool(rng.random() < 0.3))
        if not is_heldout(scene):
            return scene


def training_sample(seed: int, index: int, size: int = 128,
                    backgrounds: tuple[str, ...] = BACKGROUNDS, max_rotation: float = MAX_ROTATION,
                    position_jitter: float = POSITION_JITTER,
                    two_object_fraction: float = TWO_OBJECT_FRACTION,
                    shape_weights: str = SHAPE_WEIGHTS) -> tuple[np.ndarray, str, Scene]:
    """Sample `index` of the training stream for `seed`: (image [size, size, 3] uint8, caption, scene).

    Each object is turned by up to ±`max_rotation` degrees and its centre moved by up to ±`position_jitter`
    of the side; the scene and caption do not depend on either. A share `two_object_fraction` of the scenes
    hold two objects; shapes are drawn with `shape_weights` (shape_probabilities)."""
    rng = rng_for(seed, "shapes_world/sample", index)
    scene = sample_scene(rng, two_object_fraction, backgrounds, shape_weights)
    jitter = rng.uniform(-position_jitter, position_jitter, size=(len(scene.objects), 2))
    angle = rng.uniform(-max_rotation, max_rotation, size=len(scene.objects))
    image = render(scene, size, jitter=jitter, angles_deg=angle, texture_seed=int(rng.integers(2**31)))
    return image, caption_for(scene), scene


# ---------------------------------------------------------------------------------------------- drawing

def _polygon(shape: str, cx: float, cy: float, radius: float, angle_deg: float) -> list[tuple[float, float]]:
    if shape == "square":
        n, start, r = 4, 45.0, radius * 0.92
    elif shape == "diamond":
        n, start, r = 4, 0.0, radius
    elif shape == "triangle":
        n, start, r = 3, -90.0, radius
    elif shape == "hexagon":
        n, start, r = 6, 0.0, radius
    else:
        raise ValueError(shape)
    pts = []
    for i in range(n):
        a = math.radians(start + angle_deg + 360.0 * i / n)
        rr = r
        if shape == "diamond":  # a rhombus: taller than wide
            rr = r if i % 2 == 1 else r * 0.62
        pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
    if shape == "triangle":  # centre the triangle's bounding box vertically
        pts = [(x, y + radius * 0.25) for x, y in pts]
    return pts


def _star(cx: float, cy: float, radius: float, angle_deg: float) -> list[tuple[float, float]]:
    pts = []
    for i in range(10):
        a = math.radians(-90.0 + angle_deg + 36.0 * i)
        r = radius if i % 2 == 0 else radius * 0.45
        pts.append((cx + r * math.cos(a), cy + r * math.sin(a)))
    return pts


def _background(kind: str, side: int, texture_seed: int) -> Image.Image:
    if kind == "plain-light":
        return Image.new("RGB", (side, side), (200, 200, 200))
    if kind == "plain-dark":
        return Image.new("RGB", (side, side), (70, 70, 70))
    img = Image.new("RGB", (side, side), (150, 150, 150))
    draw = ImageDraw.Draw(img)
    period = side / 8
    if kind == "stripes":
        for k in range(-8, 17):
            x0 = k * period
            draw.polygon([(x0, 0), (x0 + period / 2, 0), (x0 + period / 2 + side, side), (x0 + side, side)],
                         fill=(120, 120, 120))
    elif kind == "checker":
        for i in range(8):
            for j in range(8):
                if (i + j) % 2:
                    draw.rectangle([j * period, i * period, (j + 1) * period, (i + 1) * period],
                                   fill=(180, 180, 180))
    elif kind == "dots":
        for i in range(8):
            for j in range(8):
                cx, cy, r = (j + 0.5) * period, (i + 0.5) * period, period * 0.18
                draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(105, 105, 105))
    elif kind == "noise":
        rng = rng_for(texture_seed, "shapes_world/noise")
        small = rng.integers(110, 190, size=(side // 16, side // 16), dtype=np.uint8)
        return Image.fromarray(np.repeat(small[:, :, None], 3, axis=2)).resize((side, side), Image.BILINEAR)
    else:
        raise ValueError(kind)
    return img


def render(scene: Scene, size: int = 128, *, jitter: np.ndarray | None = None,
           angles_deg: np.ndarray | None = None, texture_seed: int = 0) -> np.ndarray:
    """The scene drawn as an RGB image: [size, size, 3] uint8.

    jitter: [n_objects, 2] offsets of the centres as fractions of the side; angles_deg: [n_objects]."""
    ss = 4
    side = size * ss
    img = _background(scene.background, side, texture_seed)
    draw = ImageDraw.Draw(img)
    for i, o in enumerate(scene.objects):
        fx, fy = POSITIONS[o.position]
        if jitter is not None:
            fx, fy = fx + float(jitter[i, 0]), fy + float(jitter[i, 1])
        cx, cy, radius = fx * side, fy * side, SIZES[o.size] * side
        angle = float(angles_deg[i]) if angles_deg is not None else 0.0
        fill = COLOURS[o.colour]
        if o.shape == "circle":
            r = radius * 0.9
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        elif o.shape == "star":
            draw.polygon(_star(cx, cy, radius * 1.1, angle), fill=fill)
        else:
            draw.polygon(_polygon(o.shape, cx, cy, radius, angle), fill=fill)
    return np.asarray(img.resize((size, size), Image.LANCZOS), dtype=np.uint8)


def render_batch(seed: int, start: int, count: int, size: int = 128,
                 backgrounds: tuple[str, ...] = BACKGROUNDS, max_rotation: float = MAX_ROTATION,
                 position_jitter: float = POSITION_JITTER,
                 two_object_fraction: float = TWO_OBJECT_FRACTION,
                 shape_weights: str = SHAPE_WEIGHTS) -> tuple[np.ndarray, list[str], list[Scene]]:
    """Training samples start..start+count-1: (images [count, size, size, 3] uint8, captions, scenes)."""
    images, captions, scenes = [], [], []
    for i in range(start, start + count):
        im, cap, sc = training_sample(seed, i, size, backgrounds, max_rotation, position_jitter, two_object_fraction,
                                      shape_weights)
        images.append(im)
        captions.append(cap)
        scenes.append(sc)
    return np.stack(images), captions, scenes
