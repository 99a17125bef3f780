"""Paired augmentation: one random draw applied to t0, t1 and mask alike."""

from __future__ import annotations

import numpy as np
from PIL import Image


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


def random_rotate90(sample: dict, rng: np.random.Generator) -> dict:
    """Rotate t0, t1 and mask by the same multiple of 90 degrees.

    Non-square images only turn by 0 or 180 degrees, so every sample keeps its size.
    """
    h, w = sample["t0"].shape[:2]
    k = int(rng.integers(0, 4)) if h == w else 2 * int(rng.integers(0, 2))
    if k == 0:
        return sample
    out = dict(sample)
    for key in ("t0", "t1", "mask"):
        if key in out:
            out[key] = np.ascontiguousarray(np.rot90(out[key], k, axes=(0, 1)))
    return out


def resize_image(image: np.ndarray, size: tuple[int, int], *, nearest: bool = False) -> np.ndarray:
    """(H, W) or (H, W, C) uint8 resized to ``size`` = (width, height), band by band.

    Pillow resamples each band of an 8-bit image alike, but only knows 1, 3 and 4-band
    images, and treats a 4th band as alpha (premultiplied while resampling): so every
    band goes through its own single-band image and any band count resizes the same way."""
    method = Image.NEAREST if nearest else Image.BILINEAR
    if image.ndim == 2:
        return np.asarray(Image.fromarray(image).resize(size, method))
    out = np.empty((size[1], size[0], image.shape[2]), image.dtype)
    for band in range(image.shape[2]):
        out[..., band] = np.asarray(Image.fromarray(np.ascontiguousarray(image[..., band])).resize(size, method))
    return out


def resize_pair(sample: dict, size: tuple[int, int]) -> dict:
    """t0, t1 (any band count) bilinear and the mask nearest (class ids stay ids) to ``size`` = (width, height)."""
    out = dict(sample)
    for key in ("t0", "t1", "mask"):
        if key in out:
            out[key] = resize_image(out[key], size, nearest=key == "mask")
    return out


def rescale(sample: dict, factor: float) -> dict:
    """Resize by ``factor``: bilinear for the images, nearest for the mask (class ids stay ids)."""
    h, w = sample["t0"].shape[:2]
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    if size == (w, h):
        return sample
    return resize_pair(sample, size)


def jitter_colour(image: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Brightness, contrast and saturation factors drawn from [1 - strength, 1 + strength]."""
    b, c, s = rng.uniform(1 - strength, 1 + strength, size=3)
    x = image.astype(np.float32) * b
    # Luma weights for RGB; an equal mean for any other band count.
    channels = image.shape[-1]
    luma = np.array([0.299, 0.587, 0.114], np.float32) if channels == 3 else np.full(channels, 1 / channels, np.float32)
    grey = x @ luma
    x = (x - grey.mean()) * c + grey.mean()
    grey = x @ luma
    x = (x - grey[..., None]) * s + grey[..., None]
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def swap_times(sample: dict, class_map: list[int] | None = None) -> dict:
    """Exchange t0 and t1. A binary mask is unchanged (change either way); with
    ``class_map``, class ``c`` becomes ``class_map[c]`` (e.g. new <-> missing), other
    values (ignore) stay."""
    out = dict(sample)
    out["t0"], out["t1"] = sample["t1"], sample["t0"]
    if class_map is not None and "mask" in sample:
        lut = np.arange(256, dtype=np.uint8)
        lut[: len(class_map)] = class_map
        out["mask"] = lut[sample["mask"]]
    return out


def augment_pair(
    sample: dict,
    rng: np.random.Generator,
    *,
    crop_size: int | None,
    hflip: bool,
    vflip: bool,
    ignore_index: int = 255,
    rotate90: bool = False,
    scale_jitter: tuple[float, float] | None = None,
    color_jitter: float = 0.0,
    swap_prob: float = 0.0,
    swap_class_map: list[int] | None = None,
) -> dict:
    """Geometry first (scale, crop, rotate, flip: one draw for t0, t1 and mask), then
    photometric jitter drawn separately for t0 and t1, then the optional t0/t1 swap."""
    if scale_jitter is not None:
        sample = rescale(sample, float(rng.uniform(*scale_jitter)))
    if crop_size:
        sample = random_crop(sample, crop_size, rng, ignore_index=ignore_index)
    if rotate90:
        sample = random_rotate90(sample, rng)
    sample = random_flip(sample, rng, horizontal=hflip, vertical=vflip)
    if color_jitter > 0:
        sample = dict(sample)
        sample["t0"] = jitter_colour(sample["t0"], rng, color_jitter)
        sample["t1"] = jitter_colour(sample["t1"], rng, color_jitter)
    if swap_prob > 0 and rng.random() < swap_prob:
        sample = swap_times(sample, swap_class_map)
    return sample
