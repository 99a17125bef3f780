"""Class weights and weighted cross entropy against hand arithmetic."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from changeseg.training.losses import (
    ChangeLoss,
    class_weights_from_counts,
    class_weights_from_masks,
    count_mask_pixels,
)

# One image, two pixels: logits per pixel (class 0, class 1).
LOGITS = torch.tensor([[[[2.0, -1.0]], [[0.5, 1.0]]]])  # (1, 2, 1, 2)
TARGET = torch.tensor([[[1, 0]]])  # pixel 0 is change, pixel 1 is not


def _nll(logit0: float, logit1: float, label: int) -> float:
    # -log softmax: log(exp(a) + exp(b)) - logit[label]
    return math.log(math.exp(logit0) + math.exp(logit1)) - (logit0, logit1)[label]


NLL0 = _nll(2.0, 0.5, 1)  # log(e^2 + e^0.5) - 0.5 ~= 1.7014
NLL1 = _nll(-1.0, 1.0, 0)  # log(e^-1 + e^1) + 1 ~= 2.1269


def test_weights_from_hand_counts() -> None:
    w = class_weights_from_counts(changed=10, unchanged=90)
    assert w.dtype == torch.float32
    assert w.tolist() == pytest.approx([0.1, 0.9])


def test_count_and_weights_from_masks_skip_ignore() -> None:
    masks = [
        np.array([[0, 1], [255, 0]], dtype=np.uint8),  # 1 changed, 2 unchanged, 1 ignored
        torch.tensor([[1, 1, 0, 0]]),  # 2 changed, 2 unchanged
    ]
    assert count_mask_pixels(masks) == (3, 4)
    assert class_weights_from_masks(masks).tolist() == pytest.approx([3 / 7, 4 / 7])


def test_mask_in_wrong_encoding_raises() -> None:
    with pytest.raises(ValueError, match="0, 1 or ignore_index"):
        count_mask_pixels([np.array([[0, 128]], dtype=np.uint8)])


def test_weight_errors() -> None:
    with pytest.raises(ValueError, match="no labelled pixels"):
        class_weights_from_counts(changed=0, unchanged=0)
    with pytest.raises(ValueError, match="no change pixels"):
        class_weights_from_counts(changed=0, unchanged=100)
    with pytest.raises(ValueError, match="no unchanged pixels"):
        class_weights_from_counts(changed=5, unchanged=0)
    with pytest.raises(ValueError, match="non-negative"):
        class_weights_from_counts(changed=-1, unchanged=5)
    # 0/255 masks read from disk: every pixel is "ignored", so there is no change to weight.
    with pytest.raises(ValueError, match="no labelled pixels"):
        class_weights_from_masks([np.full((2, 2), 255, dtype=np.uint8)])


def test_unweighted_loss_is_plain_mean() -> None:
    loss = ChangeLoss()(LOGITS, TARGET)
    assert loss.item() == pytest.approx((NLL0 + NLL1) / 2, rel=1e-6)


def test_weighted_loss_is_weighted_mean() -> None:
    # Unnormalised weights so the denominator sum(w_i) = 3 + 1 is visible.
    loss = ChangeLoss(weight=torch.tensor([1.0, 3.0]))(LOGITS, TARGET)
    assert loss.item() == pytest.approx((3.0 * NLL0 + 1.0 * NLL1) / (3.0 + 1.0), rel=1e-6)


def test_ignored_pixels_do_not_contribute() -> None:
    logits = torch.cat([LOGITS, torch.tensor([[[[9.0]], [[-9.0]]]])], dim=3)  # (1, 2, 1, 3)
    target = torch.tensor([[[1, 0, 255]]])
    loss = ChangeLoss(weight=torch.tensor([1.0, 3.0]))(logits, target)
    assert loss.item() == pytest.approx((3.0 * NLL0 + NLL1) / 4.0, rel=1e-6)


def test_weight_is_a_buffer() -> None:
    loss = ChangeLoss(weight=torch.tensor([0.1, 0.9]))
    assert "weight" in dict(loss.named_buffers())
    assert torch.equal(loss.state_dict()["weight"], torch.tensor([0.1, 0.9]))
    assert loss.to(torch.float64).weight.dtype == torch.float64  # follows module casts
    assert ChangeLoss().weight is None


def test_square_root_weighting_softens_the_ratio():
    # 10 changed / 90 unchanged: inverse frequencies 10 and 10/9; square roots 3.1623 and 1.0541.
    w = class_weights_from_counts(changed=10, unchanged=90, power=0.5)
    a, b = (100 / 90) ** 0.5, (100 / 10) ** 0.5
    assert w.tolist() == pytest.approx([a / (a + b), b / (a + b)], rel=1e-6)
    assert w[1] / w[0] == pytest.approx(3.0, rel=1e-6)  # sqrt(90 / 10), against 9 for the paper's weights
    paper = class_weights_from_counts(changed=10, unchanged=90, power=1.0)
    assert paper.tolist() == pytest.approx([0.1, 0.9])
