"""The stored operating point: threshold curve, choice, checkpoint, Predictor, report, serving."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from changeseg.data.records import PairRecord
from changeseg.evaluation.report import cva_method, evaluate_pairs, model_method, write_report
from changeseg.inference.predictor import Predictor
from changeseg.models.weights import META_FILE
from changeseg.serving.inputs import RequestError, parse_threshold
from changeseg.thresholds import ThresholdCurve, choose_operating_point, threshold_of
from changeseg.training.calibration import store_operating_point
from changeseg.training.losses import ChangeLoss, capped_class_weights, soft_dice_loss

# 10 bins. Changed pixels: 3 at P=0.75, 1 at P=0.35; unchanged: 2 at P=0.55, 4 at P=0.15.
PROBA = np.array([0.75, 0.75, 0.75, 0.35, 0.55, 0.55, 0.15, 0.15, 0.15, 0.15])
TRUTH = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])


def crafted_curve() -> ThresholdCurve:
    curve = ThresholdCurve(bins=10)
    curve.update(torch.tensor(PROBA), torch.tensor(TRUTH))
    curve.update(torch.tensor([0.9]), torch.tensor([255]))  # ignored
    return curve


def test_best_f1_threshold_of_a_crafted_histogram():
    curve = crafted_curve()
    assert (curve.positives, curve.negatives) == (4, 6)
    # t=0.6 and 0.7: TP 3, FP 0, FN 1 -> F1 6/7; ties go to the one nearest 0.5.
    assert curve.best_threshold() == pytest.approx((0.6, 6 / 7))
    assert curve.f1_at(0.5) == pytest.approx(6 / 9)  # TP 3, FP 2, FN 1
    assert curve.f1_at(0.3) == pytest.approx(8 / 10)  # TP 4, FP 2
    # Recall 0 -> 0.75 at precision 1, then 0.75 -> 1 at precision 4/6.
    assert curve.average_precision() == pytest.approx(0.75 + 0.25 * 4 / 6)


def test_curves_merge_by_adding_counts():
    a, b = ThresholdCurve(bins=10), ThresholdCurve(bins=10)
    a.update(PROBA[:5], TRUTH[:5])
    b.update(PROBA[5:], TRUTH[5:])
    a.merge(b)
    assert torch.equal(a.counts, crafted_curve().counts)


def test_choice_best_f1_targets_and_too_few_pixels():
    curve = crafted_curve()
    assert choose_operating_point(curve, min_pixels=1)["threshold"] == pytest.approx(0.6)
    # Precision >= 0.6: t <= 0.3 gives precision 4/6 at recall 1 (lowest such threshold first).
    point = choose_operating_point(curve, target_precision=0.6, min_pixels=1)
    assert point["threshold"] == pytest.approx(0.2) and point["recall"] == 1.0
    # Recall >= 0.7: the highest precision (1.0) is at t in [0.6, 0.7].
    assert choose_operating_point(curve, target_recall=0.7, min_pixels=1)["precision"] == 1.0
    few = choose_operating_point(curve, min_pixels=5)
    assert few["threshold"] == 0.5 and "too few validation pixels" in few["reason"]


def test_capped_weights_and_dice():
    torch.testing.assert_close(capped_class_weights(changed=1, unchanged=99, cap=3.0), torch.tensor([0.25, 0.75]))
    torch.testing.assert_close(capped_class_weights(changed=40, unchanged=60, cap=3.0), torch.tensor([0.4, 0.6]))
    target = torch.tensor([[[1, 0], [0, 255]]])
    perfect = torch.tensor([[[-20.0, 20.0], [20.0, 0.0]], [[20.0, -20.0], [-20.0, 0.0]]])[None]
    assert float(soft_dice_loss(perfect, target)) == pytest.approx(0.0, abs=1e-6)
    ignored = torch.full_like(target, 255)
    assert float(soft_dice_loss(perfect, ignored)) == pytest.approx(0.0, abs=1e-6)
    plain = ChangeLoss()(perfect, target)
    assert float(ChangeLoss(dice=True)(perfect, target)) == pytest.approx(float(plain), abs=1e-5)


class RedIsChange(nn.Module):
    """P(change) = t1's red channel: a model whose probabilities a test can set."""

    num_classes = 2
    config = {"name": "red_is_change", "num_classes": 2}

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, t0, t1):
        p = t1[:, 0].clamp(1e-4, 1 - 1e-4)
        return torch.stack([torch.zeros_like(p), torch.log(p / (1 - p))], 1) + self.dummy


def pair(values=(0.3, 0.7)):
    t1 = np.zeros((8, 8, 3), np.uint8)
    t1[:4, :, 0] = round(values[0] * 255)
    t1[4:, :, 0] = round(values[1] * 255)
    return np.zeros_like(t1), t1


