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

Methods are callables ``(t0, t1) -> class map``; :func:`model_method` wraps a network
(tiled over large pairs) and :func:`cva_method` the no-learning baseline.
"""

from __future__ import annotations

import html
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from changeseg.data.decode import load_pair
from changeseg.evaluation.classical import cva_otsu
from changeseg.evaluation.curves import curve_summary, pr_curves_html
from changeseg.metrics import ChangeMetrics
from changeseg.thresholds import ThresholdCurve

if TYPE_CHECKING:
    from changeseg.inference.predictor import Predictor

__all__ = ["Method", "model_method", "cva_method", "pair_counts", "swap_consistency", "evaluate_pairs", "write_report"]

_EPS = 1e-7
# Panels wider than this are shrunk for the page (PNG files stay full size below it).
MAX_PANEL_WIDTH = 1600


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
    from changeseg.inference.predictor import Predictor

    if isinstance(model, Predictor):
        predictor = model
    else:
        predictor = Predictor(model, device=next(model.parameters()).device, tile_size=tile_size, tile_overlap=tile_overlap)

    def predict(t0: np.ndarray, t1: np.ndarray) -> np.ndarray:
        return predictor.predict(t0, t1)[0]

    change_proba = None
    if predictor.threshold is not None:  # binary: P(change), cut at the predictor's threshold

        def change_proba(t0: np.ndarray, t1: np.ndarray) -> np.ndarray:
            return predictor.predict_proba(t0, t1)[0, 1]

    return Method(name=name, predict=predict, model=predictor.model, description=description, predictor=predictor,
                  change_proba=change_proba, threshold=predictor.threshold)


def cva_method() -> Method:
    return Method(
        name="cva_otsu",
        predict=cva_otsu,
        description="change vector analysis, Otsu threshold (no learning)",
    )


def pair_counts(pred: np.ndarray, truth: np.ndarray, *, change_class: int = 1, ignore_index: int = 255) -> dict[str, float]:
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


def swap_consistency(pred: np.ndarray, pred_swapped: np.ndarray, class_map: Sequence[int] | None = None) -> dict[str, float]:
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
    from changeseg.inference.predictor import Predictor

    if not hasattr(getattr(model, "model", model), "forward_with_branches"):
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


@dataclass
class EvaluationResult:
    """What :func:`evaluate_pairs` measured; ``to_json`` is the report's JSON file."""

    methods: list[dict[str, Any]]
    pairs: list[dict[str, Any]]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def method(self, name: str) -> dict[str, Any]:
        for m in self.methods:
            if m["name"] == name:
                return m
        raise KeyError(name)

    def to_json(self) -> dict[str, Any]:
        return {"info": self.info, "methods": self.methods, "pairs": self.pairs, "skipped": [list(s) for s in self.skipped]}


def _safe_name(pair_id: str) -> str:
    """Image file stem and HTML anchor of a pair: the project's one id-to-file-name rule."""
    from changeseg.inference.naming import pair_file_name

    return pair_file_name(pair_id, flat=True)


def _shrink(panel: np.ndarray) -> np.ndarray:
    if panel.shape[1] <= MAX_PANEL_WIDTH:
        return panel
    from PIL import Image

    scale = MAX_PANEL_WIDTH / panel.shape[1]
    size = (MAX_PANEL_WIDTH, max(1, round(panel.shape[0] * scale)))
    return np.asarray(Image.fromarray(panel).resize(size, Image.BILINEAR))


