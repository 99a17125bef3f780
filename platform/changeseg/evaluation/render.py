"""The report's files: PNG panels per pair, ``report.html`` and ``report.json``."""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from changeseg.evaluation.curves import pr_curves_html
from changeseg.evaluation.methods import Method
from changeseg.evaluation.scoring import EvaluationResult
from changeseg.inference.naming import pair_file_name
from changeseg.models.contract import supports_branches
from changeseg.viz import _label, branch_panel_for, error_map, overlay_panel

__all__ = ["MAX_PANEL_WIDTH", "draw_pair", "write_report"]

# Panels wider than this are shrunk for the page (PNG files stay full size below it).
MAX_PANEL_WIDTH = 1600


def _safe_name(pair_id: str) -> str:
    """Image file stem and HTML anchor of a pair: the project's one id-to-file-name rule."""
    return pair_file_name(pair_id, flat=True)


def _shrink(panel: np.ndarray) -> np.ndarray:
    if panel.shape[1] <= MAX_PANEL_WIDTH:
        return panel
    scale = MAX_PANEL_WIDTH / panel.shape[1]
    size = (MAX_PANEL_WIDTH, max(1, round(panel.shape[0] * scale)))
    return np.asarray(Image.fromarray(panel).resize(size, Image.BILINEAR))


def _save_png(array: np.ndarray, path: Path) -> None:
    Image.fromarray(_shrink(array)).save(path, optimize=False, compress_level=3)


def _error_strip(t1: np.ndarray, truth: np.ndarray, predictions: dict[str, np.ndarray]) -> np.ndarray:
    """One labelled error map per method (hits green, false alarms red, misses blue)."""
    tiles = [_label(error_map(t1, pred, truth), name) for name, pred in predictions.items()]
    gutter = np.full((tiles[0].shape[0], 4, 3), 255, dtype=np.uint8)
    parts: list[np.ndarray] = []
    for tile in tiles:
        parts += [tile, gutter]
    return np.concatenate(parts[:-1], axis=1)


def draw_pair(
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
    """Overlay, error maps and (MTF models) branch maps of one pair; their paths in the report."""
    stem = _safe_name(pid)
    out: dict[str, str] = {}
    _save_png(overlay_panel(t0, t1, predictions[main.name], truth), images_dir / f"{stem}_overlay.png")
    out["overlay"] = f"images/{stem}_overlay.png"
    _save_png(_error_strip(t1, truth, predictions), images_dir / f"{stem}_errors.png")
    out["errors"] = f"images/{stem}_errors.png"
    if main.model is not None and supports_branches(main.model):
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

_e = html.escape


def _fmt(value: Any, digits: int = 3) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.{digits}f}"
    return html.escape(str(value))


def write_report(
    result: EvaluationResult, output_dir: str | Path, *, title: str = "Change detection evaluation"
) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.html`` (images from
    :func:`~changeseg.evaluation.report.evaluate_pairs`) to ``output_dir``."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "report.json"
    json_path.write_text(json.dumps(result.to_json(), indent=2, sort_keys=True) + "\n")

    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(title)}</title><style>{_CSS}</style></head><body>"
    ]
    parts.append(f"<h1>{_e(title)}</h1>")
    parts += _facts(result.info)
    parts += _scores_table(result.methods)
    parts.append(pr_curves_html(result.methods))
    parts += _temporal_order(result)
    parts += _pairs_table(result)
    parts += _pair_panels(result)
    if result.skipped:
        parts.append(
            "<h2>Skipped pairs</h2><ul>" + "".join(f"<li>{_e(p)}: {_e(r)}</li>" for p, r in result.skipped) + "</ul>"
        )
    parts.append("</body></html>")
    html_path = out / "report.html"
    html_path.write_text("\n".join(parts))
    return html_path, json_path


def _facts(info: dict[str, Any]) -> list[str]:
    facts = [f"{info.get('pairs', 0)} pairs with masks", f"{info.get('skipped', 0)} skipped"]
    for key in ("model", "dataset", "split", "threshold"):
        if info.get(key):
            facts.append(f"{key}: <code>{_e(str(info[key]))}</code>")
    return ["<p>" + " &middot; ".join(facts) + "</p>"]


