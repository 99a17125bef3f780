"""Sliding-window inference for pairs larger than the model's input.

Tiles of ``tile`` pixels overlap by ``overlap``; each output pixel is taken from the
one tile in which it lies farthest from an inner tile border (at least ``overlap // 2``
pixels away, except at the image's own edges). There is no averaging across tiles, so
there are no seams: for a model whose receptive field reaches less than
``overlap // 2`` pixels, the stitched result equals the untiled prediction exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["Window", "plan_windows", "tile_starts", "predict_tiled"]


class Window(NamedTuple):
    """One input window (``y``, ``x``, ``height``, ``width``) and the output slice it owns."""

    y: int
    x: int
    height: int
    width: int
    y0: int
    y1: int
    x0: int
    x1: int


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets covering ``length`` with windows of ``tile`` that overlap by at least ``overlap``."""
    if tile <= 0 or not 0 <= overlap < tile:
        raise ValueError(f"need tile > 0 and 0 <= overlap < tile, got tile={tile}, overlap={overlap}")
    if length <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, length - tile, step))
    starts.append(length - tile)  # the last window ends at the edge (it may overlap more)
    return starts


def _core_bounds(starts: list[int], tile: int, length: int) -> list[tuple[int, int]]:
    """For each window, the [lo, hi) slice of the output it owns: split overlaps in the middle."""
    bounds = []
    for i, start in enumerate(starts):
        lo = 0 if i == 0 else (start + starts[i - 1] + tile) // 2
        hi = length if i == len(starts) - 1 else (starts[i + 1] + start + tile) // 2
        bounds.append((lo, hi))
    return bounds


def plan_windows(height: int, width: int, *, tile: int | None, overlap: int) -> list[Window]:
    """The windows covering an image; one window (the whole image) when it fits in ``tile``."""
    if tile is None or (height <= tile and width <= tile):
        return [Window(0, 0, height, width, 0, height, 0, width)]
    ys, xs = tile_starts(height, tile, overlap), tile_starts(width, tile, overlap)
    th, tw = min(tile, height), min(tile, width)
    y_bounds, x_bounds = _core_bounds(ys, th, height), _core_bounds(xs, tw, width)
    return [Window(y, x, th, tw, *yb, *xb) for y, yb in zip(ys, y_bounds) for x, xb in zip(xs, x_bounds)]


def predict_tiled(
    forward: Callable[[Tensor, Tensor], Tensor],
    t0: Tensor,
    t1: Tensor,
    *,
    tile: int,
    overlap: int,
    batch_size: int = 4,
) -> Tensor:
    """Run ``forward`` on overlapping windows of ``(N, 3, H, W)`` inputs and stitch the outputs.

    ``forward`` maps a batch of windows ``(B, 3, h, w)`` x 2 to ``(B, C, h, w)``.
    Inputs no larger than ``tile`` in either dimension go through in one call.
    """
    if t0.shape != t1.shape:
        raise ValueError(f"t0 and t1 differ in shape: {tuple(t0.shape)} vs {tuple(t1.shape)}")
    n, _, height, width = t0.shape
    if height <= tile and width <= tile:
        return forward(t0, t1)
    windows = plan_windows(height, width, tile=tile, overlap=overlap)
    out: Tensor | None = None
    for first in range(0, len(windows), max(1, batch_size)):
        chunk = windows[first : first + max(1, batch_size)]
        a = torch.cat([t0[:, :, w.y : w.y + w.height, w.x : w.x + w.width] for w in chunk])
        b = torch.cat([t1[:, :, w.y : w.y + w.height, w.x : w.x + w.width] for w in chunk])
        pred = forward(a, b)
        if out is None:
            out = pred.new_empty((n, pred.shape[1], height, width))
        for k, w in enumerate(chunk):
            piece = pred[k * n : (k + 1) * n]
            out[:, :, w.y0 : w.y1, w.x0 : w.x1] = piece[:, :, w.y0 - w.y : w.y1 - w.y, w.x0 - w.x : w.x1 - w.x]
    assert out is not None
    return out
