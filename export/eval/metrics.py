"""Image metrics used by every benchmark: PSNR and SSIM against a reference image (fidelity, e.g. RALU vs
the 50-step baseline), in numpy. Images are uint8 [H, W, 3] or [B, H, W, 3]."""

from __future__ import annotations

import numpy as np


def psnr(images: np.ndarray, references: np.ndarray) -> np.ndarray:
    """Peak signal-to-noise ratio in dB per image: [B] float64 (a single pair gives a 0-d array).

    Identical images give +inf; averages over a set should use the median or clip."""
    a = np.asarray(images, dtype=np.float64)
    b = np.asarray(references, dtype=np.float64)
    mse = ((a - b) ** 2).reshape(*a.shape[:-3], -1).mean(-1)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(255.0**2 / mse)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    x = np.arange(size) - (size - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _filter(img: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Separable 'valid' filtering over the two spatial axes of [..., H, W]."""
    k = len(w)
    out = sum(w[i] * img[..., i:img.shape[-2] - k + 1 + i, :] for i in range(k))
    return sum(w[i] * out[..., :, i:out.shape[-1] - k + 1 + i] for i in range(k))


def ssim(images: np.ndarray, references: np.ndarray) -> np.ndarray:
    """Structural similarity (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03, L 255),
    averaged over channels and pixels: [B] float64 (a single pair gives a 0-d array)."""
    a = np.moveaxis(np.asarray(images, dtype=np.float64), -1, -3)  # [..., 3, H, W]
    b = np.moveaxis(np.asarray(references, dtype=np.float64), -1, -3)
    w = _gaussian_window()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_a, mu_b = _filter(a, w), _filter(b, w)
    var_a = _filter(a * a, w) - mu_a**2
    var_b = _filter(b * b, w) - mu_b**2
    cov = _filter(a * b, w) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.reshape(*s.shape[:-3], -1).mean(-1)


def frechet_distance(features: np.ndarray, reference: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets [N, D] and [M, D] (FID's formula,
    ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2)), computed with symmetric eigendecompositions:
    Tr (S_a S_b)^1/2 = Tr (S_a^1/2 S_b S_a^1/2)^1/2, which stays real for the rank-deficient covariances of
    small sets. Values depend on N: compare sets of equal size only."""
    a, b = np.asarray(features, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(cov_a)
    half = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(half @ cov_b @ half), 0.0, None)).sum()
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2.0 * cross)


def paired_frechet_difference(features: np.ndarray, baseline: np.ndarray, reference: np.ndarray,
                              rng: np.random.Generator, samples: int = 200) -> dict:
    """FD(features, reference) - FD(baseline, reference) with a 95 % percentile bootstrap interval over prompts.

    features, baseline: [P, D], row i generated from prompt i by two samplers (paired); reference: [P, K, D],
    K real renders of prompt i. Each bootstrap draw resamples prompts once for all three sets."""
    p = features.shape[0]
    flat = reference.reshape(-1, reference.shape[-1])
    delta = frechet_distance(features, flat) - frechet_distance(baseline, flat)
    draws = []
    for _ in range(samples):
        idx = rng.integers(0, p, size=p)
        ref = reference[idx].reshape(-1, reference.shape[-1])
        draws.append(frechet_distance(features[idx], ref) - frechet_distance(baseline[idx], ref))
    return {"delta": float(delta), "ci95": [float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))]}
