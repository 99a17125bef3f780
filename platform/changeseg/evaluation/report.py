"""The evaluation report: a model against classical and learned baselines on real pairs.

For every pair with a mask, each method predicts twice, once with (t0, t1) and once
with the two swapped. The report holds:

* per method, global (pixel-pooled) and per-image-mean precision, recall, F1 and IoU of
  the change class, on exactly the same pairs;
* temporal-order consistency: how often the prediction on the swapped pair agrees with
  the original (class ``c`` mapped through ``swap_class_map``, identity for binary
  change), and, for MTF models, how far ``appear(t0, t1)`` is from ``disappear(t1, t0)``;
* a per-pair table, overlays (t0, t1, prediction, truth, errors), the baselines' error
  maps and the MTF branch maps, written as PNGs beside ``report.html`` and ``report.json``.

This module runs the evaluation; the methods live in :mod:`.methods`, the per-pair
scoring in :mod:`.scoring` and the files in :mod:`.render`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from changeseg.data.pairs import load_pair
from changeseg.data.pipeline import load_options
from changeseg.evaluation.methods import Method, cva_method, load_methods, model_method
from changeseg.evaluation.render import draw_pair, write_report
from changeseg.evaluation.scoring import (
    EvaluationResult,
    MethodScore,
    PairFailed,
    branch_symmetry,
    central_window,
    pair_counts,
    predict_pair,
    swap_consistency,
)
from changeseg.inference.input_records import load_input_records
from changeseg.progress import Progress

__all__ = [
    "Method",
    "EvaluationResult",
    "model_method",
    "cva_method",
    "pair_counts",
    "swap_consistency",
    "branch_symmetry",
    "evaluate_pairs",
    "write_report",
    "evaluate",
]


def evaluate_pairs(
    records: Sequence[Any],
    methods: Sequence[Method],
    *,
    load_options: dict[str, Any] | None = None,
    output_dir: str | Path | None = None,
    num_classes: int = 2,
    change_class: int = 1,
    ignore_index: int = 255,
    swap_class_map: Sequence[int] | None = None,
    max_panels: int = 16,
    branch_window: int = 512,
    progress: Callable[[str], None] | None = print,
    progress_seconds: float = 10.0,
) -> EvaluationResult:
    """Score every method on every pair with a mask, in both temporal orders.

    ``records``: :class:`~changeseg.data.records.PairRecord` objects (or rows). The
    first method is the one under test: its overlays and branch maps are drawn for the
    first ``max_panels`` pairs when ``output_dir`` is given. Pairs that cannot be read
    are listed in ``skipped`` with the reason, not fatal. Branch maps and the
    appear/disappear check use the central ``branch_window`` pixels of larger pairs.
    """
    if not methods:
        raise ValueError("evaluate_pairs needs at least one method")
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise ValueError(f"method names must be unique, got {names}")
    images_dir = None
    if output_dir is not None:
        images_dir = Path(output_dir) / "images"
        images_dir.mkdir(parents=True, exist_ok=True)
    options = dict(load_options or {})
    options.setdefault("num_classes", num_classes)
    options.setdefault("ignore_index", ignore_index)
    scores = [
        MethodScore(m, num_classes=num_classes, ignore_index=ignore_index, change_class=change_class) for m in methods
    ]
    rows: list[dict[str, Any]] = []
    skipped: list[tuple[str, str]] = []
    clock = Progress(progress_seconds)
    for index, record in enumerate(records):
        row_in = record.to_row() if hasattr(record, "to_row") else dict(record)
        pid = row_in["pair_id"]
        try:
            sample = load_pair(row_in, **options)
        except (OSError, ValueError) as err:
            skipped.append((pid, str(err)))
            continue
        if "mask" not in sample:
            skipped.append((pid, "no mask"))
            continue
        try:
            row, predictions = _score_pair(
                pid, sample, scores, change_class=change_class, ignore_index=ignore_index, swap_class_map=swap_class_map
            )
        except PairFailed as err:
            skipped.append((pid, str(err)))
            continue
        if len(rows) < max_panels:
            _illustrate(row, sample, predictions, methods[0], images_dir=images_dir, branch_window=branch_window)
        rows.append(row)
        if progress is not None and clock.due(final=index == len(records) - 1):
            done = index + 1
            progress(
                f"evaluated {done}/{len(records)} pairs, {clock.elapsed:.0f} s, about {clock.eta(done, len(records)):.0f} s left"
            )
    return _result(
        scores,
        rows,
        skipped,
        num_classes=num_classes,
        change_class=change_class,
        swap_class_map=swap_class_map,
        started=clock.started,
    )


def _score_pair(
    pid: str,
    sample: dict[str, np.ndarray],
    scores: Sequence[MethodScore],
    *,
    change_class: int,
    ignore_index: int,
    swap_class_map: Sequence[int] | None,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The pair's row of the table and each method's class map; :class:`PairFailed` when one raised."""
    t0, t1, truth = sample["t0"], sample["t1"], sample["mask"]
    row: dict[str, Any] = {
        "pair_id": pid,
        "height": int(t0.shape[0]),
        "width": int(t0.shape[1]),
        "change_fraction": float((truth == change_class).sum() / max(1, int((truth != ignore_index).sum()))),
        "methods": {},
    }
    outputs = predict_pair(scores, t0, t1, truth)
    predictions: dict[str, np.ndarray] = {}
    for score in scores:
        name = score.method.name
        pred, pred_swapped = outputs[name]
        row["methods"][name] = score.add(pred, pred_swapped, truth, swap_class_map)
        predictions[name] = pred
    return row, predictions


