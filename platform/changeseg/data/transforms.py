"""Paired augmentation: one random draw applied to t0, t1 and mask alike."""

from __future__ import annotations

import numpy as np


def random_crop(sample: dict, size: int, rng: np.random.Generator, *, ignore_index: int = 255) -> dict:
    """Crop the same window from t0, t1 and mask; pad smaller images first.

    Padding uses zeros for the images and ``ignore_index`` for the mask, so padded
    pixels never count in the loss.
    """
    h, w = sample["t0"].shape[:2]
    ph, pw = max(0, size - h), max(0, size - w)
    if ph or pw:
        pad = ((0, ph), (0, pw))
        sample = dict(sample)
        for key in ("t0", "t1"):
            sample[key] = np.pad(sample[key], pad + ((0, 0),))
        if "mask" in sample:
            sample["mask"] = np.pad(sample["mask"], pad, constant_values=ignore_index)
        h, w = h + ph, w + pw
    y = int(rng.integers(0, h - size + 1))
    x = int(rng.integers(0, w - size + 1))
    out = dict(sample)
    for key in ("t0", "t1", "mask"):
        if key in sample:
            out[key] = np.ascontiguousarray(sample[key][y : y + size, x : x + size])
    return out


def random_flip(sample: dict, rng: np.random.Generator, *, horizontal: bool = True, vertical: bool = False) -> dict:
    out = dict(sample)
    for axis, enabled in ((1, horizontal), (0, vertical)):
        if enabled and rng.random() < 0.5:
            for key in ("t0", "t1", "mask"):
                if key in out:
                    out[key] = np.ascontiguousarray(np.flip(out[key], axis=axis))
    return out


def augment_pair(
    sample: dict,
    rng: np.random.Generator,
    *,
    crop_size: int | None,
    hflip: bool,
    vflip: bool,
    ignore_index: int = 255,
) -> dict:
    if crop_size:
        sample = random_crop(sample, crop_size, rng, ignore_index=ignore_index)
    return random_flip(sample, rng, horizontal=hflip, vertical=vflip)