def _save_png(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(_shrink(array)).save(path, optimize=False, compress_level=3)


def _error_strip(t1: np.ndarray, truth: np.ndarray, predictions: dict[str, np.ndarray]) -> np.ndarray:
    """One labelled error map per method (hits green, false alarms red, misses blue)."""
    from changeseg.viz import _label, error_map

    tiles = [_label(error_map(t1, pred, truth), name) for name, pred in predictions.items()]
    gutter = np.full((tiles[0].shape[0], 4, 3), 255, dtype=np.uint8)
    parts: list[np.ndarray] = []
    for tile in tiles:
        parts += [tile, gutter]
    return np.concatenate(parts[:-1], axis=1)


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

    def new_metrics() -> ChangeMetrics:
        return ChangeMetrics(num_classes=num_classes, ignore_index=ignore_index, change_class=change_class)

    totals = {m.name: new_metrics() for m in methods}
    curves = {m.name: ThresholdCurve(ignore_index=ignore_index) for m in methods if m.change_proba is not None}
    swapped_totals = {m.name: new_metrics() for m in methods}
    seconds = {m.name: 0.0 for m in methods}
    rows: list[dict[str, Any]] = []
    skipped: list[tuple[str, str]] = []
    started = last = time.perf_counter()
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
        t0, t1, truth = sample["t0"], sample["t1"], sample["mask"]
        row: dict[str, Any] = {
            "pair_id": pid,
            "height": int(t0.shape[0]),
            "width": int(t0.shape[1]),
            "change_fraction": float(((truth == change_class)).sum() / max(1, int((truth != ignore_index).sum()))),
            "methods": {},
        }
        outputs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        try:
            for method in methods:
                tick = time.perf_counter()
                outputs[method.name] = (_predict_and_collect(method, t0, t1, truth, curves.get(method.name)),
                                        method.predict(t1, t0))
                seconds[method.name] += time.perf_counter() - tick
        except Exception as err:  # every method must score the same pairs: the pair is left out
            skipped.append((pid, f"{method.name} failed: {type(err).__name__}: {err}"))
            continue
        predictions: dict[str, np.ndarray] = {}
        for method in methods:
            pred, pred_swapped = outputs[method.name]
            totals[method.name].update(torch.from_numpy(pred.astype(np.int64)), torch.from_numpy(truth.astype(np.int64)))
            swapped_totals[method.name].update(
                torch.from_numpy(pred_swapped.astype(np.int64)), torch.from_numpy(truth.astype(np.int64))
            )
            entry = pair_counts(pred, truth, change_class=change_class, ignore_index=ignore_index)
            entry["swap"] = swap_consistency(pred, pred_swapped, swap_class_map)
            entry["predicted_fraction"] = float((pred == change_class).mean())
            row["methods"][method.name] = entry
            predictions[method.name] = pred
        if len(rows) < max_panels:
            # Branch maps run the model untiled: large pairs show their central window.
            w0, w1 = _central_window(t0, branch_window), _central_window(t1, branch_window)
            if images_dir is not None:
                row["images"] = _draw(images_dir, pid, t0, t1, truth, predictions, methods[0], branch_pair=(w0, w1))
            if methods[0].model is not None:
                symmetry = branch_symmetry(methods[0].predictor or methods[0].model, w0, w1)
                if symmetry is not None:
                    row["branch_asymmetry"] = symmetry
        rows.append(row)
        now = time.perf_counter()
        if progress is not None and (now - last >= progress_seconds or index == len(records) - 1):
            done = index + 1
            eta = (now - started) / done * (len(records) - done)
            progress(f"evaluated {done}/{len(records)} pairs, {now - started:.0f} s, about {eta:.0f} s left")
            last = now

    summaries = []
    for method in methods:
        name = method.name
        glob = totals[name].compute()
        per_pair = [r["methods"][name] for r in rows]
        mean = (lambda key: float(np.mean([p[key] for p in per_pair])) if per_pair else 0.0)
        summary = {
            "name": name,
            "description": method.description,
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
            "swapped_global_f1": swapped_totals[name].compute()["global_f1"],
            "swap_agreement_mean": float(np.mean([p["swap"]["agreement"] for p in per_pair])) if per_pair else 0.0,
            "swap_change_iou_mean": float(np.mean([p["swap"]["change_iou"] for p in per_pair])) if per_pair else 0.0,
            "seconds_per_pair": seconds[name] / max(1, len(rows)) / 2,
            "pairs": len(rows),
        }
        if name in curves:
            summary["curve"] = curve_summary(curves[name], threshold=method.threshold)
        summaries.append(summary)
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
    return EvaluationResult(methods=summaries, pairs=rows, skipped=skipped, info=info)


def _predict_and_collect(method: Method, t0: np.ndarray, t1: np.ndarray, truth: np.ndarray, curve: Any) -> np.ndarray:
    """The method's class map; with probabilities, cut at its threshold and added to ``curve``."""
    if curve is None or method.change_proba is None:
        return method.predict(t0, t1)
    proba = method.change_proba(t0, t1)
    curve.update(proba, truth)
    return (proba >= method.threshold).astype(np.uint8)


def _central_window(image: np.ndarray, size: int) -> np.ndarray:
    h, w = image.shape[:2]
    y, x = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return image[y : y + size, x : x + size]


def _draw(
    images_dir: Path,
    pid: str,
    t0: np.ndarray,
    t1: np.ndarray,
    truth: np.ndarray,
    predictions: dict[str, np.ndarray],
    main: Method,
    *,
    branch_pair: tuple[np.ndarray, np.ndarray],
) -> dict[str, str]:
    from changeseg.viz import branch_panel_for, overlay_panel

    stem = _safe_name(pid)
    out: dict[str, str] = {}
    _save_png(overlay_panel(t0, t1, predictions[main.name], truth), images_dir / f"{stem}_overlay.png")
    out["overlay"] = f"images/{stem}_overlay.png"
    _save_png(_error_strip(t1, truth, predictions), images_dir / f"{stem}_errors.png")
    out["errors"] = f"images/{stem}_errors.png"
    if main.model is not None and hasattr(main.model, "forward_with_branches"):
        _save_png(branch_panel_for(main.predictor or main.model, *branch_pair), images_dir / f"{stem}_branches.png")
        out["branches"] = f"images/{stem}_branches.png"
    return out


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1700px}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f2f2f2}td.l,th.l{text-align:left}tr.best td{font-weight:bold}
img{max-width:100%;border:1px solid #ddd;margin:4px 0}.key span{padding:0 6px;margin-right:8px}
details{margin:0.6em 0}summary{cursor:pointer}
"""


def _fmt(value: Any, digits: int = 3) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.{digits}f}"
    return html.escape(str(value))


def write_report(result: EvaluationResult, output_dir: str | Path, *, title: str = "Change detection evaluation") -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.html`` (images from :func:`evaluate_pairs`) to ``output_dir``."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "report.json"
    json_path.write_text(json.dumps(result.to_json(), indent=2, sort_keys=True) + "\n")

    e = html.escape
    names = [m["name"] for m in result.methods]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>{_CSS}</style></head><body>"]
    parts.append(f"<h1>{e(title)}</h1>")
    info = result.info
    facts = [f"{info.get('pairs', 0)} pairs with masks", f"{info.get('skipped', 0)} skipped"]
    for key in ("model", "dataset", "split", "threshold"):
        if info.get(key):
            facts.append(f"{key}: <code>{e(str(info[key]))}</code>")
    parts.append("<p>" + " &middot; ".join(facts) + "</p>")

    parts.append("<h2>Change class, all pairs</h2>")
    parts.append(
        "<p>Global: one confusion matrix over all pixels of all pairs. Per-image mean: each pair scored on its own, "
        "then averaged (a pair without change scores 0 F1 whatever is predicted).</p>"
    )
    cols = [
        ("global_precision", "precision"), ("global_recall", "recall"), ("global_f1", "F1"), ("global_iou", "IoU"),
        ("per_image_precision_mean", "precision"), ("per_image_recall_mean", "recall"),
        ("per_image_f1_mean", "F1"), ("per_image_iou_mean", "IoU"), ("seconds_per_pair", "s / pair"),
    ]
    best = max(result.methods, key=lambda m: m["global_f1"])["name"] if result.methods else None
    parts.append(
        "<table><tr><th class='l' rowspan=2>method</th><th colspan=4>global</th><th colspan=4>per-image mean</th>"
        "<th rowspan=2>s / pair</th></tr><tr>" + "".join(f"<th>{label}</th>" for _, label in cols[:-1]) + "</tr>"
    )
    for m in result.methods:
        cls = " class='best'" if m["name"] == best else ""
        label = f"{e(m['name'])}<br><small>{e(m.get('description', ''))}</small>"
        parts.append(f"<tr{cls}><td class='l'>{label}</td>" + "".join(f"<td>{_fmt(m[k])}</td>" for k, _ in cols) + "</tr>")
    parts.append("</table>")

    parts.append(pr_curves_html(result.methods))
    parts.append("<h2>Temporal order</h2>")
    parts.append(
        "<p>Every pair is also predicted with t0 and t1 swapped. Agreement: share of pixels where the swapped "
        "prediction equals the original"
        + (" with classes mapped through " + e(str(info["swap_class_map"])) if info.get("swap_class_map") else "")
        + ". Change IoU: overlap of the two change masks.</p>"
    )
    parts.append("<table><tr><th class='l'>method</th><th>agreement</th><th>change IoU</th><th>F1 (t0, t1)</th><th>F1 (t1, t0)</th></tr>")
    for m in result.methods:
        parts.append(
            f"<tr><td class='l'>{e(m['name'])}</td><td>{_fmt(m['swap_agreement_mean'], 4)}</td>"
            f"<td>{_fmt(m['swap_change_iou_mean'], 4)}</td><td>{_fmt(m['global_f1'])}</td><td>{_fmt(m['swapped_global_f1'])}</td></tr>"
        )
    parts.append("</table>")
    if info.get("branch_asymmetry_max") is not None:
        parts.append(
            f"<p>MTF branches of <b>{e(names[0])}</b>: largest relative distance between appear(t0, t1) and "
            f"disappear(t1, t0) over the drawn pairs and scales: {_fmt(info['branch_asymmetry_max'], 6)} "
            "(0 = they trade places exactly).</p>"
        )

    parts.append("<h2>Pairs</h2>")
    parts.append(
        "<p class='key'>Errors: <span style='background:#28c83c'>hit</span><span style='background:#e62828;color:#fff'>"
        "false alarm</span><span style='background:#285af0;color:#fff'>miss</span></p>"
    )
    parts.append(
        "<table><tr><th class='l'>pair</th><th>size</th><th>change %</th>"
        + "".join(f"<th>{e(n)} F1</th>" for n in names)
        + "".join(f"<th>{e(n)} swap agr.</th>" for n in names[:1])
        + "</tr>"
    )
    for row in result.pairs:
        link = f"<a href='#{e(_safe_name(row['pair_id']))}'>{e(row['pair_id'])}</a>" if row.get("images") else e(row["pair_id"])
        parts.append(
            f"<tr><td class='l'>{link}</td><td>{row['width']}x{row['height']}</td><td>{100 * row['change_fraction']:.1f}</td>"
            + "".join(f"<td>{_fmt(row['methods'][n]['f1'])}</td>" for n in names)
            + "".join(f"<td>{_fmt(row['methods'][n]['swap']['agreement'], 4)}</td>" for n in names[:1])
            + "</tr>"
        )
    parts.append("</table>")
    for row in result.pairs:
        images = row.get("images")
        if not images:
            continue
        scores = ", ".join(f"{e(n)} F1 {_fmt(row['methods'][n]['f1'])}" for n in names)
        parts.append(f"<h3 id='{e(_safe_name(row['pair_id']))}'>{e(row['pair_id'])}</h3><p>{scores}</p>")
        parts.append(f"<p>t0 | t1 | {e(names[0])} | truth | errors</p><img src='{e(images['overlay'])}' alt='overlay'>")
        parts.append(f"<p>errors per method</p><img src='{e(images['errors'])}' alt='errors'>")
        if "branches" in images:
            parts.append(
                f"<details><summary>MTF branch maps of {e(names[0])} (per fused scale)</summary>"
                f"<img src='{e(images['branches'])}' alt='branches'></details>"
            )
    if result.skipped:
        parts.append("<h2>Skipped pairs</h2><ul>" + "".join(f"<li>{e(p)}: {e(r)}</li>" for p, r in result.skipped) + "</ul>")
    parts.append("</body></html>")
    html_path = out / "report.html"
    html_path.write_text("\n".join(parts))
    return html_path, json_path


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
    from changeseg.data.pipeline import load_options
    from changeseg.inference.predictor import Predictor
    from changeseg.inference.score import load_input_records

    tracking_uri = cfg.resolved_tracking_uri()

    def load(uri: str) -> Predictor:
        score = cfg.score
        return Predictor.from_uri(uri, tracking_uri=tracking_uri, storage_options=cfg.storage, device=_score_device(score),
                                  precision=score.precision, channels_last=score.channels_last, tile_size=score.tile_size,
                                  tile_overlap=score.tile_overlap, batch_size=score.batch_size, tta=score.tta,
                                  threshold=score.threshold)

    main = load(model_uri)
    num_classes = int(getattr(main.model, "num_classes", cfg.model.resolved_num_classes()))
    methods = [_method_for(main, cfg, fallback="model")]
    for uri in baseline_uris:
        baseline = load(uri)
        classes = int(getattr(baseline.model, "num_classes", num_classes))
        if classes != num_classes:
            raise ValueError(f"baseline {uri} predicts {classes} classes, the model {model_uri} {num_classes}")
        method = _method_for(baseline, cfg, fallback="baseline")
        taken = {m.name for m in methods}
        base, k = method.name, 2
        while method.name in taken:
            method.name, k = f"{base}_{k}", k + 1
        methods.append(method)
    if num_classes == 2:
        methods.append(cva_method())
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


def _method_for(predictor: Any, cfg: Any, *, fallback: str) -> Method:
    config = getattr(predictor.model, "config", {}) or {}
    name = str(config.get("name") or fallback)
    if name == "c3po":
        description = f"C-3PO {config.get('backbone')} MTF {config.get('mtf')} x{config.get('msf_scales')} {config.get('head')}"
    else:
        description = name.replace("_", "-")
    return model_method(name, predictor, description=description)


def _score_device(score: Any) -> str:
    """CUDA when ``score.num_gpus`` asks for it and one is there, else the CPU."""
    return "cuda" if score.num_gpus > 0 and torch.cuda.is_available() else "cpu"
