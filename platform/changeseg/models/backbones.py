"""Siamese feature encoders: one network, shared weights, run once per image.

Every backbone follows the :class:`Backbone` contract so that the rest of the
model (MTF, MSF, head) only needs ``channels`` and ``strides`` to size itself.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models import ResNet18_Weights, ResNet34_Weights

__all__ = ["Backbone", "ResNetBackbone", "create_backbone", "list_backbones"]


class Backbone(nn.Module):
    """Multi-scale encoder contract.

    Attributes:
        name: registry name, kept so a model's config can rebuild it.
        channels: channels of each returned feature map, finest first.
        strides: downsampling factor of each feature map, finest first.

    ``forward(x)`` returns one feature map per scale, finest first.
    """

    name: str
    channels: tuple[int, ...]
    strides: tuple[int, ...]

    def forward(self, x: Tensor) -> list[Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError


class ResNetBackbone(Backbone):
    """torchvision ResNet cut after layer1..layer4 (strides 4, 8, 16, 32).

    avgpool and fc are dropped: they are classification-only and would hold
    unused parameters (and unused-parameter errors under DDP).
    """

    def __init__(self, net: torchvision.models.ResNet, *, name: str) -> None:
        super().__init__()
        self.name = name
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2 = net.layer1, net.layer2
        self.layer3, self.layer4 = net.layer3, net.layer4
        # Channels read from the layers themselves so BasicBlock and
        # Bottleneck variants both come out right.
        self.channels = tuple(_out_channels(layer) for layer in self._layers())
        self.strides = (4, 8, 16, 32)

    def _layers(self) -> tuple[nn.Module, ...]:
        return (self.layer1, self.layer2, self.layer3, self.layer4)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.stem(x)
        features = []
        for layer in self._layers():
            x = layer(x)
            features.append(x)
        return features


def _out_channels(layer: nn.Module) -> int:
    last_block = list(layer.children())[-1]
    bn = last_block.bn3 if hasattr(last_block, "bn3") else last_block.bn2
    return bn.num_features


# name -> (torchvision constructor, ImageNet weights used when pretrained=True)
_RESNETS: dict[str, tuple[Callable[..., torchvision.models.ResNet], torchvision.models.WeightsEnum]] = {
    "resnet18": (torchvision.models.resnet18, ResNet18_Weights.IMAGENET1K_V1),
    "resnet34": (torchvision.models.resnet34, ResNet34_Weights.IMAGENET1K_V1),
}


def _build_resnet(name: str, pretrained: bool) -> Backbone:
    constructor, weights = _RESNETS[name]
    if not pretrained:
        return ResNetBackbone(constructor(weights=None), name=name)
    try:
        # torchvision's own loader: uses $TORCH_HOME/hub/checkpoints if the
        # file is there, otherwise downloads (and checks the hash).
        net = constructor(weights=weights, progress=False)
    except Exception as exc:  # no network, bad proxy, truncated file, ...
        cache_dir = f"{torch.hub.get_dir()}/checkpoints"
        filename = weights.url.rsplit("/", 1)[-1]
        raise RuntimeError(
            f"could not load pretrained {name} weights ({type(exc).__name__}: {exc}). "
            f"Download {weights.url} and place it as {cache_dir}/{filename} "
            f"(i.e. in $TORCH_HOME/hub/checkpoints/) to use it offline."
        ) from exc
    return ResNetBackbone(net, name=name)


_BACKBONES: dict[str, Callable[[str, bool], Backbone]] = {
    "resnet18": _build_resnet,
    "resnet34": _build_resnet,
}


def list_backbones() -> list[str]:
    """Names accepted by :func:`create_backbone`."""
    return sorted(_BACKBONES)


def create_backbone(*, name: str, pretrained: bool = False) -> Backbone:
    """Build a registered backbone; ``pretrained`` loads ImageNet weights.

    Raises:
        ValueError: unknown ``name``.
        RuntimeError: pretrained weights requested but not obtainable.
    """
    builder = _BACKBONES.get(name)
    if builder is None:
        raise ValueError(f"unknown backbone {name!r}; known backbones: {', '.join(list_backbones())}")
    return builder(name, pretrained)
