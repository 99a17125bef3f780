"""Images for people: prediction overlays and error maps."""

from __future__ import annotations

import numpy as np

# Colours of the error map: hits, false alarms and misses.
TP_COLOUR = np.array([40, 200, 60], dtype=np.uint8)
FP_COLOUR = np.array([230, 40, 40], dtype=np.uint8)
FN_COLOUR = np.array([40, 90, 240], dtype=np.uint8)
CHANGE_COLOUR = np.array([255, 60, 200], dtype=np.uint8)


def mask_to_rgb(mask: np.ndarray) -> np.ndarray:
    """Binary or class mask -> white-on-black RGB (any non-zero class is white)."""
    return np.repeat(((mask != 0) * 255).astype(np.uint8)[..., None], 3, axis=2)


def blend(image: np.ndarray, mask: np.ndarray, colour: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    out = image.astype(np.float32)
    sel = mask.astype(bool)
    out[sel] = (1 - alpha) * out[sel] + alpha * colour
    return out.clip(0, 255).astype(np.uint8)


def error_map(image: np.ndarray, pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """``image`` dimmed, with hits green, false alarms red and misses blue."""
    out = (image.astype(np.float32) * 0.5).astype(np.uint8)
    p, t = pred != 0, (truth != 0) & (truth != 255)
    out[p & t] = TP_COLOUR
    out[p & ~t] = FP_COLOUR
    out[~p & t] = FN_COLOUR
    return out


def overlay_panel(t0: np.ndarray, t1: np.ndarray, pred: np.ndarray, truth: np.ndarray | None = None) -> np.ndarray:
    """One strip: t0 | t1 | prediction on t1 | (truth | errors), with 4-px gutters."""
    tiles = [t0, t1, blend(t1, pred != 0, CHANGE_COLOUR)]
    if truth is not None:
        tiles += [mask_to_rgb(truth), error_map(t1, pred, truth)]
    h = t0.shape[0]
    gutter = np.full((h, 4, 3), 255, dtype=np.uint8)
    parts = []
    for tile in tiles:
        parts += [tile, gutter]
    return np.concatenate(parts[:-1], axis=1)
