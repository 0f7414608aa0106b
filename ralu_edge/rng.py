"""Seeded random generators, one per use (STYLE.md §2 "Randomness"). No global RNG anywhere."""

import zlib

import numpy as np


def rng_for(seed: int, purpose: str, step: int = 0) -> np.random.Generator:
    """A generator determined by (seed, purpose, step); crc32, not hash(), so it is stable across processes."""
    return np.random.default_rng([int(seed), zlib.crc32(purpose.encode("utf-8")), int(step)])
