"""Operating points of binary change models: a threshold on P(any change).

Training with class weights shifts a model's probabilities toward the rare change
class, so argmax (0.5) is rarely the best place to cut. :class:`ThresholdCurve` keeps a
histogram of validation probabilities per true class instead of the pixels themselves:
``bins`` counts per class, a sum over pixels, so curves of several batches, pairs or
DDP ranks merge by addition (one :func:`~changeseg.devices.all_reduce_sum`). From it
come the precision-recall curve, average precision and the threshold that maximises F1
or meets a target precision or recall.

A pixel is called changed when ``P(change) >= threshold``; the candidate thresholds are
the bin edges ``k / bins``, so a curve's numbers are exact for those thresholds.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from changeseg.devices import all_reduce_sum

__all__ = ["DEFAULT_THRESHOLD", "MIN_CALIBRATION_PIXELS", "ThresholdCurve", "choose_operating_point", "threshold_of"]

DEFAULT_THRESHOLD = 0.5
# Fewer labelled validation pixels of either class than this: keep 0.5 and say so.
MIN_CALIBRATION_PIXELS = 1000


class ThresholdCurve:
    """Histogram of P(change) for changed and unchanged pixels (mergeable counts)."""

    def __init__(self, *, bins: int = 1000, ignore_index: int = 255, change_class: int = 1) -> None:
        if bins < 2:
            raise ValueError(f"bins must be >= 2, got {bins}")
        self.bins = bins
        self.ignore_index = ignore_index
        self.change_class = change_class
        self.counts = torch.zeros(2, bins, dtype=torch.float64)  # rows: unchanged, changed

    def update(self, change_proba: Tensor | np.ndarray, target: Tensor | np.ndarray) -> None:
        """Add pixels: ``change_proba`` P(any change) and ``target`` class ids, same shape."""
        p = torch.as_tensor(change_proba).detach().float().flatten()
        t = torch.as_tensor(target).detach().flatten().to(p.device)
        if p.shape != t.shape:
            raise ValueError(f"probabilities {tuple(p.shape)} and targets {tuple(t.shape)} differ in size")
        valid = t != self.ignore_index
        p, t = p[valid], t[valid]
        # A multi-class target counts every non-zero class as change (P(any change)).
        changed = (t != 0).long() if self.change_class == 1 else (t == self.change_class).long()
        index = (p.clamp(0, 1) * self.bins).long().clamp_(max=self.bins - 1)
        flat = torch.bincount(changed * self.bins + index, minlength=2 * self.bins)
        self.counts += flat.view(2, self.bins).to(self.counts)

    def merge(self, other: "ThresholdCurve") -> None:
        if other.bins != self.bins:
            raise ValueError("cannot merge curves with different bin counts")
        self.counts += other.counts

    def all_reduce_(self, device: torch.device | None = None) -> "ThresholdCurve":
        """Sum the counts over all ranks in place (one collective); no-op without DDP."""
        self.counts = all_reduce_sum(self.counts.to(device or self.counts.device)).cpu()
        return self

    @property
    def positives(self) -> int:
        return int(self.counts[1].sum())

    @property
    def negatives(self) -> int:
        return int(self.counts[0].sum())

    def thresholds(self) -> np.ndarray:
        return np.arange(self.bins) / self.bins

    def rates(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(tp, fp, fn) per candidate threshold ``k / bins`` (pixels with P >= threshold are change)."""
        neg, pos = (np.cumsum(row[::-1])[::-1] for row in self.counts.numpy())
        return pos, neg, self.positives - pos

    def pr_curve(self) -> dict[str, list[float]]:
        """Precision and recall per threshold (precision 1 where nothing is called change)."""
        tp, fp, fn = self.rates()
        called = tp + fp
        precision = np.where(called > 0, tp / np.maximum(called, 1), 1.0)
        recall = tp / max(self.positives, 1)
        return {"threshold": self.thresholds().tolist(), "precision": precision.tolist(), "recall": recall.tolist()}

    def f1(self) -> np.ndarray:
        tp, fp, fn = self.rates()
        return np.where(tp > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 0.0)

    def f1_at(self, threshold: float) -> float:
        k = min(self.bins - 1, max(0, int(np.ceil(threshold * self.bins - 1e-9))))
        return float(self.f1()[k])

    def average_precision(self) -> float:
        """Step-wise area under the precision-recall curve (sklearn's definition, binned)."""
        curve = self.pr_curve()
        precision, recall = np.asarray(curve["precision"]), np.asarray(curve["recall"])
        # Thresholds descend from the last bin: recall grows, each step weighted by precision.
        recall_desc, precision_desc = recall[::-1], precision[::-1]
        steps = np.diff(np.concatenate([[0.0], recall_desc]))
        return float((steps * precision_desc).sum())

    def best_threshold(self) -> tuple[float, float]:
        """(threshold, F1) maximising F1; ties go to the threshold nearest 0.5."""
        f1 = self.f1()
        candidates = np.flatnonzero(f1 >= f1.max() - 1e-12)
        k = candidates[np.argmin(np.abs(candidates / self.bins - DEFAULT_THRESHOLD))]
        return float(k / self.bins), float(f1[k])


def choose_operating_point(
    curve: ThresholdCurve,
    *,
    target_precision: float | None = None,
    target_recall: float | None = None,
    min_pixels: int = MIN_CALIBRATION_PIXELS,
) -> dict[str, Any]:
    """The threshold to store with a model, and why.

    Best F1 by default; with ``target_precision`` the threshold of highest recall whose
    precision meets it (``target_recall``: highest precision meeting the recall).
    Too few labelled pixels of either class: 0.5, with ``reason`` saying so.
    """
    point: dict[str, Any] = {"positives": curve.positives, "negatives": curve.negatives, "bins": curve.bins}
    if min(curve.positives, curve.negatives) < min_pixels:
        return {
            **point,
            "threshold": DEFAULT_THRESHOLD,
            "method": "default",
            "reason": f"too few validation pixels to calibrate ({curve.positives} changed, "
            f"{curve.negatives} unchanged; {min_pixels} of each needed): kept {DEFAULT_THRESHOLD}",
        }
    tp, fp, fn = curve.rates()
    curve_pr = curve.pr_curve()
    precision, recall = np.asarray(curve_pr["precision"]), np.asarray(curve_pr["recall"])
    f1 = curve.f1()
    if target_precision is not None or target_recall is not None:
        ok = precision >= target_precision if target_precision is not None else recall >= target_recall
        ok &= tp > 0
        if ok.any():
            score = recall if target_precision is not None else precision
            k = int(np.flatnonzero(ok)[np.argmax(score[ok])])
            method = (
                f"target_precision {target_precision}"
                if target_precision is not None
                else f"target_recall {target_recall}"
            )
            return {
                **point,
                "threshold": float(k / curve.bins),
                "method": method,
                "f1": float(f1[k]),
                "precision": float(precision[k]),
                "recall": float(recall[k]),
            }
        point["reason"] = "no threshold meets the target on the validation pixels: best F1 instead"
    threshold, best = curve.best_threshold()
    k = int(round(threshold * curve.bins))
    return {
        **point,
        "threshold": threshold,
        "method": "best_f1",
        "f1": best,
        "precision": float(precision[k]),
        "recall": float(recall[k]),
        "f1_at_0.5": curve.f1_at(DEFAULT_THRESHOLD),
    }


def threshold_of(metadata: dict[str, Any] | None) -> float | None:
    """The stored threshold of a checkpoint's ``model.json`` metadata, if any."""
    point = (metadata or {}).get("operating_point") or {}
    value = point.get("threshold")
    return float(value) if value is not None else None
