"""Images for people: prediction overlays, error maps and MTF branch maps.

Branch maps show what each MTF branch responds to, per fused scale, as in the C-3PO
paper's figure of appear / disappear / exchange activations::

    panel = branch_panel_for(model, t0, t1)          # uint8 (H, W, 3) inputs; runs in eval mode
    # or, with tensors already at hand:
    logits, branches = model.forward_with_branches(t0_float, t1_float)
    panel = branch_panel(t0, t1, logits.argmax(1)[0].numpy(), branches)
    PIL.Image.fromarray(panel).save("branches.png")
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.nn import functional as F

from changeseg.inference.predictor import Predictor
from changeseg.models.contract import supports_branches

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


# --- MTF branch maps ---------------------------------------------------------

# Black -> indigo -> crimson -> orange -> pale yellow: zero response is black, and
# brightness rises monotonically, so the maps also read in greyscale.
HEAT_ANCHORS = np.array([[0, 0, 0], [48, 18, 110], [170, 30, 100], [245, 120, 30], [255, 245, 190]], dtype=np.float32)
BRANCH_ORDER = ("info", "appear", "disappear", "exchange")
LABEL_HEIGHT = 12
BRANCH_REDUCTIONS = ("mean_abs", "l2")


def heat_colours(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (clipped) -> uint8 RGB through :data:`HEAT_ANCHORS`, piecewise linear."""
    v = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float32)), 0.0, 1.0)
    pos = v * (len(HEAT_ANCHORS) - 1)
    lo = np.minimum(pos.astype(np.int64), len(HEAT_ANCHORS) - 2)
    frac = (pos - lo)[..., None]
    rgb = HEAT_ANCHORS[lo] * (1 - frac) + HEAT_ANCHORS[lo + 1] * frac
    return np.rint(rgb).astype(np.uint8)


def branch_map(activation: torch.Tensor | np.ndarray, size: tuple[int, int], *, reduce: str = "mean_abs") -> np.ndarray:
    """One branch's ``(C, h, w)`` activation -> ``(H, W)`` float in [0, 1].

    Channels are reduced to a magnitude (mean of absolute values, or L2 norm), upsampled
    bilinearly to ``size`` and divided by the map's own maximum: 0 stays 0 (no response),
    and each map uses the full colour range whatever its scale.
    """
    if reduce not in BRANCH_REDUCTIONS:
        raise ValueError(f"reduce must be one of {', '.join(BRANCH_REDUCTIONS)}, got {reduce!r}")
    x = torch.as_tensor(activation).detach().float().cpu()
    if x.dim() != 3:
        raise ValueError(f"branch activation must be (C, h, w), got {tuple(x.shape)}")
    mag = x.abs().mean(0) if reduce == "mean_abs" else x.square().sum(0).sqrt()
    up = F.interpolate(mag[None, None], size=tuple(size), mode="bilinear", align_corners=False)[0, 0].clamp_min(0)
    peak = float(up.max())
    return (up / peak).numpy() if peak > 0 else np.zeros(tuple(size), dtype=np.float32)


def _label(tile: np.ndarray, text: str | None) -> np.ndarray:
    """The tile under a white strip with ``text`` (PIL's built-in font)."""
    if text is None:
        return tile
    strip = Image.new("RGB", (tile.shape[1], LABEL_HEIGHT), (255, 255, 255))
    ImageDraw.Draw(strip).text((2, 0), text, fill=(0, 0, 0))
    return np.concatenate([np.asarray(strip, dtype=np.uint8), tile], axis=0)


