"""Evaluation: CVA + Otsu, per-pair counts, temporal-order consistency, the report and its CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA
from helpers import write_pair_folder
from PIL import Image

from changeseg.cli import main as cli_main
from changeseg.config import build_config
from changeseg.data.records import PairRecord
from changeseg.evaluation.classical import change_magnitude, cva_otsu, otsu_threshold
from changeseg.evaluation.report import (
    Method,
    branch_symmetry,
    cva_method,
    evaluate_pairs,
    model_method,
    pair_counts,
    swap_consistency,
    write_report,
)
from changeseg.models import create_model
from changeseg.models.weights import save_checkpoint

needs_shared = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="shared/data not present")


def _between_class_variance(values: np.ndarray, t: float) -> float:
    low, high = values[values <= t], values[values > t]
    if not len(low) or not len(high):
        return -1.0
    return len(low) * len(high) * (low.mean() - high.mean()) ** 2


def test_otsu_threshold_hand_computed():
    # Splitting {1, 1, 2} from {8, 9, 9}: 3 * 3 * (4/3 - 26/3)^2 = 484, the largest split.
    values = np.array([1, 1, 2, 8, 9, 9], dtype=np.float32)
    assert otsu_threshold(values) == 2.0
    assert _between_class_variance(values, 2.0) == pytest.approx(484.0)
    assert all(_between_class_variance(values, t) < 484.0 for t in (1.0, 8.0))


def test_otsu_threshold_maximises_between_class_variance():
    rng = np.random.default_rng(3)
    values = np.concatenate([rng.integers(0, 60, 500), rng.integers(120, 256, 150)]).astype(np.float64)
    t = otsu_threshold(values, bins=256)
    best = max(np.unique(values), key=lambda c: _between_class_variance(values, c))
    assert _between_class_variance(values, t) == pytest.approx(_between_class_variance(values, best))
    assert 59 <= t < 120


def test_otsu_constant_and_empty():
    assert otsu_threshold(np.full(10, 7.0)) == 7.0
    with pytest.raises(ValueError, match="at least one value"):
        otsu_threshold(np.array([]))


def test_change_magnitude_and_cva():
    t0 = np.zeros((2, 2, 3), np.uint8)
    t1 = t0.copy()
    t1[0, 0] = (3, 4, 0)
    assert change_magnitude(t0, t1)[0, 0] == pytest.approx(5.0)
    assert change_magnitude(t1, t0)[0, 0] == pytest.approx(5.0)  # symmetric
    with pytest.raises(ValueError, match="one shape"):
        change_magnitude(t0, np.zeros((2, 3, 3), np.uint8))

    rng = np.random.default_rng(0)
    base = rng.integers(60, 100, (64, 64, 3)).astype(np.uint8)
    after = base.copy()
    after[10:30, 20:50] = 220
    truth = np.zeros((64, 64), np.uint8)
    truth[10:30, 20:50] = 1
    assert np.array_equal(cva_otsu(base, after), truth)
    assert not cva_otsu(base, base).any()


def test_pair_counts_hand_computed():
    truth = np.array([[1, 1, 0, 0], [0, 0, 255, 255]], np.uint8)
    pred = np.array([[1, 0, 1, 0], [0, 0, 1, 0]], np.uint8)
    c = pair_counts(pred, truth)
    assert (c["tp"], c["fp"], c["fn"]) == (1, 1, 1)  # the ignored pixels count nowhere
    assert c["precision"] == 0.5 and c["recall"] == 0.5
    assert c["f1"] == pytest.approx(0.5) and c["iou"] == pytest.approx(1 / 3)
    empty = pair_counts(np.zeros((2, 2), np.uint8), np.zeros((2, 2), np.uint8))
    assert empty["f1"] == 0.0 and empty["precision"] == 0.0


def test_swap_consistency():
    a = np.array([[0, 1], [1, 1]], np.uint8)
    b = np.array([[0, 1], [0, 1]], np.uint8)
    s = swap_consistency(a, b)
    assert s["agreement"] == 0.75 and s["change_iou"] == pytest.approx(2 / 3)
    # Classes 1 (appear) and 2 (disappear) trade places when the order is swapped.
    fwd = np.array([[0, 1, 2, 1]], np.uint8)
    bwd = np.array([[0, 2, 1, 2]], np.uint8)
    assert swap_consistency(fwd, bwd, [0, 2, 1])["agreement"] == 1.0
    assert swap_consistency(fwd, bwd)["agreement"] == 0.25
    assert swap_consistency(np.zeros((2, 2), np.uint8), np.zeros((2, 2), np.uint8))["change_iou"] == 1.0


def _tiny_c3po(mtf: str = "iade") -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("c3po", backbone="resnet18", mtf=mtf, msf_scales=2, head="fcn", msf_width=16).eval()


def test_shared_appear_disappear_conv_trades_places_exactly():
    rng = np.random.default_rng(1)
    t0, t1 = (rng.integers(0, 256, (48, 48, 3), dtype=np.uint8) for _ in range(2))
    shared = branch_symmetry(_tiny_c3po("iade"), t0, t1)
    separate = branch_symmetry(_tiny_c3po("iad2e"), t0, t1)
    assert len(shared) == 2 and max(shared) < 1e-5
    assert min(separate) > 0.1
    assert branch_symmetry(_tiny_c3po("id"), t0, t1) is None  # no appear branch
    # iade's fused map is symmetric in t0/t1, so its prediction cannot depend on the order.
    method = model_method("c3po", _tiny_c3po("iade"))
    assert np.array_equal(method.predict(t0, t1), method.predict(t1, t0))


@pytest.fixture
def pair_folder(tmp_path) -> Path:
    root = tmp_path / "pairs"
    write_pair_folder(root, ["a", "b", "c"], size=(40, 48))
    return root


def _records(root: Path) -> list[PairRecord]:
    return [
        PairRecord(
            pair_id=p,
            t0=str(root / "t0" / f"{p}.png"),
            t1=str(root / "t1" / f"{p}.png"),
            mask=str(root / "mask" / f"{p}.png"),
        )
        for p in ("a", "b", "c")
    ]


def test_evaluate_pairs_pools_counts_and_writes_the_report(pair_folder, tmp_path):
    records = _records(pair_folder)
    # A broken pair is skipped with its reason, not fatal.
    (tmp_path / "broken.png").write_bytes(b"not an image")
    records.append(
        PairRecord(
            pair_id="broken",
            t0=str(tmp_path / "broken.png"),
            t1=str(tmp_path / "broken.png"),
            mask=str(tmp_path / "broken.png"),
        )
    )
    # A method whose output depends on the order: change where t1 is brighter.
    brighter = Method("brighter", lambda a, b: (b.astype(int).sum(2) > a.astype(int).sum(2)).astype(np.uint8))
    out = tmp_path / "report"
    result = evaluate_pairs(
        records, [model_method("c3po", _tiny_c3po()), brighter, cva_method()], output_dir=out, progress=None
    )
    assert [m["name"] for m in result.methods] == ["c3po", "brighter", "cva_otsu"]
    assert [r["pair_id"] for r in result.pairs] == ["a", "b", "c"]
    assert result.skipped and result.skipped[0][0] == "broken"

    for summary in result.methods:
        per_pair = [r["methods"][summary["name"]] for r in result.pairs]
        tp, fp, fn = (sum(p[k] for p in per_pair) for k in ("tp", "fp", "fn"))
        assert summary["global_f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
        assert summary["global_iou"] == pytest.approx(tp / (tp + fp + fn))
        assert summary["per_image_recall_mean"] == pytest.approx(np.mean([p["recall"] for p in per_pair]))
        assert summary["per_image_f1_mean"] == pytest.approx(np.mean([p["f1"] for p in per_pair]), abs=1e-6)
    # "brighter" swaps its answer exactly (ties aside): agreement only where neither is brighter.
    assert result.method("brighter")["swap_agreement_mean"] < 0.2
    assert result.method("cva_otsu")["swap_agreement_mean"] == 1.0
    assert result.method("c3po")["swap_agreement_mean"] == 1.0
    assert result.info["branch_asymmetry_max"] < 1e-5

    html_path, json_path = write_report(result, out)
    saved = json.loads(json_path.read_text())
    assert saved["methods"][0]["global_f1"] == pytest.approx(result.methods[0]["global_f1"])
    assert saved["skipped"][0][0] == "broken"
    page = html_path.read_text()
    for text in ("c3po", "brighter", "cva_otsu", "Temporal order", "broken"):
        assert text in page
    for row in result.pairs:
        for kind in ("overlay", "errors", "branches"):
            image = Image.open(out / row["images"][kind])
            assert image.mode == "RGB" and image.width >= 48
        assert row["images"]["overlay"] in page


def test_a_method_failing_on_one_pair_leaves_that_pair_out(pair_folder):
    calls = {"n": 0}

    def flaky(t0, t1):
        calls["n"] += 1
        if calls["n"] == 3:  # the second pair
            raise RuntimeError("out of memory")
        return np.zeros(t0.shape[:2], np.uint8)

    result = evaluate_pairs(_records(pair_folder), [Method("flaky", flaky), cva_method()], progress=None)
    assert [r["pair_id"] for r in result.pairs] == ["a", "c"]
    assert result.skipped == [("b", "flaky failed: RuntimeError: out of memory")]
    assert result.method("cva_otsu")["pairs"] == 2  # the same pairs for every method


def test_evaluate_pairs_rejects_bad_methods():
    with pytest.raises(ValueError, match="at least one method"):
        evaluate_pairs([], [])
    with pytest.raises(ValueError, match="unique"):
        evaluate_pairs([], [cva_method(), cva_method()])


@needs_shared
def test_evaluate_cli_on_real_pairs(tmp_path, capsys):
    """The job on LEVIR-CD samples: a C3PO checkpoint against an FC-Siam-diff checkpoint and CVA."""
    save_checkpoint(tmp_path / "c3po", _tiny_c3po())
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "fcsd", create_model("fc_siam_diff"))
    out = tmp_path / "report"
    code = cli_main(
        [
            "evaluate",
            "--model",
            str(tmp_path / "c3po"),
            "--baseline",
            str(tmp_path / "fcsd"),
            "--input",
            str(SHARED_DATA / "levir-cd-samples"),
            "--split",
            "test",
            "--output",
            str(out),
            "--max-panels",
            "2",
            "tracking.tracking_uri=sqlite:///" + str(tmp_path / "unused.db"),
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    report = json.loads((out / "report.json").read_text())
    assert [m["name"] for m in report["methods"]] == ["c3po", "fc_siam_diff", "cva_otsu"]
    assert report["info"]["pairs"] == 7 and report["info"]["split"] == "test"
    assert sum("images" in r for r in report["pairs"]) == 2
    # CVA + Otsu on the 7 LEVIR test pairs, per-image Otsu on the RGB difference norm.
    assert report["methods"][2]["global_f1"] == pytest.approx(0.315, abs=0.005)
    assert "cva_otsu: global F1" in printed.replace("  ", "")
    assert (out / "report.html").is_file()


def test_evaluate_cli_errors(tmp_path, capsys):
    code = cli_main(
        ["evaluate", "--model", str(tmp_path / "missing"), "--input", str(tmp_path), "--output", str(tmp_path / "o")]
    )
    assert code == 1
    assert "not found" in capsys.readouterr().err
    code = cli_main(["evaluate", "--model", "m", "--input", "i", "--output", "o", "score.tile_size=nope"])
    assert code == 2
    assert "score.tile_size" in capsys.readouterr().err


def test_evaluate_uses_config_layout(pair_folder, tmp_path):
    """evaluate() reads any layout through the config; here the generic folder layout."""
    from changeseg.evaluation.report import evaluate

    save_checkpoint(tmp_path / "m", _tiny_c3po())
    cfg = build_config({"tracking": {"tracking_uri": "sqlite:///" + str(tmp_path / "x.db")}})
    result, html_path, _ = evaluate(
        cfg, model_uri=str(tmp_path / "m"), input_uri=str(pair_folder), output_dir=tmp_path / "r", progress=None
    )
    assert result.info["pairs"] == 3 and html_path.is_file()

    # Pairs without masks cannot be evaluated; a baseline must predict the same classes.
    for mask in (pair_folder / "mask").iterdir():
        mask.unlink()
    with pytest.raises(ValueError, match="none of 3 pairs could be evaluated .*no mask"):
        evaluate(
            cfg, model_uri=str(tmp_path / "m"), input_uri=str(pair_folder), output_dir=tmp_path / "r2", progress=None
        )
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "five", create_model("fc_siam_diff", num_classes=5))
    with pytest.raises(ValueError, match="predicts 5 classes"):
        evaluate(
            cfg,
            model_uri=str(tmp_path / "m"),
            input_uri=str(pair_folder),
            output_dir=tmp_path / "r3",
            baseline_uris=[str(tmp_path / "five")],
            progress=None,
        )
