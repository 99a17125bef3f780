"""Per-pair scoring: each method keeps one mergeable ChangeMetrics per temporal order.

Global and per-image scores come from :class:`~changeseg.metrics.ChangeMetrics` state, so
results over several folds pool by merging that state (:func:`pooled`), never by
recomputing ratios from per-pair counts. The per-pair table keeps its own counts and
ratios for the report.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from changeseg.evaluation.curves import curve_summary
from changeseg.evaluation.methods import Method
from changeseg.inference.predictor import Predictor
from changeseg.metrics import ChangeMetrics
from changeseg.models.contract import supports_branches
from changeseg.thresholds import ThresholdCurve

__all__ = [
    "EvaluationResult",
    "MethodScore",
    "PairFailed",
    "branch_symmetry",
    "central_window",
    "pair_counts",
    "pooled",
    "predict_pair",
    "swap_consistency",
]

_EPS = 1e-7


def pair_counts(
    pred: np.ndarray, truth: np.ndarray, *, change_class: int = 1, ignore_index: int = 255
) -> dict[str, float]:
    """TP/FP/FN of the change class on one pair and the ratios; an empty denominator gives 0."""
    valid = truth != ignore_index
    p = (pred == change_class) & valid
    t = (truth == change_class) & valid
    tp, fp, fn = int((p & t).sum()), int((p & ~t).sum()), int((~p & t).sum())
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
        # The same eps convention as ChangeMetrics' per-image scores.
        "f1": 2 * tp / (2 * tp + fp + fn + _EPS),
        "iou": tp / (tp + fp + fn + _EPS),
    }


def swap_consistency(
    pred: np.ndarray, pred_swapped: np.ndarray, class_map: Sequence[int] | None = None
) -> dict[str, float]:
    """How far the prediction on (t1, t0) is from the one on (t0, t1).

    ``agreement``: fraction of pixels where ``pred_swapped == class_map[pred]`` (identity
    map by default: binary change does not depend on the order). ``change_iou``: IoU of
    the two "any change" (non-zero) masks, 1.0 when both are empty.
    """
    if pred.shape != pred_swapped.shape:
        raise ValueError(f"predictions differ in shape: {pred.shape} vs {pred_swapped.shape}")
    expected = pred
    if class_map is not None:
        lut = np.arange(256, dtype=np.uint8)
        lut[: len(class_map)] = class_map
        expected = lut[pred]
    a, b = pred != 0, pred_swapped != 0
    union = int((a | b).sum())
    return {
        "agreement": float((expected == pred_swapped).mean()),
        "change_iou": float((a & b).sum()) / union if union else 1.0,
    }


def branch_symmetry(model: "nn.Module | Predictor", t0: np.ndarray, t1: np.ndarray) -> list[float] | None:
    """Per fused scale, ``||appear(t0, t1) - disappear(t1, t0)|| / ||appear(t0, t1)||``.

    0 means appear and disappear trade places exactly when the images are swapped (MTF
    modes with one shared appear/disappear conv do by construction). None when the model
    has no appear and disappear branches.
    """
    predictor_model = model.model if isinstance(model, Predictor) else model
    if not supports_branches(predictor_model):
        return None
    predictor = model if isinstance(model, Predictor) else Predictor(model, device=next(model.parameters()).device)
    _, forward = predictor.forward_with_branches(t0, t1)
    _, backward = predictor.forward_with_branches(t1, t0)
    out = []
    for fwd, bwd in zip(forward, backward):
        if "appear" not in fwd or "disappear" not in bwd:
            return None
        norm = float(fwd["appear"].norm())
        out.append(float((fwd["appear"] - bwd["disappear"]).norm()) / norm if norm else 0.0)
    return out


def central_window(image: np.ndarray, size: int) -> np.ndarray:
    h, w = image.shape[:2]
    y, x = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return image[y : y + size, x : x + size]


@dataclass
class EvaluationResult:
    """What :func:`~changeseg.evaluation.report.evaluate_pairs` measured; ``to_json`` is
    the report's JSON file. ``metrics``: each method's accumulator, for :func:`pooled`."""

    methods: list[dict[str, Any]]
    pairs: list[dict[str, Any]]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, ChangeMetrics] = field(default_factory=dict, repr=False)

    def method(self, name: str) -> dict[str, Any]:
        for m in self.methods:
            if m["name"] == name:
                return m
        raise KeyError(name)

    def to_json(self) -> dict[str, Any]:
        return {
            "info": self.info,
            "methods": self.methods,
            "pairs": self.pairs,
            "skipped": [list(s) for s in self.skipped],
        }


class PairFailed(Exception):
    """A method raised on a pair: every method must score the same pairs, so it is left out."""


def _as_tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array.astype(np.int64))


class MethodScore:
    """One method's running scores: ChangeMetrics for (t0, t1) and for (t1, t0), the PR
    curve of a binary network, and the time spent predicting."""

    def __init__(self, method: Method, *, num_classes: int, ignore_index: int, change_class: int) -> None:
        self.method = method
        self.change_class = change_class
        self.ignore_index = ignore_index
        options = {"num_classes": num_classes, "ignore_index": ignore_index, "change_class": change_class}
        self.metrics = ChangeMetrics(**options)
        self.swapped = ChangeMetrics(**options)
        self.curve = ThresholdCurve(ignore_index=ignore_index) if method.change_proba is not None else None
        self.seconds = 0.0

    def predict(self, t0: np.ndarray, t1: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Class maps for (t0, t1) and (t1, t0); with probabilities, the first is cut at the
        method's threshold and its probabilities added to the curve."""
        tick = time.perf_counter()
        method = self.method
        if self.curve is None or method.change_proba is None:
            pred = method.predict(t0, t1)
        else:
            proba = method.change_proba(t0, t1)
            self.curve.update(proba, truth)
            pred = (proba >= method.threshold).astype(np.uint8)
        out = (pred, method.predict(t1, t0))
        self.seconds += time.perf_counter() - tick
        return out

    def add(
        self, pred: np.ndarray, pred_swapped: np.ndarray, truth: np.ndarray, swap_class_map: Sequence[int] | None
    ) -> dict[str, Any]:
        """Count one pair in both accumulators; its entry of the per-pair table."""
        self.metrics.update(_as_tensor(pred), _as_tensor(truth))
        self.swapped.update(_as_tensor(pred_swapped), _as_tensor(truth))
        entry: dict[str, Any] = pair_counts(pred, truth, change_class=self.change_class, ignore_index=self.ignore_index)
        entry["swap"] = swap_consistency(pred, pred_swapped, swap_class_map)
        entry["predicted_fraction"] = float((pred == self.change_class).mean())
        return entry

    def summary(self, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """The method's line of the report over the scored ``rows``."""
        name = self.method.name
        glob = self.metrics.compute()
        per_pair = [r["methods"][name] for r in rows]

        def mean(key: str) -> float:
            return float(np.mean([p[key] for p in per_pair])) if per_pair else 0.0

        summary = {
            "name": name,
            "description": self.method.description,
            "global_precision": glob["global_precision"],
            "global_recall": glob["global_recall"],
            "global_f1": glob["global_f1"],
            "global_iou": glob["global_iou"],
            "per_image_precision_mean": mean("precision"),
            "per_image_recall_mean": mean("recall"),
            "per_image_f1_mean": glob["per_image_f1_mean"],
            "per_image_iou_mean": glob["per_image_iou_mean"],
            "overall_accuracy": glob["overall_accuracy"],
            "kappa": glob["kappa"],
            "swapped_global_f1": self.swapped.compute()["global_f1"],
            "swap_agreement_mean": float(np.mean([p["swap"]["agreement"] for p in per_pair])) if per_pair else 0.0,
            "swap_change_iou_mean": float(np.mean([p["swap"]["change_iou"] for p in per_pair])) if per_pair else 0.0,
            "seconds_per_pair": self.seconds / max(1, len(rows)) / 2,
            "pairs": len(rows),
        }
        if self.curve is not None:
            summary["curve"] = curve_summary(self.curve, threshold=self.method.threshold)
        return summary


def predict_pair(
    scores: Sequence[MethodScore], t0: np.ndarray, t1: np.ndarray, truth: np.ndarray
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every method's predictions in both orders; :class:`PairFailed` names the one that raised."""
    outputs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for score in scores:
        try:
            outputs[score.method.name] = score.predict(t0, t1, truth)
        except Exception as err:
            raise PairFailed(f"{score.method.name} failed: {type(err).__name__}: {err}") from err
    return outputs


def pooled(results: Sequence[EvaluationResult], name: str) -> dict[str, float]:
    """Method ``name``'s global and per-image scores over several results (folds), from
    their merged ChangeMetrics state; the swap agreement averaged over all their pairs."""
    merged: ChangeMetrics | None = None
    for result in results:
        metrics = result.metrics[name]
        if merged is None:
            merged = ChangeMetrics(
                num_classes=metrics.num_classes, ignore_index=metrics.ignore_index, change_class=metrics.change_class
            )
        merged.merge(metrics)
    glob = merged.compute() if merged is not None else ChangeMetrics().compute()
    rows = [row for result in results for row in result.pairs]
    return {
        **{
            key: glob[key]
            for key in ("global_precision", "global_recall", "global_f1", "global_iou", "per_image_f1_mean")
        },
        "swap_agreement_mean": sum(r["methods"][name]["swap"]["agreement"] for r in rows) / max(1, len(rows)),
    }
