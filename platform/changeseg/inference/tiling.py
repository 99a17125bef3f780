"""Sliding-window inference for pairs larger than the model's input.

Tiles of ``tile`` pixels overlap by ``overlap``; each output pixel is taken from the
one tile in which it lies farthest from an inner tile border (at least ``overlap // 2``
pixels away, except at the image's own edges). There is no averaging across tiles, so
there are no seams: for a model whose receptive field reaches less than
``overlap // 2`` pixels, the stitched result equals the untiled prediction exactly.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["tile_starts", "predict_tiled"]


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
    ys, xs = tile_starts(height, tile, overlap), tile_starts(width, tile, overlap)
    th, tw = min(tile, height), min(tile, width)
    windows = [(y, x) for y in ys for x in xs]
    y_bounds = dict(zip(ys, _core_bounds(ys, th, height)))
    x_bounds = dict(zip(xs, _core_bounds(xs, tw, width)))
    out: Tensor | None = None
    for first in range(0, len(windows), max(1, batch_size)):
        chunk = windows[first : first + batch_size]
        a = torch.cat([t0[:, :, y : y + th, x : x + tw] for y, x in chunk])
        b = torch.cat([t1[:, :, y : y + th, x : x + tw] for y, x in chunk])
        pred = forward(a, b)
        if out is None:
            out = pred.new_empty((n, pred.shape[1], height, width))
        for k, (y, x) in enumerate(chunk):
            (y0, y1), (x0, x1) = y_bounds[y], x_bounds[x]
            piece = pred[k * n : (k + 1) * n]
            out[:, :, y0:y1, x0:x1] = piece[:, :, y0 - y : y1 - y, x0 - x : x1 - x]
    assert out is not None
    return out
