"""ChangeMetrics against hand-counted confusion matrices."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from changeseg.metrics import ChangeMetrics, all_reduce_

# Image A: TP=1 (0,0), FN=1 (0,1), FP=1 (0,2), TN=3.
TARGET_A = [[1, 1, 0], [0, 0, 0]]
PRED_A = [[1, 0, 1], [0, 0, 0]]
# Image B: TP=4, FP=1 (1,1), FN=0, TN=1.
TARGET_B = [[1, 1, 1], [1, 0, 0]]
PRED_B = [[1, 1, 1], [1, 1, 0]]


def _batch(*images: list[list[int]]) -> torch.Tensor:
    return torch.tensor(images, dtype=torch.int64)


def _metrics_ab() -> ChangeMetrics:
    m = ChangeMetrics()
    m.update(_batch(PRED_A, PRED_B), _batch(TARGET_A, TARGET_B))
    return m


def test_global_metrics_from_hand_counts() -> None:
    m = _metrics_ab()
    # Totals over both images: TP=5, FP=2, FN=1, TN=4, 12 pixels.
    assert m.confusion_matrix.tolist() == [[4, 2], [1, 5]]
    r = m.compute()
    assert r["global_precision"] == pytest.approx(5 / 7)
    assert r["global_recall"] == pytest.approx(5 / 6)
    assert r["global_f1"] == pytest.approx(2 * 5 / (2 * 5 + 2 + 1))  # 10/13
    assert r["global_iou"] == pytest.approx(5 / 8)
    assert r["overall_accuracy"] == pytest.approx(9 / 12)
    # Rows (truth) 6, 6; columns (prediction) 5, 7: pe = (6*5 + 6*7) / 12**2 = 0.5.
    assert r["kappa"] == pytest.approx((0.75 - 0.5) / (1 - 0.5))
    # IoU(change) = 5/8, IoU(no change) = TN/(TN+FP+FN) = 4/7.
    assert r["mean_iou"] == pytest.approx((5 / 8 + 4 / 7) / 2)
    assert r["num_images"] == 2
    assert r["num_pixels"] == 12


def test_per_image_mean_differs_from_global() -> None:
    r = _metrics_ab().compute()
    f1_a, f1_b = 2 / (2 + 1 + 1), 8 / (8 + 1 + 0)
    iou_a, iou_b = 1 / 3, 4 / 5
    assert r["per_image_f1_mean"] == pytest.approx((f1_a + f1_b) / 2, abs=1e-6)  # 25/36
    assert r["per_image_iou_mean"] == pytest.approx((iou_a + iou_b) / 2, abs=1e-6)
    assert abs(r["per_image_f1_mean"] - r["global_f1"]) > 0.05  # 0.694 vs 0.769


def test_image_without_change_scores_zero_per_image() -> None:
    m = ChangeMetrics()
    zeros = torch.zeros(1, 2, 3, dtype=torch.int64)
    m.update(zeros, zeros)
    r = m.compute()
    assert r["per_image_f1_mean"] == 0.0
    assert r["per_image_iou_mean"] == 0.0
    assert r["overall_accuracy"] == 1.0

    # It also drags down the mean of images that do have change.
    m = _metrics_ab()
    m.update(zeros, zeros)
    r = m.compute()
    assert r["num_images"] == 3
    assert r["per_image_f1_mean"] == pytest.approx((0.5 + 8 / 9 + 0.0) / 3, abs=1e-6)


def test_ignore_index_pixels_are_excluded() -> None:
    # Image A widened with a column the truth marks 255, where the prediction says change.
    target = _batch([row + [255] for row in TARGET_A])
    pred = _batch([row + [1] for row in PRED_A])
    m = ChangeMetrics()
    m.update(pred, target)
    assert m.confusion_matrix.tolist() == [[3, 1], [1, 1]]
    r = m.compute()
    assert r["num_pixels"] == 6
    assert r["per_image_f1_mean"] == pytest.approx(0.5, abs=1e-6)


def test_mean_iou_skips_classes_absent_from_truth_and_prediction() -> None:
    m = ChangeMetrics(num_classes=3)
    # Class 2 appears nowhere; class 0: inter 1, union 2; class 1: inter 1, union 2.
    m.update(_batch([[0, 1, 1]]), _batch([[0, 0, 1]]))
    assert m.class_iou() == {0: 0.5, 1: 0.5}
    assert m.compute()["mean_iou"] == pytest.approx(0.5)
    # Class 2 predicted but never true: IoU 0, and it now counts.
    m.update(_batch([[2]]), _batch([[0]]))
    assert m.class_iou()[2] == 0.0
    assert m.compute()["mean_iou"] == pytest.approx((1 / 3 + 1 / 2 + 0.0) / 3)


def test_empty_accumulator_gives_zeros_not_nan() -> None:
    r = ChangeMetrics().compute()
    assert all(v == 0.0 for v in r.values()), r
    assert not any(math.isnan(v) for v in r.values())


def test_invalid_inputs_raise() -> None:
    m = ChangeMetrics()
    with pytest.raises(TypeError):
        m.update(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2, dtype=torch.int64))
    with pytest.raises(ValueError):
        m.update(_batch([[0, 3]]), _batch([[0, 1]]))
    with pytest.raises(ValueError):
        m.update(_batch([[0, 1]]), _batch([[0, 7]]))
    with pytest.raises(ValueError):
        m.update(_batch([[0, 1]]), _batch([[0, 1], [1, 0]]))


def test_state_round_trip_and_merge() -> None:
    whole = _metrics_ab()
    state = whole.state()
    assert state.dtype == torch.float64 and state.shape == (2 * 2 + 3,)
    assert ChangeMetrics.from_state(state).compute() == whole.compute()

    part_a, part_b = ChangeMetrics(), ChangeMetrics()
    part_a.update(_batch(PRED_A), _batch(TARGET_A))
    part_b.update(_batch(PRED_B), _batch(TARGET_B))
    part_a.merge(part_b)
    assert torch.equal(part_a.state(), state)

    with pytest.raises(ValueError):
        ChangeMetrics(num_classes=3).load_state(state)

    whole.reset()
    assert whole.compute()["num_images"] == 0.0


def _random_data(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    pred = torch.randint(0, 2, (6, 8, 8), generator=g)
    target = torch.randint(0, 2, (6, 8, 8), generator=g)
    target[torch.rand(target.shape, generator=g) < 0.1] = 255
    return pred, target


def _ddp_worker(rank: int, world_size: int, tmp: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=world_size)
    try:
        pred, target = _random_data(0)
        m = ChangeMetrics()
        m.update(pred[rank::world_size], target[rank::world_size])  # disjoint shards
        all_reduce_(m)
        torch.save(m.state(), f"{tmp}/state_{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_all_reduce_over_two_gloo_processes(tmp_path: Path) -> None:
    mp.spawn(_ddp_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    pred, target = _random_data(0)
    single = ChangeMetrics()
    single.update(pred, target)
    for rank in range(2):
        reduced = torch.load(tmp_path / f"state_{rank}.pt")
        assert torch.allclose(reduced, single.state(), rtol=0, atol=1e-9)
        assert ChangeMetrics.from_state(reduced).compute() == pytest.approx(single.compute())


def test_all_reduce_is_noop_without_process_group() -> None:
    m = _metrics_ab()
    before = m.state()
    assert all_reduce_(m) is m
    assert torch.equal(m.state(), before)