def test_predictor_uses_the_stored_threshold_and_per_call_overrides(tmp_path):
    (tmp_path / META_FILE).write_text(json.dumps({"model": {}, "metadata": {}}))
    store_operating_point(tmp_path, {"threshold": 0.25, "method": "best_f1"})
    metadata = json.loads((tmp_path / META_FILE).read_text())["metadata"]
    assert threshold_of(metadata) == 0.25
    t0, t1 = pair()
    stored = Predictor(RedIsChange(), info={"metadata": metadata})
    assert stored.threshold == 0.25
    assert stored.predict(t0, t1).sum() == 64  # both halves >= 0.25
    assert stored.predict(t0, t1, threshold=0.5).sum() == 32
    result = stored.predict_pairs([t0], [t1], threshold=0.8)[0]
    assert result.mask.sum() == 0 and result.threshold == 0.8
    plain = Predictor(RedIsChange())
    assert plain.threshold == 0.5 and plain.predict_pairs([t0], [t1])[0].threshold == 0.5
    assert Predictor(RedIsChange(), threshold=0.9).predict(t0, t1).sum() == 0
    with pytest.raises(ValueError, match="threshold"):
        Predictor(RedIsChange(), threshold=1.5)


def test_multiclass_models_keep_argmax():
    proba = torch.tensor([[0.5, 0.3, 0.2], [0.2, 0.3, 0.5]]).T.reshape(1, 3, 1, 2)
    assert Predictor.classes(proba, 0.1).tolist() == [[[0, 2]]]


def test_report_has_curve_average_precision_and_optimistic_f1(tmp_path):
    records = []
    for k, values in enumerate([(0.3, 0.7), (0.2, 0.45)]):
        t0, t1 = pair(values)
        mask = np.zeros((8, 8), np.uint8)
        mask[4:] = 255  # the lower half changed
        for name, image in (("t0", t0), ("t1", t1), ("mask", mask)):
            Image.fromarray(image).save(tmp_path / f"{name}{k}.png")
        records.append(
            PairRecord(
                pair_id=f"p{k}",
                t0=str(tmp_path / f"t0{k}.png"),
                t1=str(tmp_path / f"t1{k}.png"),
                mask=str(tmp_path / f"mask{k}.png"),
            )
        )
    predictor = Predictor(RedIsChange(), info={"metadata": {"operating_point": {"threshold": 0.4}}})
    result = evaluate_pairs(records, [model_method("red", predictor), cva_method()], progress=None)
    red = result.method("red")
    curve = red["curve"]
    # At 0.4 every changed pixel (0.7, 0.45) is found and no unchanged one (0.3, 0.2): F1 1.
    assert curve["threshold"] == 0.4 and curve["f1_at_threshold"] == pytest.approx(1.0)
    assert red["global_f1"] == pytest.approx(1.0)
    # At 0.5 the second pair's changed half (0.45) is missed: TP 32, FN 32 -> 2/3.
    assert curve["f1_at_0.5"] == pytest.approx(2 / 3)
    assert curve["average_precision"] == pytest.approx(1.0)
    assert curve["optimistic_best_f1"] == pytest.approx(1.0)
    assert "curve" not in result.method("cva_otsu")
    html_path, _ = write_report(result, tmp_path / "report")
    text = html_path.read_text()
    assert "<svg" in text and "optimistic" in text.lower()


def test_serving_threshold_field():
    assert parse_threshold(None) is None and parse_threshold("") is None
    assert parse_threshold("0.3") == 0.3
    for bad in ("1.5", "nan", "x"):
        with pytest.raises(RequestError):
            parse_threshold(bad)


def test_synthetic_pairs_mark_the_pasted_regions(tmp_path):
    from changeseg.data.changesynth import synthesize_pair, write_synthetic_pairs

    rng = np.random.default_rng(0)
    image = np.full((64, 64, 3), 100, np.uint8)
    donor = np.full((64, 64, 3), 250, np.uint8)
    pair = synthesize_pair(image, [donor], rng, objects=(3, 3), jitter=0.0, max_shift=0)
    changed = pair["mask"] == 1
    assert changed.any() and not changed.all()
    # Without jitter or shift, the dates differ only where something was pasted: fully
    # inside the mask, and outside it only by less than half the contrast (feathered edges).
    diff = np.abs(pair["t0"].astype(int) - pair["t1"].astype(int)).max(-1)
    differs = diff > 0
    assert diff[~changed].max() <= 150 // 2 + 1
    assert (differs & changed).sum() / changed.sum() > 0.9
    segmentation = np.zeros((64, 64), np.uint8)
    segmentation[10:20, 30:50] = 7  # one 10x20 object
    pair = synthesize_pair(image, [donor], rng, segmentations=[segmentation], objects=(1, 1), jitter=0.0, max_shift=0)
    assert pair["mask"].sum() == 200
    for k in range(2):
        Image.fromarray(np.full((40, 40, 3), 60 * k, np.uint8)).save(tmp_path / f"img{k}.png")
    count = write_synthetic_pairs(
        [tmp_path / "img0.png", tmp_path / "img1.png"], tmp_path / "pairs", pairs_per_image=2, size=32
    )
    assert count == 4 and len(list((tmp_path / "pairs" / "mask").glob("*.png"))) == 4