def _scores_table(methods: list[dict[str, Any]]) -> list[str]:
    parts = ["<h2>Change class, all pairs</h2>"]
    parts.append(
        "<p>Global: one confusion matrix over all pixels of all pairs. Per-image mean: each pair scored on its own, "
        "then averaged (a pair without change scores 0 F1 whatever is predicted).</p>"
    )
    cols = [
        ("global_precision", "precision"),
        ("global_recall", "recall"),
        ("global_f1", "F1"),
        ("global_iou", "IoU"),
        ("per_image_precision_mean", "precision"),
        ("per_image_recall_mean", "recall"),
        ("per_image_f1_mean", "F1"),
        ("per_image_iou_mean", "IoU"),
        ("seconds_per_pair", "s / pair"),
    ]
    best = max(methods, key=lambda m: m["global_f1"])["name"] if methods else None
    parts.append(
        "<table><tr><th class='l' rowspan=2>method</th><th colspan=4>global</th><th colspan=4>per-image mean</th>"
        "<th rowspan=2>s / pair</th></tr><tr>" + "".join(f"<th>{label}</th>" for _, label in cols[:-1]) + "</tr>"
    )
    for m in methods:
        cls = " class='best'" if m["name"] == best else ""
        label = f"{_e(m['name'])}<br><small>{_e(m.get('description', ''))}</small>"
        parts.append(
            f"<tr{cls}><td class='l'>{label}</td>" + "".join(f"<td>{_fmt(m[k])}</td>" for k, _ in cols) + "</tr>"
        )
    parts.append("</table>")
    return parts


def _temporal_order(result: EvaluationResult) -> list[str]:
    info = result.info
    parts = ["<h2>Temporal order</h2>"]
    parts.append(
        "<p>Every pair is also predicted with t0 and t1 swapped. Agreement: share of pixels where the swapped "
        "prediction equals the original"
        + (" with classes mapped through " + _e(str(info["swap_class_map"])) if info.get("swap_class_map") else "")
        + ". Change IoU: overlap of the two change masks.</p>"
    )
    parts.append(
        "<table><tr><th class='l'>method</th><th>agreement</th><th>change IoU</th><th>F1 (t0, t1)</th><th>F1 (t1, t0)</th></tr>"
    )
    for m in result.methods:
        parts.append(
            f"<tr><td class='l'>{_e(m['name'])}</td><td>{_fmt(m['swap_agreement_mean'], 4)}</td>"
            f"<td>{_fmt(m['swap_change_iou_mean'], 4)}</td><td>{_fmt(m['global_f1'])}</td><td>{_fmt(m['swapped_global_f1'])}</td></tr>"
        )
    parts.append("</table>")
    if info.get("branch_asymmetry_max") is not None:
        parts.append(
            f"<p>MTF branches of <b>{_e(result.methods[0]['name'])}</b>: largest relative distance between appear(t0, t1) and "
            f"disappear(t1, t0) over the drawn pairs and scales: {_fmt(info['branch_asymmetry_max'], 6)} "
            "(0 = they trade places exactly).</p>"
        )
    return parts


def _pairs_table(result: EvaluationResult) -> list[str]:
    names = [m["name"] for m in result.methods]
    parts = ["<h2>Pairs</h2>"]
    parts.append(
        "<p class='key'>Errors: <span style='background:#28c83c'>hit</span><span style='background:#e62828;color:#fff'>"
        "false alarm</span><span style='background:#285af0;color:#fff'>miss</span></p>"
    )
    parts.append(
        "<table><tr><th class='l'>pair</th><th>size</th><th>change %</th>"
        + "".join(f"<th>{_e(n)} F1</th>" for n in names)
        + "".join(f"<th>{_e(n)} swap agr.</th>" for n in names[:1])
        + "</tr>"
    )
    for row in result.pairs:
        link = (
            f"<a href='#{_e(_safe_name(row['pair_id']))}'>{_e(row['pair_id'])}</a>"
            if row.get("images")
            else _e(row["pair_id"])
        )
        parts.append(
            f"<tr><td class='l'>{link}</td><td>{row['width']}x{row['height']}</td><td>{100 * row['change_fraction']:.1f}</td>"
            + "".join(f"<td>{_fmt(row['methods'][n]['f1'])}</td>" for n in names)
            + "".join(f"<td>{_fmt(row['methods'][n]['swap']['agreement'], 4)}</td>" for n in names[:1])
            + "</tr>"
        )
    parts.append("</table>")
    return parts


def _pair_panels(result: EvaluationResult) -> list[str]:
    names = [m["name"] for m in result.methods]
    parts: list[str] = []
    for row in result.pairs:
        images = row.get("images")
        if not images:
            continue
        scores = ", ".join(f"{_e(n)} F1 {_fmt(row['methods'][n]['f1'])}" for n in names)
        parts.append(f"<h3 id='{_e(_safe_name(row['pair_id']))}'>{_e(row['pair_id'])}</h3><p>{scores}</p>")
        parts.append(
            f"<p>t0 | t1 | {_e(names[0])} | truth | errors</p><img src='{_e(images['overlay'])}' alt='overlay'>"
        )
        parts.append(f"<p>errors per method</p><img src='{_e(images['errors'])}' alt='errors'>")
        if "branches" in images:
            parts.append(
                f"<details><summary>MTF branch maps of {_e(names[0])} (per fused scale)</summary>"
                f"<img src='{_e(images['branches'])}' alt='branches'></details>"
            )
    return parts
