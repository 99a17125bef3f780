"""Change vector analysis with an Otsu threshold: the no-learning baseline.

CVA measures, per pixel, the length of the RGB difference vector between t1 and t0;
Otsu's method picks the magnitude threshold that maximises the between-class variance
of the magnitude histogram. It needs no training data and is symmetric in t0 and t1,
so any learned model has to beat it to be worth its cost.
"""

from __future__ import annotations

import numpy as np

__all__ = ["change_magnitude", "otsu_threshold", "cva_otsu"]


def change_magnitude(t0: np.ndarray, t1: np.ndarray) -> np.ndarray:
    """Euclidean norm of the per-pixel RGB difference, float32 ``(H, W)`` in [0, 255 * sqrt(3)]."""
    a, b = np.asarray(t0), np.asarray(t1)
    if a.shape != b.shape or a.ndim != 3:
        raise ValueError(f"t0 and t1 must be (H, W, C) images of one shape, got {a.shape} and {b.shape}")
    diff = b.astype(np.float32) - a.astype(np.float32)
    return np.sqrt(np.square(diff).sum(axis=2))


def otsu_threshold(values: np.ndarray, *, bins: int = 256) -> float:
    """The threshold ``t`` that maximises the between-class variance ``w0 * w1 * (mu0 - mu1)^2``
    of ``values <= t`` against ``values > t``, searched over ``bins`` histogram bins.

    ``t`` is the largest value of the lower class, so ``values > t`` is exactly the
    upper class. Constant input has no split: its value is returned (nothing is above it).
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        raise ValueError("otsu_threshold needs at least one value")
    lo, hi = float(v.min()), float(v.max())
    if lo == hi:
        return hi
    counts, edges = np.histogram(v, bins=bins, range=(lo, hi))
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(counts).astype(np.float64)  # pixels in bins [0..k]
    w1 = v.size - w0
    s0 = np.cumsum(counts * centres)
    mu0 = s0 / np.maximum(w0, 1)
    mu1 = (s0[-1] - s0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    between[w1 == 0] = -1.0  # splitting after the last bin leaves one class
    k = int(np.argmax(between))
    # np.histogram's bins are half-open [e_k, e_k+1): the lower class is v < edges[k + 1].
    return float(v[v < edges[k + 1]].max())


def cva_otsu(t0: np.ndarray, t1: np.ndarray) -> np.ndarray:
    """Binary change map (uint8, 1 = change): CVA magnitude above its Otsu threshold."""
    magnitude = change_magnitude(t0, t1)
    return (magnitude > otsu_threshold(magnitude)).astype(np.uint8)
