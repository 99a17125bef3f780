"""The methods an evaluation compares: a network, learned baselines and CVA + Otsu.

A method is a callable ``(t0, t1) -> class map``; :func:`model_method` wraps a network
(tiled over large pairs) and :func:`cva_method` the no-learning baseline.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from changeseg.evaluation.classical import cva_otsu
from changeseg.inference.predictor import Predictor, score_options
from changeseg.models.contract import ChangeModel

__all__ = ["Method", "model_method", "cva_method", "load_methods"]


@dataclass
class Method:
    """One way to predict change: ``predict(t0, t1)`` maps uint8 ``(H, W, 3)`` images to a
    ``(H, W)`` class map. ``model`` is the network behind it, when there is one."""

    name: str
    predict: Callable[[np.ndarray, np.ndarray], np.ndarray]
    model: nn.Module | None = None
    description: str = ""
    predictor: Any = None  # the Predictor behind a network method
    # Binary networks: P(change) (H, W) and the cut ``predict`` applies, for the PR curve.
    change_proba: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None
    threshold: float | None = None


def model_method(
    name: str,
    model: "nn.Module | Predictor",
    *,
    tile_size: int = 512,
    tile_overlap: int = 64,
    description: str = "",
) -> Method:
    """A network as a :class:`Method` through the inference core: argmax of the class
    probabilities, pairs larger than ``tile_size`` predicted in overlapping windows (see
    :mod:`changeseg.inference.tiling`). A :class:`Predictor` is used with its own settings."""
    if isinstance(model, Predictor):
        predictor = model
    else:
        predictor = Predictor(
            model, device=next(model.parameters()).device, tile_size=tile_size, tile_overlap=tile_overlap
        )

    def predict(t0: np.ndarray, t1: np.ndarray) -> np.ndarray:
        return predictor.predict(t0, t1)[0]

    change_proba = None
    if predictor.threshold is not None:  # binary: P(change), cut at the predictor's threshold

        def change_proba(t0: np.ndarray, t1: np.ndarray) -> np.ndarray:
            return predictor.predict_proba(t0, t1)[0, 1]

    return Method(
        name=name,
        predict=predict,
        model=predictor.model,
        description=description,
        predictor=predictor,
        change_proba=change_proba,
        threshold=predictor.threshold,
    )


def cva_method() -> Method:
    return Method(
        name="cva_otsu",
        predict=cva_otsu,
        description="change vector analysis, Otsu threshold (no learning)",
    )


def load_methods(cfg: Any, model_uri: str, baseline_uris: Sequence[str]) -> tuple[Any, list[Method], int]:
    """The model under test (any URI :class:`~changeseg.inference.predictor.Predictor`
    takes), the learned baselines and, for binary models, CVA + Otsu; with the class count.

    Baselines are named after their architecture (``fc_siam_diff``), with a numeric suffix
    when two share one; a baseline with another class count than the model is refused.
    """
    tracking_uri = cfg.resolved_tracking_uri()

    def load(uri: str) -> Predictor:
        score = cfg.score
        return Predictor.from_uri(
            uri,
            tracking_uri=tracking_uri,
            storage_options=cfg.storage,
            device=_score_device(score),
            **score_options(score),
        )

    main = load(model_uri)
    num_classes = main.num_classes
    methods = [_method_for(main, fallback="model")]
    for uri in baseline_uris:
        baseline = load(uri)
        classes = baseline.num_classes
        if classes != num_classes:
            raise ValueError(f"baseline {uri} predicts {classes} classes, the model {model_uri} {num_classes}")
        method = _method_for(baseline, fallback="baseline")
        taken = {m.name for m in methods}
        base, k = method.name, 2
        while method.name in taken:
            method.name, k = f"{base}_{k}", k + 1
        methods.append(method)
    if num_classes == 2:
        methods.append(cva_method())
    return main, methods, num_classes


def _method_for(predictor: Any, *, fallback: str) -> Method:
    model = predictor.model
    if not isinstance(model, ChangeModel):
        return model_method(fallback, predictor, description=fallback)
    return model_method(str(model.config.get("name") or fallback), predictor, description=model.describe())


def _score_device(score: Any) -> str:
    """CUDA when ``score.num_gpus`` asks for it and one is there, else the CPU."""
    return "cuda" if score.num_gpus > 0 and torch.cuda.is_available() else "cpu"
