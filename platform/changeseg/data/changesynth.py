"""Change pairs synthesised from single-date images, for pretraining MTF, MSF and the head.

Most users have few labelled pairs but many unlabelled images. As in C-3PO's COCO
pairs and STAR (single-temporal supervised learning), one image becomes a pair: objects
(from an instance or segmentation mask) or, without masks, soft-edged random patches of
*other* images are pasted into t1 (appear) or into t0 (disappear); each date then gets
its own photometric jitter and a small shift, so illumination and misregistration are
not change. The pasted regions are the change mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

__all__ = ["images_of_pairs", "synthesize_pair", "write_pairs", "write_synthetic_pairs"]


def _soft_blob(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """An ellipse alpha in [0, 1] with a feathered edge (no hard seam for the model to find)."""
    yy, xx = np.mgrid[0:height, 0:width]
    cy, cx = (height - 1) / 2, (width - 1) / 2
    r = ((yy - cy) / (height / 2)) ** 2 + ((xx - cx) / (width / 2)) ** 2
    feather = rng.uniform(0.1, 0.3)
    return np.clip((1.0 - r) / feather, 0.0, 1.0).astype(np.float32)


def _jitter(image: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    gain = rng.uniform(1 - strength, 1 + strength, size=3)
    bias = rng.uniform(-strength, strength) * 255 * 0.5
    return np.clip(image.astype(np.float32) * gain + bias, 0, 255).astype(np.uint8)


def _shift(image: np.ndarray, rng: np.random.Generator, max_shift: int) -> np.ndarray:
    if max_shift <= 0:
        return image
    dy, dx = (int(v) for v in rng.integers(-max_shift, max_shift + 1, size=2))
    return np.roll(image, (dy, dx), axis=(0, 1))


def _objects(segmentation: np.ndarray) -> np.ndarray:
    """Instance ids: a binary mask (one non-zero value, e.g. a change mask's 255) is split
    into connected components, so each building is an object rather than all of them."""
    ids = np.unique(segmentation)
    if ids[ids != 0].size == 1:
        labels, _count = ndimage.label(segmentation != 0)
        return labels
    return segmentation


def _object_alpha(segmentation: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, int, int] | None:
    """One random object (non-zero id, at least 16 pixels) of an instance map: its mask
    cropped to its box, and the box's top-left corner in the donor image."""
    ids, counts = np.unique(segmentation, return_counts=True)
    ids = ids[(ids != 0) & (counts >= 16)]
    if ids.size == 0:
        return None
    ys, xs = np.nonzero(segmentation == rng.choice(ids))
    y0, x0 = int(ys.min()), int(xs.min())
    box = segmentation[y0 : ys.max() + 1, x0 : xs.max() + 1]
    return (box == segmentation[ys[0], xs[0]]).astype(np.float32), y0, x0


def synthesize_pair(
    image: np.ndarray,
    donors: Sequence[np.ndarray],
    rng: np.random.Generator,
    *,
    segmentations: Sequence[np.ndarray | None] | None = None,
    objects: tuple[int, int] = (1, 5),
    patch_fraction: tuple[float, float] = (0.08, 0.3),
    removed_share: float = 0.4,
    jitter: float = 0.1,
    max_shift: int = 2,
) -> dict[str, np.ndarray]:
    """``{"t0", "t1", "mask"}`` from one uint8 RGB image: ``objects`` pastes from ``donors``
    (with their ``segmentations``, object-shaped; without, soft ellipses), a share of them
    into t0 (removed), the rest into t1 (added)."""
    height, width = image.shape[:2]
    dates = [image.astype(np.float32), image.astype(np.float32)]
    mask = np.zeros((height, width), np.uint8)
    for _ in range(int(rng.integers(objects[0], objects[1] + 1))):
        k = int(rng.integers(len(donors)))
        donor = donors[k]
        found = None
        if segmentations is not None and segmentations[k] is not None:
            found = _object_alpha(segmentations[k], rng)
        if found is None:
            ph = max(4, int(height * rng.uniform(*patch_fraction)))
            pw = max(4, int(width * rng.uniform(*patch_fraction)))
            alpha = _soft_blob(ph, pw, rng)
            ph, pw = min(ph, height, donor.shape[0]), min(pw, width, donor.shape[1])
            alpha = alpha[:ph, :pw]
            sy, sx = int(rng.integers(donor.shape[0] - ph + 1)), int(rng.integers(donor.shape[1] - pw + 1))
        else:  # the object's own pixels, cut out along its mask
            alpha, sy, sx = found
            ph, pw = min(alpha.shape[0], height), min(alpha.shape[1], width)
            alpha = alpha[:ph, :pw]
        for _attempt in range(5):  # objects do not overlap: one pasted into each date could cancel out
            ty, tx = int(rng.integers(height - ph + 1)), int(rng.integers(width - pw + 1))
            if not mask[ty : ty + ph, tx : tx + pw][alpha > 0].any():
                break
        else:
            continue
        patch = donor[sy : sy + ph, sx : sx + pw].astype(np.float32)
        date = 0 if rng.random() < removed_share else 1
        region = dates[date][ty : ty + ph, tx : tx + pw]
        dates[date][ty : ty + ph, tx : tx + pw] = region * (1 - alpha[..., None]) + patch * alpha[..., None]
        mask[ty : ty + ph, tx : tx + pw] |= (alpha >= 0.5).astype(np.uint8)
    t0 = _jitter(dates[0].astype(np.uint8), rng, jitter)
    t1 = _shift(_jitter(dates[1].astype(np.uint8), rng, jitter), rng, max_shift)
    return {"t0": t0, "t1": t1, "mask": mask}


def write_synthetic_pairs(
    images: Sequence[str | Path],
    output_dir: str | Path,
    *,
    pairs_per_image: int = 4,
    size: int | None = 256,
    seed: int = 0,
    segmentations: Sequence[str | Path | None] | None = None,
) -> int:
    """Pairs from image files (and optional instance, segmentation or binary masks named
    alongside) in the generic ``t0/ t1/ mask/`` folder layout; returns the pair count."""
    loaded = [np.asarray(Image.open(p).convert("RGB")) for p in images]
    segs = [_objects(np.asarray(Image.open(s))) if s else None for s in segmentations] if segmentations else None
    return write_pairs(loaded, output_dir, segmentations=segs, pairs_per_image=pairs_per_image, size=size, seed=seed)


def images_of_pairs(samples: Sequence[dict]) -> tuple[list[np.ndarray], list[np.ndarray | None]]:
    """Single-date images of decoded labelled pairs, for pretraining on the user's own data.

    Every t1 comes with its change mask's connected components as objects (what appeared:
    buildings, works), every t0 without (soft patches): the synthetic pairs then paste the
    kind of object that changes in this archive into other scenes, at new places.
    """
    images: list[np.ndarray] = []
    segmentations: list[np.ndarray | None] = []
    for sample in samples:
        images.append(np.asarray(sample["t0"]))
        segmentations.append(None)
        changed = np.asarray(sample["mask"])
        changed = (changed > 0) & (changed != 255)  # 255: ignored pixels, not change
        images.append(np.asarray(sample["t1"]))
        segmentations.append(ndimage.label(changed)[0] if changed.any() else None)
    return images, segmentations


def write_pairs(
    images: Sequence[np.ndarray],
    output_dir: str | Path,
    *,
    segmentations: Sequence[np.ndarray | None] | None = None,
    pairs_per_image: int = 4,
    size: int | None = 256,
    seed: int = 0,
) -> int:
    """Write ``pairs_per_image`` synthetic pairs per uint8 RGB image (crops of ``size``,
    whole images when None), objects taken from the *other* images; returns the count."""
    rng = np.random.default_rng(seed)
    out = Path(output_dir)
    for name in ("t0", "t1", "mask"):
        (out / name).mkdir(parents=True, exist_ok=True)
    count = 0
    for index, image in enumerate(images):
        for copy in range(pairs_per_image):
            crop = image
            if size is not None and min(image.shape[:2]) > size:
                y, x = int(rng.integers(image.shape[0] - size + 1)), int(rng.integers(image.shape[1] - size + 1))
                crop = image[y : y + size, x : x + size]
            others = [j for j in range(len(images)) if j != index] or [index]
            donors = [images[j] for j in others]
            donor_segs = None if segmentations is None else [segmentations[j] for j in others]
            pair = synthesize_pair(crop, donors, rng, segmentations=donor_segs)
            stem = f"synth_{index:05d}_{copy:02d}"
            Image.fromarray(pair["t0"]).save(out / "t0" / f"{stem}.png")
            Image.fromarray(pair["t1"]).save(out / "t1" / f"{stem}.png")
            Image.fromarray(pair["mask"] * 255).save(out / "mask" / f"{stem}.png")
            count += 1
    return count
