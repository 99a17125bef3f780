"""Loss for binary / multi-class change segmentation, with C-3PO's class weighting.

The paper weights cross entropy by the *opposite* class frequency over the training
masks: weight[no change] = fraction of changed pixels, weight[change] = fraction of
unchanged pixels, so the rare change class is not drowned out. (ChangeSim's multi-class
runs use no weights and ignore index 255.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from changeseg.config import Config

__all__ = [
    "ChangeLoss",
    "capped_class_weights",
    "class_weights_from_counts",
    "soft_dice_loss",
    "class_weights_from_masks",
    "count_mask_pixels",
]


def class_weights_from_counts(*, changed: int, unchanged: int, power: float = 1.0) -> Tensor:
    """float32 ``[changed / total, unchanged / total]`` (index 0 = no change, 1 = change).

    That is, each class weighted by its inverse frequency, normalised to sum 1.
    ``power`` < 1 softens it: weight_k ∝ (1 / frequency_k) ** power, so ``power=0.5`` is the
    square-root variant; ``power=1`` is the paper's weighting exactly.
    """
    if changed < 0 or unchanged < 0:
        raise ValueError(f"pixel counts must be non-negative, got changed={changed}, unchanged={unchanged}")
    if changed == 0 and unchanged == 0:
        raise ValueError("no labelled pixels: cannot derive class weights from empty masks")
    if changed == 0:
        raise ValueError(
            "the training masks contain no change pixels (value 1); the paper's weighting would give "
            "the no-change class weight 0. Check the mask encoding (e.g. 0/255 masks must be "
            "converted to 0/1) or pass explicit weights."
        )
    if unchanged == 0:
        # Symmetric failure: the change class would get weight 0 and the loss would be 0/0.
        raise ValueError("the training masks contain no unchanged pixels; the change class would get weight 0")
    total = changed + unchanged
    if power == 1.0:
        return torch.tensor([changed / total, unchanged / total], dtype=torch.float32)
    inverse = torch.tensor([total / unchanged, total / changed], dtype=torch.float64) ** power
    return (inverse / inverse.sum()).float()


def count_mask_pixels(masks: Iterable[np.ndarray | Tensor], *, ignore_index: int = 255) -> tuple[int, int]:
    """Return ``(changed, unchanged)`` pixel counts over binary masks (1 = change, 0 = none).

    Pixels equal to ``ignore_index`` are skipped; any other value raises, because a mask in
    another encoding (0/255, boolean-as-float) would otherwise be counted wrongly.
    """
    changed = unchanged = 0
    for mask in masks:
        m = mask.detach().cpu().numpy() if isinstance(mask, Tensor) else np.asarray(mask)
        ones = int(np.count_nonzero(m == 1))
        zeros = int(np.count_nonzero(m == 0))
        ignored = int(np.count_nonzero(m == ignore_index))
        if ones + zeros + ignored != m.size:
            bad = np.setdiff1d(np.unique(m), [0, 1, ignore_index])
            raise ValueError(f"mask values must be 0, 1 or ignore_index={ignore_index}; found {bad[:5].tolist()}")
        changed += ones
        unchanged += zeros
    return changed, unchanged


def class_weights_from_masks(masks: Iterable[np.ndarray | Tensor], *, ignore_index: int = 255) -> Tensor:
    """Paper class weights computed from an iterable of binary training masks."""
    changed, unchanged = count_mask_pixels(masks, ignore_index=ignore_index)
    return class_weights_from_counts(changed=changed, unchanged=unchanged)


class ChangeLoss(nn.Module):
    """Cross entropy on (N, C, H, W) logits, optionally class-weighted, mean over valid pixels.

    The mean is weighted: ``sum(w[y_i] * nll_i) / sum(w[y_i])`` over pixels whose target is
    not ``ignore_index`` (torch's definition). A batch whose pixels are all ignored gives
    0 with zero gradients, not torch's NaN, so it cannot poison the weights (the training
    engine also skips such steps).
    """

    weight: Tensor | None

    def __init__(self, *, weight: Tensor | None = None, ignore_index: int = 255, dice: bool = False) -> None:
        super().__init__()
        # Plus the soft Dice loss of "any change" (1 - P(no change)) over the batch's valid pixels.
        self.dice = bool(dice)
        if weight is not None:
            weight = torch.as_tensor(weight, dtype=torch.float32)
            if weight.dim() != 1:
                raise ValueError(f"weight must be 1-D (one value per class), got shape {tuple(weight.shape)}")
        # A buffer, so .to(device) moves it and it is saved in state_dict with the model.
        self.register_buffer("weight", weight)
        self.ignore_index = ignore_index

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        weight = self.weight
        if weight is not None and weight.dtype != logits.dtype:
            weight = weight.to(logits.dtype)  # half/bfloat16 logits outside autocast
        target = target.long()
        per_pixel = F.cross_entropy(logits, target, weight=weight, ignore_index=self.ignore_index, reduction="none")
        valid = target != self.ignore_index
        if weight is None:
            denominator = valid.sum().to(per_pixel.dtype)
        else:
            denominator = (weight[target.masked_fill(~valid, 0)] * valid).sum()
        # clamp: an all-ignored batch gives 0 / tiny = 0 instead of 0 / 0.
        loss = per_pixel.sum() / denominator.clamp_min(torch.finfo(per_pixel.dtype).tiny)
        if self.dice:
            loss = loss + soft_dice_loss(logits, target, ignore_index=self.ignore_index)
        return loss

    def extra_repr(self) -> str:
        w = None if self.weight is None else [round(v, 4) for v in self.weight.tolist()]
        return f"weight={w}, ignore_index={self.ignore_index}, dice={self.dice}"


def soft_dice_loss(logits: Tensor, target: Tensor, *, ignore_index: int = 255, smooth: float = 1.0) -> Tensor:
    """``1 - (2 sum(p t) + s) / (sum(p) + sum(t) + s)`` of P(any change) over valid pixels.

    Dice rewards overlap, not pixel counts, so on 1-10 % change it does not pay to call
    everything change as area-ratio weights do; ``smooth`` makes an empty batch 0.
    """
    valid = (target != ignore_index).to(logits.dtype)
    p = (1.0 - logits.softmax(1)[:, 0]) * valid
    t = ((target != 0) & (target != ignore_index)).to(logits.dtype)
    return 1.0 - (2.0 * (p * t).sum() + smooth) / (p.sum() + t.sum() + smooth)


def capped_class_weights(*, changed: int, unchanged: int, cap: float) -> Tensor:
    """Inverse-frequency weights whose change/no-change ratio is at most ``cap``, summing to 1."""
    class_weights_from_counts(changed=changed, unchanged=unchanged)  # the same checks of the counts
    ratio = min(unchanged / changed, cap)
    return torch.tensor([1.0 / (1.0 + ratio), ratio / (1.0 + ratio)], dtype=torch.float32)


def class_weights_for(cfg: Config, counts: Callable[[], tuple[int, int]]) -> list[float] | None:
    """The loss weights ``train.class_weights`` asks for; ``counts()`` gives the training
    masks' (changed, unchanged) pixels and is only called when they are needed."""
    spec = cfg.train.class_weights
    if spec == "none":
        return None
    if isinstance(spec, list):
        if len(spec) != cfg.model.resolved_num_classes():
            raise ValueError(
                f"train.class_weights has {len(spec)} values but model.num_classes is {cfg.model.resolved_num_classes()}"
            )
        return [float(w) for w in spec]
    if cfg.model.resolved_num_classes() != 2:
        # The paper leaves multi-class (ChangeSim) training unweighted.
        return None
    changed, unchanged = counts()
    if spec == "capped":
        return capped_class_weights(changed=changed, unchanged=unchanged, cap=cfg.train.class_weight_cap).tolist()
    power = 0.5 if spec == "sqrt" else 1.0
    return class_weights_from_counts(changed=changed, unchanged=unchanged, power=power).tolist()
