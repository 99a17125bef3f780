"""The operating point after training: chosen on validation pairs, stored in ``model.json``.

Both trainers collect a :class:`~changeseg.thresholds.ThresholdCurve` in the engine's
``validate`` and call :func:`operating_point_for`; the threshold then travels with the
checkpoint (``metadata.operating_point``), so every consumer of the checkpoint (the
Predictor, batch scoring, serving, evaluation) cuts at the same place.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from changeseg.config import Config
from changeseg.models.weights import META_FILE
from changeseg.thresholds import ThresholdCurve, choose_operating_point

__all__ = ["curve_for", "operating_point_for", "operating_point_metrics", "store_operating_point"]

log = logging.getLogger(__name__)


def curve_for(cfg: Config) -> ThresholdCurve | None:
    """A fresh curve for a binary model; None for multi-class models (they keep argmax)."""
    if cfg.model.resolved_num_classes() != 2:
        return None
    return ThresholdCurve(ignore_index=cfg.data.ignore_index)


def operating_point_for(cfg: Config, curve: ThresholdCurve | None) -> dict[str, Any] | None:
    """The threshold ``cfg.train`` asks for (best F1, or a target precision/recall)."""
    if curve is None:
        return None
    point = choose_operating_point(
        curve, target_precision=cfg.train.target_precision, target_recall=cfg.train.target_recall
    )
    if point.get("reason"):
        log.warning("operating point: %s", point["reason"])
    return point


def operating_point_metrics(point: dict[str, Any] | None) -> dict[str, float]:
    """The numbers of a point as run metrics (MLflow)."""
    if point is None:
        return {}
    out = {"val_threshold": float(point["threshold"])}
    for key in ("f1", "precision", "recall"):
        if key in point:
            out[f"val_{key}_at_threshold"] = float(point[key])
    return out


def store_operating_point(directory: str | Path, point: dict[str, Any] | None) -> None:
    """Write ``point`` into the checkpoint's ``model.json`` metadata."""
    if point is None:
        return
    path = Path(directory) / META_FILE
    meta = json.loads(path.read_text())
    meta.setdefault("metadata", {})["operating_point"] = point
    path.write_text(json.dumps(meta, indent=2, sort_keys=True))
