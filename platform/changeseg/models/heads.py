"""Segmentation heads: torchvision's own, applied to the MSF output map.

- ``fcn``: ``FCNHead`` (3x3 conv to in/4 + BN + ReLU + dropout 0.1, 1x1 to classes).
- ``deeplabv3``: ``DeepLabHead`` (ASPP with rates 12/24/36 and image pooling,
  3x3 conv + BN + ReLU, 1x1 to classes).

Caveat: the ASPP image-pooling branch applies BatchNorm to a 1x1 pooled map,
so in training mode it sees one value per channel per sample and fails with a
batch of 1 ("Expected more than 1 value per channel"). Train with batch >= 2
per device (or put the head in eval mode) when using ``deeplabv3``.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn
from torchvision.models.segmentation.deeplabv3 import DeepLabHead
from torchvision.models.segmentation.fcn import FCNHead

__all__ = ["create_head", "list_heads"]

_HEADS: dict[str, Callable[[int, int], nn.Module]] = {
    "fcn": FCNHead,
    "deeplabv3": DeepLabHead,
}


def list_heads() -> list[str]:
    """Names accepted by :func:`create_head`."""
    return sorted(_HEADS)


def create_head(*, name: str, in_channels: int, num_classes: int) -> nn.Module:
    """Build a head mapping ``in_channels`` to ``num_classes`` logits at the same resolution."""
    builder = _HEADS.get(name)
    if builder is None:
        raise ValueError(f"unknown head {name!r}; known heads: {', '.join(list_heads())}")
    return builder(in_channels, num_classes)