def _stride(image_size: int, feature_size: int) -> int:
    """The power-of-two stride of a map: strided 3x3 convs and pools give ceil(H / stride)."""
    for k in range(11):
        if -(-image_size // 2**k) == feature_size:
            return 2**k
    return max(1, round(image_size / feature_size))


def _ordered(names: Sequence[str]) -> list[str]:
    known = [n for n in BRANCH_ORDER if n in names]
    return known + [n for n in names if n not in BRANCH_ORDER]


def branch_panel(
    t0: np.ndarray,
    t1: np.ndarray,
    prediction: np.ndarray,
    branches: Sequence[Mapping[str, torch.Tensor | np.ndarray]],
    *,
    index: int = 0,
    reduce: str = "mean_abs",
    labels: bool = True,
    gutter: int = 4,
) -> np.ndarray:
    """A grid: t0 | t1 | prediction on t1, then one row per fused scale of its branch maps.

    Args:
        t0, t1: uint8 RGB images ``(H, W, 3)``.
        prediction: class map ``(H, W)``; non-zero is drawn as change.
        branches: from ``forward_with_branches`` (finest scale first), each a dict of
            branch name -> ``(N, C, h, w)`` (sample ``index`` is drawn) or ``(C, h, w)``.
        reduce: ``mean_abs`` or ``l2`` over channels (see :func:`branch_map`).
        labels: write the tile names (scale given as 1/stride) above the tiles.

    Returns:
        uint8 ``(rows * (H [+ label]) + gutters, cols * W + gutters, 3)``.
    """
    t0, t1 = np.asarray(t0), np.asarray(t1)
    if t0.ndim != 3 or t0.shape[2] != 3 or t0.shape != t1.shape:
        raise ValueError(f"t0 and t1 must be RGB images of one shape, got {t0.shape} and {t1.shape}")
    h, w = t0.shape[:2]
    prediction = np.asarray(prediction)
    if prediction.shape != (h, w):
        raise ValueError(f"prediction must be ({h}, {w}), got {prediction.shape}")
    t0, t1 = t0.astype(np.uint8), t1.astype(np.uint8)

    rows: list[list[tuple[np.ndarray, str | None]]] = [
        [(t0, "t0"), (t1, "t1"), (blend(t1, prediction != 0, CHANGE_COLOUR), "prediction")]
    ]
    rows += [_branch_row(scale, size=(h, w), index=index, reduce=reduce) for scale in branches]
    return _grid(rows, size=(h, w), labels=labels, gutter=gutter)


def _branch_row(
    scale: Mapping[str, torch.Tensor | np.ndarray], *, size: tuple[int, int], index: int, reduce: str
) -> list[tuple[np.ndarray, str | None]]:
    """One fused scale's branch maps as labelled heat tiles of ``size``."""
    h, w = size
    row: list[tuple[np.ndarray, str | None]] = []
    for name in _ordered(list(scale)):
        act: Any = scale[name]
        if act.ndim == 4:
            act = act[index]
        stride = _stride(h, act.shape[-2])
        tile = heat_colours(branch_map(act, (h, w), reduce=reduce))
        row.append((tile, f"{name} 1/{stride}"))
    return row


def _grid(
    rows: list[list[tuple[np.ndarray, str | None]]], *, size: tuple[int, int], labels: bool, gutter: int
) -> np.ndarray:
    """Tiles of ``size`` in rows (short rows padded white), white gutters between them."""
    h, w = size
    cols = max(len(r) for r in rows)
    tile_h = h + (LABEL_HEIGHT if labels else 0)
    blank = np.full((tile_h, w, 3), 255, dtype=np.uint8)
    v_gutter = np.full((tile_h, gutter, 3), 255, dtype=np.uint8)
    strips = []
    for row in rows:
        tiles = [_label(tile, text if labels else None) for tile, text in row]
        tiles += [blank] * (cols - len(tiles))
        parts: list[np.ndarray] = []
        for tile in tiles:
            parts += [tile, v_gutter]
        strips.append(np.concatenate(parts[:-1], axis=1))
    h_gutter = np.full((gutter, strips[0].shape[1], 3), 255, dtype=np.uint8)
    out: list[np.ndarray] = []
    for strip in strips:
        out += [strip, h_gutter]
    return np.concatenate(out[:-1], axis=0)


def branch_panel_for(model: Any, t0: np.ndarray, t1: np.ndarray, **kwargs: Any) -> np.ndarray:
    """Run the MTF model (or a :class:`~changeseg.inference.predictor.Predictor` around it) on
    one uint8 RGB pair through the inference core and draw :func:`branch_panel`."""
    if isinstance(model, Predictor):
        prediction, branches = model.forward_with_branches(t0, t1)
        return branch_panel(t0, t1, prediction, branches, index=0, **kwargs)
    if not supports_branches(model):
        raise TypeError(f"{type(model).__name__} has no MTF branches (forward_with_branches)")
    was_training = model.training
    try:
        prediction, branches = Predictor(model, device=next(model.parameters()).device).forward_with_branches(t0, t1)
    finally:
        model.train(was_training)
    return branch_panel(t0, t1, prediction, branches, index=0, **kwargs)
