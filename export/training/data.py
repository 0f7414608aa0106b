"""Rendering ShapesWorld training sets in parallel and tokenising their captions (torch-free except for the
final tensors). A dataset is a pure function of (seed, count, size): sample i is `training_sample(seed, i)`."""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ralu_export.shapes_world import BACKGROUNDS, Scene, render_batch
from ralu_export.shapes_world.world import (MAX_ROTATION, POSITION_JITTER, SHAPE_WEIGHTS, TWO_OBJECT_FRACTION, render,
                                            sample_scene)
from ralu_edge.rng import rng_for


@dataclass
class RenderedSet:
    images: np.ndarray  # [N, size, size, 3] uint8
    captions: list[str]
    scenes: list[Scene]


def _parallel_map(fn, jobs: list, workers: int) -> list:
    """fn over jobs on `workers` spawned processes (spawn, not fork: the parent may hold CUDA or threads)."""
    if workers == 1 or len(jobs) == 1:
        return [fn(j) for j in jobs]
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(fn, jobs))


def _chunk(args: tuple[int, int, int, int, tuple[str, ...], float, float, float, str]):
    return render_batch(*args)


def render_training_set(seed: int, count: int, size: int = 128, workers: int | None = None,
                        backgrounds: tuple[str, ...] = BACKGROUNDS, max_rotation: float = MAX_ROTATION,
                        position_jitter: float = POSITION_JITTER,
                        two_object_fraction: float = TWO_OBJECT_FRACTION,
                        shape_weights: str = SHAPE_WEIGHTS) -> RenderedSet:
    """Training samples 0..count-1 for `seed` on `backgrounds` (objects turned by up to ±`max_rotation`
    degrees, moved by up to ±`position_jitter`, a share `two_object_fraction` of scenes with two objects, shapes
    drawn with `shape_weights`), rendered on `workers` processes (default: all cores)."""
    workers = workers or os.cpu_count() or 1
    step = max(1, min(2000, count // workers + 1))
    jobs = [(seed, s, min(step, count - s), size, backgrounds, max_rotation, position_jitter, two_object_fraction,
             shape_weights) for s in range(0, count, step)]
    images, captions, scenes = [], [], []
    for im, cap, sc in _parallel_map(_chunk, jobs, workers):
        images.append(im)
        captions += cap
        scenes += sc
    return RenderedSet(np.concatenate(images), captions, scenes)


def _classifier_chunk(args: tuple[int, int, int, int]):
    seed, start, count, size = args
    images, scenes = [], []
    for i in range(start, start + count):
        rng = rng_for(seed, "shapes_world/classifier", i)
        # The judge sees every combination, held-out ones included: it must score them, not generate them.
        scene = sample_scene(rng, two_object_fraction=0.4) if rng.random() < 0.5 else _any_scene(rng)
        jitter = rng.uniform(-0.04, 0.04, size=(len(scene.objects), 2))
        angle = rng.uniform(-15.0, 15.0, size=len(scene.objects))
        images.append(render(scene, size, jitter=jitter, angles_deg=angle, texture_seed=int(rng.integers(2**31))))
        scenes.append(scene)
    return np.stack(images), scenes


def _any_scene(rng: np.random.Generator) -> Scene:
    from ralu_export.shapes_world.world import BACKGROUNDS, COLOURS, PAIRS, POSITIONS, SHAPES, SIZES, SceneObject

    def obj(p):
        return SceneObject(SHAPES[int(rng.integers(len(SHAPES)))], list(COLOURS)[int(rng.integers(len(COLOURS)))],
                           p, list(SIZES)[int(rng.integers(len(SIZES)))])

    if rng.random() < 0.4:
        pa, pb = PAIRS[int(rng.integers(len(PAIRS)))]
        objs = (obj(pa), obj(pb))
    else:
        objs = (obj(list(POSITIONS)[int(rng.integers(len(POSITIONS)))]),)
    return Scene(objs, BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))])


def render_classifier_set(seed: int, count: int, size: int = 128, workers: int | None = None):
    """(images [N, size, size, 3] uint8, scenes) over all attribute combinations, for the judge."""
    workers = workers or os.cpu_count() or 1
    step = max(1, min(2000, count // workers + 1))
    jobs = [(seed, s, min(step, count - s), size) for s in range(0, count, step)]
    images, scenes = [], []
    for im, sc in _parallel_map(_classifier_chunk, jobs, workers):
        images.append(im)
        scenes += sc
    return np.concatenate(images), scenes


def tokenize_captions(captions: list[str], tokenizer_root: Path, length: int) -> tuple[np.ndarray, np.ndarray]:
    """(clip_ids, t5_ids): [N, length] int64 each, padded exactly as FluxPipeline pads them
    (CLIP with its end-of-text token to model_max_length, T5 with <pad> = 0 to max_sequence_length)."""
    from transformers import CLIPTokenizerFast, T5TokenizerFast

    clip = CLIPTokenizerFast.from_pretrained(str(tokenizer_root / "tokenizer"))
    t5 = T5TokenizerFast.from_pretrained(str(tokenizer_root / "tokenizer_2"))
    kw = dict(padding="max_length", max_length=length, truncation=True, return_tensors="np")
    return clip(captions, **kw).input_ids.astype(np.int64), t5(captions, **kw).input_ids.astype(np.int64)