def _illustrate(
    row: dict[str, Any],
    sample: dict[str, np.ndarray],
    predictions: dict[str, np.ndarray],
    main: Method,
    *,
    images_dir: Path | None,
    branch_window: int,
) -> None:
    """Panels and the appear/disappear check of the method under test, added to ``row``."""
    t0, t1, truth = sample["t0"], sample["t1"], sample["mask"]
    # Branch maps run the model untiled: large pairs show their central window.
    w0, w1 = central_window(t0, branch_window), central_window(t1, branch_window)
    if images_dir is not None:
        row["images"] = draw_pair(images_dir, row["pair_id"], t0, t1, truth, predictions, main, branch_pair=(w0, w1))
    if main.model is not None:
        symmetry = branch_symmetry(main.predictor or main.model, w0, w1)
        if symmetry is not None:
            row["branch_asymmetry"] = symmetry


def _result(
    scores: Sequence[MethodScore],
    rows: list[dict[str, Any]],
    skipped: list[tuple[str, str]],
    *,
    num_classes: int,
    change_class: int,
    swap_class_map: Sequence[int] | None,
    started: float,
) -> EvaluationResult:
    summaries = [s.summary(rows) for s in scores]
    asym = [max(r["branch_asymmetry"]) for r in rows if "branch_asymmetry" in r]
    info = {
        "pairs": len(rows),
        "skipped": len(skipped),
        "num_classes": num_classes,
        "change_class": change_class,
        "swap_class_map": list(swap_class_map) if swap_class_map is not None else None,
        "branch_asymmetry_max": max(asym) if asym else None,
        "seconds": time.perf_counter() - started,
    }
    return EvaluationResult(
        methods=summaries, pairs=rows, skipped=skipped, info=info, metrics={s.method.name: s.metrics for s in scores}
    )


def evaluate(
    cfg: Any,
    *,
    model_uri: str,
    input_uri: str,
    output_dir: str | Path,
    baseline_uris: Sequence[str] = (),
    split: str | None = None,
    max_panels: int = 16,
    progress: Callable[[str], None] | None = print,
) -> tuple[EvaluationResult, Path, Path]:
    """Load the model (any URI :class:`~changeseg.inference.predictor.Predictor` takes) and
    the learned baselines, read the dataset, and write the report to ``output_dir``.

    CVA + Otsu is always included for binary models. Baselines are named after their
    architecture (``fc_siam_diff``), with a numeric suffix when two share one.
    """
    main, methods, num_classes = load_methods(cfg, model_uri, baseline_uris)
    records, problems = load_input_records(input_uri, cfg, split=split)
    if not records:
        raise ValueError(f"{input_uri}: no pairs" + (f" in split '{split}'" if split else ""))
    options = load_options(cfg)
    options["num_classes"] = num_classes
    result = evaluate_pairs(
        records,
        methods,
        load_options=options,
        output_dir=output_dir,
        num_classes=num_classes,
        ignore_index=cfg.data.ignore_index,
        swap_class_map=cfg.data.swap_class_map,
        max_panels=max_panels,
        branch_window=cfg.score.tile_size,
        progress=progress,
        progress_seconds=cfg.score.progress_seconds,
    )
    result.skipped = list(problems) + result.skipped
    if not result.pairs:
        reasons = "; ".join(f"{p}: {r}" for p, r in result.skipped[:3])
        raise ValueError(f"{input_uri}: none of {len(records)} pairs could be evaluated ({reasons})")
    result.info.update(
        model=model_uri,
        model_info={k: v for k, v in main.info.items() if k in ("name", "version", "run_id", "uri")},
        threshold=main.threshold,
        operating_point=(main.info.get("metadata") or {}).get("operating_point"),
        dataset=input_uri,
        split=split,
        baselines=list(baseline_uris),
        skipped=len(result.skipped),
    )
    html_path, json_path = write_report(result, output_dir, title=f"Change detection: {model_uri} on {input_uri}")
    return result, html_path, json_path
