"""Change-detection metrics, accumulated over batches and reducible across DDP ranks.

Two protocols coexist in the literature, so every name says which one it uses:

* ``global_*`` and ``overall_accuracy``, ``kappa``, ``mean_iou``: computed once from a
  single confusion matrix summed over *all* valid pixels of *all* images (pixel-weighted;
  large images and images with much change dominate). ``global_precision``,
  ``global_recall``, ``global_f1`` and ``global_iou`` are binary: ``change_class`` versus
  every other class. ``kappa`` is Cohen's kappa and ``overall_accuracy`` the trace ratio,
  both over the full ``num_classes`` matrix. ``mean_iou`` is the unweighted mean of the
  per-class IoUs over classes present in the truth or the prediction (ChangeSim protocol).
* ``per_image_*``: binary F1 / IoU of ``change_class`` computed for each image on its own
  (eps 1e-7 in the denominator) and then averaged with equal weight per image (C-3PO's
  protocol for VL-CMU-CD and PCD). An image with no change in the truth has TP = 0 and so
  scores 0 whatever is predicted, as in the authors' evaluation; every image passed to
  ``update`` counts, even one whose pixels are all ``ignore_index``.

Ratios whose denominator is zero are defined as 0.0, so ``compute`` never returns NaN.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from changeseg.devices import all_reduce_sum

__all__ = ["ChangeMetrics", "all_reduce_"]

_EPS = 1e-7
_EXTRA = 3  # per_image_f1_sum, per_image_iou_sum, image_count


def _ratio(num: float, den: float) -> float:
    return num / den if den != 0 else 0.0


class ChangeMetrics:
    """Accumulates a confusion matrix and per-image change F1/IoU; see the module docstring."""

    def __init__(self, *, num_classes: int = 2, ignore_index: int = 255, change_class: int = 1) -> None:
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if not 0 <= change_class < num_classes:
            raise ValueError(f"change_class {change_class} outside [0, {num_classes})")
        if 0 <= ignore_index < num_classes:
            raise ValueError(f"ignore_index {ignore_index} collides with a class index")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.change_class = change_class
        self.reset()

    def reset(self) -> None:
        device = getattr(self, "_confusion", torch.empty(0)).device
        self._confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64, device=device)
        # [f1_sum, iou_sum, image_count]; float64 keeps integer counts exact up to 2**53.
        self._per_image = torch.zeros(_EXTRA, dtype=torch.float64, device=device)

    @property
    def confusion_matrix(self) -> Tensor:
        """(num_classes, num_classes) int64; rows = truth, columns = prediction."""
        return self._confusion.clone()

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add a batch: ``pred`` and ``target`` are (N, H, W) (or (H, W)) integer class maps."""
        if pred.is_floating_point() or target.is_floating_point():
            raise TypeError("pred and target must be integer class indices (take argmax of logits first)")
        if pred.shape != target.shape:
            raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
        if pred.dim() == 2:
            pred, target = pred.unsqueeze(0), target.unsqueeze(0)
        if pred.dim() != 3:
            raise ValueError(f"expected (N, H, W) tensors, got {pred.dim()} dims")
        target = target.to(pred.device)
        if self._confusion.device != pred.device:
            self._confusion = self._confusion.to(pred.device)
            self._per_image = self._per_image.to(pred.device)

        pred, target = pred.long(), target.long()
        valid = target != self.ignore_index
        k = self.num_classes
        t_valid, p_valid = target[valid], pred[valid]
        # Out-of-range labels would silently land in the wrong bincount cell.
        if t_valid.numel() and (t_valid.min() < 0 or t_valid.max() >= k):
            raise ValueError(f"target holds values outside [0, {k}) other than ignore_index")
        if p_valid.numel() and (p_valid.min() < 0 or p_valid.max() >= k):
            raise ValueError(f"pred holds values outside [0, {k})")
        self._confusion += torch.bincount(t_valid * k + p_valid, minlength=k * k).view(k, k)

        c = self.change_class
        p_change = (pred == c) & valid
        t_change = (target == c) & valid
        dims = (1, 2)
        tp = (p_change & t_change).sum(dims, dtype=torch.float64)
        fp = (p_change & ~t_change).sum(dims, dtype=torch.float64)
        fn = (~p_change & t_change).sum(dims, dtype=torch.float64)
        f1 = 2 * tp / (2 * tp + fp + fn + _EPS)
        iou = tp / (tp + fp + fn + _EPS)
        self._per_image += torch.stack([f1.sum(), iou.sum(), f1.new_tensor(float(pred.shape[0]))])

    # -- state for distributed reduction -------------------------------------------------

    def state(self) -> Tensor:
        """Flat float64 tensor: confusion matrix (row-major), then f1 sum, IoU sum, image count.

        Every entry is a sum, so ``all_reduce(SUM)`` of the states of several workers is the
        state of one accumulator that saw all of their data.
        """
        return torch.cat([self._confusion.flatten().to(torch.float64), self._per_image])

    def load_state(self, t: Tensor) -> None:
        k = self.num_classes
        if t.dim() != 1 or t.numel() != k * k + _EXTRA:
            raise ValueError(f"state must be a flat tensor of {k * k + _EXTRA} values for {k} classes")
        t = t.to(torch.float64)
        self._confusion = t[: k * k].round().to(torch.int64).view(k, k).clone()
        self._per_image = t[k * k :].clone()

    @classmethod
    def from_state(
        cls,
        t: Tensor,
        *,
        num_classes: int | None = None,
        ignore_index: int = 255,
        change_class: int = 1,
    ) -> ChangeMetrics:
        """Rebuild an accumulator; ``num_classes`` is inferred from the length when omitted."""
        if num_classes is None:
            num_classes = math.isqrt(max(t.numel() - _EXTRA, 0))
        m = cls(num_classes=num_classes, ignore_index=ignore_index, change_class=change_class)
        m.load_state(t)
        return m

    def merge(self, other: ChangeMetrics) -> None:
        """Add ``other``'s counts into this accumulator."""
        if (other.num_classes, other.change_class) != (self.num_classes, self.change_class):
            raise ValueError("cannot merge metrics with different num_classes or change_class")
        self._confusion += other._confusion.to(self._confusion.device)
        self._per_image += other._per_image.to(self._per_image.device)

    # -- results ------------------------------------------------------------------------

    def class_iou(self) -> dict[int, float]:
        """IoU per class from the global confusion matrix, for classes in truth or prediction."""
        cm = self._confusion.to(torch.float64).cpu()
        inter = cm.diag()
        union = cm.sum(0) + cm.sum(1) - inter
        return {k: float(inter[k] / union[k]) for k in range(self.num_classes) if union[k] > 0}

    def compute(self) -> dict[str, float]:
        cm = self._confusion.to(torch.float64).cpu()
        n = float(cm.sum())
        c = self.change_class
        tp = float(cm[c, c])
        fp = float(cm[:, c].sum()) - tp
        fn = float(cm[c, :].sum()) - tp

        po = _ratio(float(cm.diag().sum()), n)
        pe = _ratio(float((cm.sum(0) * cm.sum(1)).sum()), n * n)
        ious = self.class_iou()
        f1_sum, iou_sum, images = (float(v) for v in self._per_image.cpu())
        return {
            "global_precision": _ratio(tp, tp + fp),
            "global_recall": _ratio(tp, tp + fn),
            "global_f1": _ratio(2 * tp, 2 * tp + fp + fn),
            "global_iou": _ratio(tp, tp + fp + fn),
            "overall_accuracy": po,
            "kappa": _ratio(po - pe, 1.0 - pe),
            "mean_iou": _ratio(sum(ious.values()), len(ious)),
            "per_image_f1_mean": _ratio(f1_sum, images),
            "per_image_iou_mean": _ratio(iou_sum, images),
            "num_images": images,
            "num_pixels": n,
        }


def all_reduce_(metrics: ChangeMetrics) -> ChangeMetrics:
    """Sum ``metrics``' state over all ranks in place (one collective); no-op without DDP."""
    metrics.load_state(all_reduce_sum(metrics.state()))
    return metrics
