"""Seeded random generators, one per use (STYLE.md §2 "Randomness"). No global RNG anywhere."""

import zlib

import numpy as np


def rng_for(seed: int, purpose: str, step: int = 0) -> np.random.Generator:
    """A generator determined by (seed, purpose, step); crc32, not hash(), so it is stable across processes."""
    return np.random.default_rng([int(seed), zlib.crc32(purpose.encode("utf-8")), int(step)])


def initial_noise(seed: int, num_tokens: int, channels: int) -> np.ndarray:
    """The runtime's initial noise for `seed`: packed tokens [1, num_tokens, channels] float32, N(0, 1). Every
    sampler that must reproduce a `ralu-run` image (the runtime, cache calibration, `ralu-eval --noise runtime`
    feeding diffusers) draws it here."""
    return rng_for(seed, "initial_noise").standard_normal((1, num_tokens, channels)).astype(np.float32)
