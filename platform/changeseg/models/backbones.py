"""Siamese feature encoders: one network, shared weights, run once per image.

Every backbone follows the :class:`Backbone` contract so that the rest of the
model (MTF, MSF, head) only needs ``channels`` and ``strides`` to size itself.

Registered names:

- ``resnet18``, ``resnet34``: torchvision ResNets, strides 4, 8, 16, 32.
- ``resnet50``, ``resnet101``: with the dilated last two stages that torchvision's
  segmentation models use (strides 4, 8, 8, 8), so their weights transplant 1:1.
- ``vgg16_bn``: the outputs of pools 2-5 (strides 4, 8, 16, 32).
- ``mobilenet_v2``: strides 4, 8, 16, 32 (the last stage ends with the final 1x1 conv
  to 1280 channels, as the C-3PO authors use it).
- ``mobilenet_v3_large``: dilated like torchvision's ``deeplabv3_mobilenet_v3_large``
  (strides 4, 8, 16, 16; the last map is its 960-channel output).
- ``swin_t``: torchvision Swin-T stages (strides 4, 8, 16, 32).
- ``efficientnet_lite0``: timm's EfficientNet-Lite0 (strides 4, 8, 16, 32).
- ``timm:<name>``: any timm model that supports ``features_only`` (its last 4 scales).

Weights are not chosen here: :mod:`changeseg.models.pretrained` loads ImageNet,
segmentation or checkpoint weights into a freshly built backbone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torchvision
from torch import Tensor, nn

from .channels import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "Backbone",
    "SequentialBackbone",
    "ResNetBackbone",
    "SwinBackbone",
    "TimmBackbone",
    "create_backbone",
    "list_backbones",
]


class Backbone(nn.Module):
    """Multi-scale encoder contract.

    Attributes:
        name: registry name, kept so a model's config can rebuild it.
        channels: channels of each returned feature map, finest first.
        strides: downsampling factor of each feature map, finest first.
        rgb_mean, rgb_std: the input normalisation its pretrained weights expect (R, G, B).
        in_channels, rgb_channels: the input bands, set by
            :func:`~changeseg.models.channels.adapt_first_conv`.

    ``forward(x)`` takes a batch normalised with ``rgb_mean`` / ``rgb_std`` and returns one
    feature map per scale, finest first, as ``(N, C, H, W)`` tensors.
    """

    name: str
    channels: tuple[int, ...]
    strides: tuple[int, ...]
    rgb_mean: tuple[float, float, float] = IMAGENET_MEAN
    rgb_std: tuple[float, float, float] = IMAGENET_STD
    in_channels: int = 3
    rgb_channels: tuple[int, ...] | None = None

    def forward(self, x: Tensor) -> list[Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def map_key(self, key: str, *, source: str) -> str | None:
        """This backbone's state-dict key for ``key`` of a foreign state dict, or None to skip it.

        ``source`` is ``"classification"`` (a torchvision/timm classification model's
        own keys) or ``"segmentation"`` (a torchvision segmentation model, whose
        backbone keys start with ``backbone.``).
        """
        if source == "segmentation":
            return key.removeprefix("backbone.") if key.startswith("backbone.") else None
        return key


def _measure(backbone: Backbone) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Channels and strides from one small forward pass (exact for dilated stages too)."""
    was_training = backbone.training
    size = 64
    with torch.no_grad():
        feats = backbone.eval()(torch.zeros(1, 3, size, size))
    backbone.train(was_training)
    return tuple(int(f.shape[1]) for f in feats), tuple(size // int(f.shape[-1]) for f in feats)


class ResNetBackbone(Backbone):
    """torchvision ResNet cut after layer1..layer4.

    avgpool and fc are dropped: they are classification-only and would hold
    unused parameters (and unused-parameter errors under DDP).
    """

    def __init__(self, net: torchvision.models.ResNet, *, name: str) -> None:
        super().__init__()
        self.name = name
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2 = net.layer1, net.layer2
        self.layer3, self.layer4 = net.layer3, net.layer4
        self.channels, self.strides = _measure(self)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.stem(x)
        features = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            features.append(x)
        return features

    def map_key(self, key: str, *, source: str) -> str | None:
        key = super().map_key(key, source=source)
        if key is None or key.startswith("fc."):
            return None
        for prefix, ours in (("conv1.", "stem.0."), ("bn1.", "stem.1.")):
            if key.startswith(prefix):
                return ours + key[len(prefix) :]
        return key


class SequentialBackbone(Backbone):
    """A torchvision ``features`` Sequential cut into stages at fixed indices.

    ``self.features`` keeps torchvision's own module names, so classification
    (``features.N.*``) and segmentation (``backbone.N.*``) state dicts map directly.
    """

    def __init__(self, features: nn.Sequential, *, ends: Sequence[int], name: str) -> None:
        super().__init__()
        self.name = name
        self.features = features[: ends[-1]]
        self.ends = tuple(ends)
        self.channels, self.strides = _measure(self)

    def forward(self, x: Tensor) -> list[Tensor]:
        out, start = [], 0
        for end in self.ends:
            for i in range(start, end):
                x = self.features[i](x)
            out.append(x)
            start = end
        return out

    def map_key(self, key: str, *, source: str) -> str | None:
        if source == "segmentation":
            return "features." + key.removeprefix("backbone.") if key.startswith("backbone.") else None
        return key if key.startswith("features.") and int(key.split(".")[1]) < self.ends[-1] else None


class SwinBackbone(SequentialBackbone):
    """torchvision Swin: channels-last stages returned as ``(N, C, H, W)``."""

    def forward(self, x: Tensor) -> list[Tensor]:
        return [f.permute(0, 3, 1, 2) for f in super().forward(x)]


class TimmBackbone(Backbone):
    """Any timm model built with ``features_only=True`` (its last four scales)."""

    def __init__(
        self,
        model_name: str,
        *,
        name: str,
        pretrained: bool = False,
        pretrained_file: str | None = None,
        timm_stats: bool = False,
    ) -> None:
        """``pretrained`` uses timm's own loader (its hub cache, or ``pretrained_file``);
        ``timm_stats`` takes the input normalisation from timm's ``pretrained_cfg``."""
        super().__init__()
        import timm  # lazy: timm takes seconds to import and only timm backbones need it

        self.name = name
        self.model_name = model_name
        probe = timm.create_model(model_name, pretrained=False, features_only=True)
        count = len(probe.feature_info.channels())
        indices = tuple(range(max(0, count - 4), count))
        kwargs: dict = {"features_only": True, "out_indices": indices}
        if pretrained_file:
            kwargs["pretrained_cfg_overlay"] = {"file": pretrained_file}
        self.net = timm.create_model(model_name, pretrained=pretrained, **kwargs)
        self.channels = tuple(int(c) for c in self.net.feature_info.channels())
        self.strides = tuple(int(r) for r in self.net.feature_info.reduction())
        if timm_stats:
            self.rgb_mean, self.rgb_std = _pretrained_stats(getattr(self.net, "pretrained_cfg", None) or {})

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = list(self.net(x))
        if feats and feats[0].shape[1] != self.channels[0]:  # a few timm models return NHWC
            feats = [f.permute(0, 3, 1, 2) for f in feats]
        return feats

    def map_key(self, key: str, *, source: str) -> str | None:
        if source == "segmentation":
            return None
        return "net." + key


def _pretrained_stats(cfg: dict) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std of a timm ``pretrained_cfg`` when it gives three of each, else ImageNet's."""
    mean, std = cfg.get("mean"), cfg.get("std")
    if mean is None or std is None or len(mean) != 3 or len(std) != 3:
        return IMAGENET_MEAN, IMAGENET_STD
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def _resnet(name: str) -> Backbone:
    constructor = getattr(torchvision.models, name)
    # Dilated like torchvision's fcn_/deeplabv3_resnet50/101, so transplanted
    # segmentation weights see the receptive fields they were trained with.
    dilation = [False, True, True] if name in ("resnet50", "resnet101") else None
    return ResNetBackbone(constructor(weights=None, replace_stride_with_dilation=dilation), name=name)


def _vgg16_bn(name: str) -> Backbone:
    features = torchvision.models.vgg16_bn(weights=None).features
    pools = [i + 1 for i, m in enumerate(features) if isinstance(m, nn.MaxPool2d)]
    return SequentialBackbone(features, ends=pools[1:], name=name)


def _mobilenet_v2(name: str) -> Backbone:
    features = torchvision.models.mobilenet_v2(weights=None).features
    return SequentialBackbone(features, ends=(4, 7, 14, len(features)), name=name)


def _mobilenet_v3_large(name: str) -> Backbone:
    features = torchvision.models.mobilenet_v3_large(weights=None, dilated=True).features
    return SequentialBackbone(features, ends=(4, 7, 13, len(features)), name=name)


def _swin_t(name: str) -> Backbone:
    features = torchvision.models.swin_t(weights=None).features
    return SwinBackbone(features, ends=(2, 4, 6, 8), name=name)


def _timm(name: str) -> Backbone:
    # Any timm model: normalise as its weights were trained (ImageNet's, 0.5, ...).
    return TimmBackbone(name.removeprefix("timm:"), name=name, timm_stats=True)


_BACKBONES: dict[str, Callable[[str], Backbone]] = {
    "resnet18": _resnet,
    "resnet34": _resnet,
    "resnet50": _resnet,
    "resnet101": _resnet,
    "vgg16_bn": _vgg16_bn,
    "mobilenet_v2": _mobilenet_v2,
    "mobilenet_v3_large": _mobilenet_v3_large,
    "swin_t": _swin_t,
    "efficientnet_lite0": lambda name: TimmBackbone("efficientnet_lite0", name=name),
}


def list_backbones() -> list[str]:
    """Names accepted by :func:`create_backbone` (plus ``timm:<any features_only model>``)."""
    return sorted(_BACKBONES)


def is_backbone_name(name: str) -> bool:
    return name in _BACKBONES or (name.startswith("timm:") and len(name) > len("timm:"))


def create_backbone(*, name: str, pretrained: bool = False) -> Backbone:
    """Build a registered backbone; ``pretrained`` loads ImageNet weights.

    Raises:
        ValueError: unknown ``name`` (or a timm model without ``features_only``).
        RuntimeError: pretrained weights requested but not obtainable.
    """
    if not is_backbone_name(name):
        raise ValueError(
            f"unknown backbone {name!r}; known backbones: {', '.join(list_backbones())}, or timm:<model name>"
        )
    if name.startswith("timm:"):
        try:
            backbone = _timm(name)
        except RuntimeError as err:  # timm: unknown model, or no features_only support
            raise ValueError(f"backbone {name!r}: {err}") from None
    else:
        backbone = _BACKBONES[name](name)
    if pretrained:
        from .pretrained import load_imagenet_weights  # lazy: pretrained imports this module

        load_imagenet_weights(backbone)
    return backbone
