"""Connected changed regions of a class-index mask: what an application reads first.

The serving API and batch scoring report the same summary: the changed fraction and
one entry per connected region (class, bounding box, area). Regions are found per
class, so two touching regions of different change classes stay apart; scipy's
``ndimage.label`` does the labelling.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage


def label_components(binary: np.ndarray, *, connectivity: int = 8) -> tuple[np.ndarray, int]:
    """Label the connected ``True`` pixels of a 2-D array: (labels int32, count).

    Labels run 1..count in raster order of each region's first pixel (row by row);
    0 is background. ``connectivity``: 4 or 8 neighbours.
    """
    binary = np.asarray(binary, dtype=bool)
    if binary.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got shape {binary.shape}")
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    structure = np.ones((3, 3), bool) if connectivity == 8 else None
    labels, count = ndimage.label(binary, structure=structure)
    return labels.astype(np.int32, copy=False), int(count)


def summarize_mask(
    mask: np.ndarray,
    *,
    background: int = 0,
    ignore_index: int | None = 255,
    connectivity: int = 8,
    min_area: int = 1,
    max_regions: int = 1000,
) -> dict[str, Any]:
    """Changed fraction and connected regions of a class-index mask (H, W).

    Every class other than ``background`` (and ``ignore_index``) counts as change.
    Regions smaller than ``min_area`` pixels are left out of the list (not of the
    fraction). The list is sorted by area, largest first, and cut at ``max_regions``
    (``regions_total`` tells how many there were). A box is ``[x0, y0, x1, y1]`` with
    exclusive ends, so its width is ``x1 - x0``.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"expected a 2-D class-index mask, got shape {mask.shape}")
    height, width = mask.shape
    valid = np.ones(mask.shape, bool) if ignore_index is None else mask != ignore_index
    changed = valid & (mask != background)
    changed_pixels = int(changed.sum())
    regions: list[dict[str, Any]] = []
    for cls in np.unique(mask[changed]).tolist():
        labels, count = label_components(mask == cls, connectivity=connectivity)
        if count == 0:
            continue
        areas = np.bincount(labels.ravel(), minlength=count + 1)
        ys, xs = np.nonzero(labels)
        ids = labels[ys, xs]
        x0 = np.full(count + 1, width, np.int64)
        y0 = np.full(count + 1, height, np.int64)
        x1 = np.zeros(count + 1, np.int64)
        y1 = np.zeros(count + 1, np.int64)
        np.minimum.at(x0, ids, xs)
        np.minimum.at(y0, ids, ys)
        np.maximum.at(x1, ids, xs + 1)
        np.maximum.at(y1, ids, ys + 1)
        for i in range(1, count + 1):
            if areas[i] >= min_area:
                regions.append(
                    {"class": int(cls), "bbox": [int(x0[i]), int(y0[i]), int(x1[i]), int(y1[i])], "area": int(areas[i])}
                )
    regions.sort(key=lambda r: (-r["area"], r["bbox"][1], r["bbox"][0], r["class"]))
    total = len(regions)
    return {
        "height": height,
        "width": width,
        "changed_pixels": changed_pixels,
        "changed_fraction": changed_pixels / max(int(valid.sum()), 1),
        "regions_total": total,
        "regions": regions[:max_regions],
    }
