"""The precision-recall trade-off in the evaluation report.

Per method with probabilities: the curve over the evaluated pixels, average precision,
F1 at the threshold the model would use (its stored operating point or the override),
at 0.5, and at the best threshold *on these very pairs* (optimistic: chosen on the test
data, so it shows what is left on the table, not what a user would get).
"""

from __future__ import annotations

import html
from typing import Any

import numpy as np

from changeseg.thresholds import DEFAULT_THRESHOLD, ThresholdCurve

__all__ = ["curve_summary", "pr_curves_html", "pr_svg"]

# Points of each curve kept in report.json and drawn (the histogram has 1000 bins).
CURVE_POINTS = 101
_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def curve_summary(curve: ThresholdCurve, *, threshold: float | None) -> dict[str, Any]:
    """Average precision, F1 at ``threshold``, at 0.5 and at the optimistic best, and the curve."""
    best_t, best_f1 = curve.best_threshold()
    full = curve.pr_curve()
    keep = np.linspace(0, curve.bins - 1, CURVE_POINTS).round().astype(int)
    used = DEFAULT_THRESHOLD if threshold is None else float(threshold)
    return {
        "threshold": used,
        "average_precision": curve.average_precision(),
        "f1_at_threshold": curve.f1_at(used),
        "f1_at_0.5": curve.f1_at(DEFAULT_THRESHOLD),
        "optimistic_best_threshold": best_t,
        "optimistic_best_f1": best_f1,
        "pr_curve": {
            key: [round(float(full[key][k]), 5) for k in keep] for key in ("threshold", "precision", "recall")
        },
    }


def pr_svg(curves: dict[str, dict[str, Any]], *, size: int = 360) -> str:
    """An inline SVG of precision (y) against recall (x), one line per method, the
    operating point of each marked with a dot."""
    pad, inner = 40, size - 50
    x = lambda r: pad + r * inner  # noqa: E731
    y = lambda p: 10 + (1 - p) * inner  # noqa: E731
    parts = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{size + 160}' height='{size}' font-size='11'>",
        f"<rect x='{pad}' y='10' width='{inner}' height='{inner}' fill='none' stroke='#999'/>",
    ]
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        parts.append(f"<text x='{x(tick) - 8:.0f}' y='{size - 22}'>{tick:g}</text>")
        parts.append(f"<text x='{pad - 30}' y='{y(tick) + 4:.0f}'>{tick:g}</text>")
    parts.append(f"<text x='{pad + inner / 2 - 15:.0f}' y='{size - 6}'>recall</text>")
    parts.append(
        f"<text x='2' y='{10 + inner / 2:.0f}' transform='rotate(-90 8 {10 + inner / 2:.0f})'>precision</text>"
    )
    for k, (name, summary) in enumerate(curves.items()):
        colour = _COLOURS[k % len(_COLOURS)]
        pr = summary["pr_curve"]
        points = " ".join(f"{x(r):.1f},{y(p):.1f}" for r, p in zip(pr["recall"], pr["precision"]))
        parts.append(f"<polyline fill='none' stroke='{colour}' stroke-width='1.5' points='{points}'/>")
        index = int(np.argmin(np.abs(np.asarray(pr["threshold"]) - summary["threshold"])))
        parts.append(
            f"<circle cx='{x(pr['recall'][index]):.1f}' cy='{y(pr['precision'][index]):.1f}' r='4' fill='{colour}'/>"
        )
        parts.append(
            f"<text x='{pad + inner + 10}' y='{24 + 16 * k}' fill='{colour}'>{html.escape(name)} "
            f"(AP {summary['average_precision']:.3f})</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def pr_curves_html(methods: list[dict[str, Any]]) -> str:
    """The report section: a table of the trade-off and the plot; empty without curves."""
    curves = {m["name"]: m["curve"] for m in methods if m.get("curve")}
    if not curves:
        return ""
    e = html.escape
    rows = "".join(
        f"<tr><td class='l'>{e(name)}</td><td>{c['average_precision']:.3f}</td><td>{c['threshold']:.3f}</td>"
        f"<td>{c['f1_at_threshold']:.3f}</td><td>{c['f1_at_0.5']:.3f}</td>"
        f"<td>{c['optimistic_best_threshold']:.3f}</td><td>{c['optimistic_best_f1']:.3f}</td></tr>"
        for name, c in curves.items()
    )
    return (
        "<h2>Precision and recall against the threshold</h2>"
        "<p>P(change) cut at every threshold, pixels of all pairs pooled. The dot marks the threshold in use "
        "(the model's stored operating point unless overridden). <b>Optimistic</b>: the best threshold chosen on "
        "these evaluated pairs themselves, so an upper bound, not a result.</p>"
        "<table><tr><th class='l'>method</th><th>average precision</th><th>threshold used</th><th>F1 there</th>"
        "<th>F1 at 0.5</th><th>optimistic best threshold</th><th>optimistic F1</th></tr>"
        + rows
        + "</table>"
        + pr_svg(curves)
    )
