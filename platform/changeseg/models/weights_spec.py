"""Where a model's initial weights come from, parsed once from the ``weights`` string.

Torch-free: the config schema parses ``model.weights`` at validation, so a typo fails
before any Ray process starts, and the factory and the loaders
(:mod:`changeseg.models.pretrained`) receive a :class:`WeightsSpec`, never the string.

The grammar users write (YAML, overrides, ``create_model(weights=...)``):

- null: the model's default (ImageNet for the paper presets, random otherwise);
- ``none``: random weights, presets included;
- ``imagenet``: the backbone's ImageNet classification weights;
- ``torchvision:<segmentation model>``: a torchvision segmentation model's backbone and head;
- anything else: a changeseg checkpoint (a folder, ``file://``, ``s3://`` or another
  ``scheme://`` folder, ``models:/name/3``, ``models:/name@alias``) used as a warm start.

``weights_file`` (a local file with the ImageNet or segmentation weights) travels in
the spec as ``file``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, get_args

__all__ = ["SEGMENTATION_SOURCES", "SegmentationSource", "WeightsKind", "WeightsSpec", "parse_weights"]

WeightsKind = Literal["none", "imagenet", "torchvision", "checkpoint"]
TORCHVISION_PREFIX = "torchvision:"
# "scheme:" without "//" that is not a registry URI: a typo (``timm:resnet18``), not a folder.
_BARE_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:(?!//)")


@dataclass(frozen=True)
class SegmentationSource:
    """What a torchvision segmentation model fixes in the change model."""

    backbone: str
    head: str
    head_channels: int


SEGMENTATION_SOURCES: dict[str, SegmentationSource] = {
    "fcn_resnet50": SegmentationSource("resnet50", "fcn", 2048),
    "fcn_resnet101": SegmentationSource("resnet101", "fcn", 2048),
    "deeplabv3_resnet50": SegmentationSource("resnet50", "deeplabv3", 2048),
    "deeplabv3_resnet101": SegmentationSource("resnet101", "deeplabv3", 2048),
    "deeplabv3_mobilenet_v3_large": SegmentationSource("mobilenet_v3_large", "deeplabv3", 960),
}


@dataclass(frozen=True)
class WeightsSpec:
    """A parsed ``weights`` value.

    ``source``: the segmentation model name (``torchvision``) or the checkpoint URI
    (``checkpoint``); None otherwise. ``file``: ``weights_file``, used by ``imagenet``
    and ``torchvision``.
    """

    kind: WeightsKind = "none"
    source: str | None = None
    file: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in get_args(WeightsKind):
            raise ValueError(f"unknown weights kind {self.kind!r}; known: {', '.join(get_args(WeightsKind))}")
        if self.kind == "torchvision" and self.source not in SEGMENTATION_SOURCES:
            raise ValueError(
                f"unknown segmentation model {self.source!r} in weights={self.text!r}; "
                f"known: {', '.join(TORCHVISION_PREFIX + k for k in sorted(SEGMENTATION_SOURCES))}"
            )
        needs_source = self.kind in ("torchvision", "checkpoint")
        if needs_source != bool(self.source):
            raise ValueError(f"weights kind {self.kind!r} {'needs' if needs_source else 'takes no'} source")

    @property
    def text(self) -> str:
        """The string a user writes for this spec (``weights_file`` aside)."""
        if self.kind == "torchvision":
            return TORCHVISION_PREFIX + str(self.source)
        return str(self.source) if self.kind == "checkpoint" else self.kind

    @property
    def segmentation(self) -> SegmentationSource | None:
        """What a ``torchvision:`` source fixes in the architecture; None for other kinds."""
        return SEGMENTATION_SOURCES[self.source] if self.kind == "torchvision" else None

    def __str__(self) -> str:
        return self.text


def parse_weights(value: object, *, file: str | None = None) -> WeightsSpec | None:
    """``weights`` as written (or an already parsed spec) -> :class:`WeightsSpec`; None stays None.

    Raises:
        ValueError: not a string, an empty string, an unknown segmentation model, or
            ``<scheme>:`` that names no weight source (the message lists the grammar).
    """
    if value is None:
        return None
    if isinstance(value, WeightsSpec):
        return value if file is None else WeightsSpec(value.kind, value.source, file)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"weights must be a non-empty string, got {value!r}")
    text = value.strip()
    if text in ("none", "imagenet"):
        return WeightsSpec(text, None, file)
    if text.startswith(TORCHVISION_PREFIX):
        return WeightsSpec("torchvision", text.removeprefix(TORCHVISION_PREFIX), file)
    if _BARE_SCHEME.match(text) and not text.startswith("models:/"):
        raise ValueError(
            f"unknown weights {text!r}: expected none, imagenet, torchvision:<segmentation model> "
            "or a changeseg checkpoint (folder, file://, s3://, models:/<name>/<version>, models:/<name>@<alias>)"
        )
    return WeightsSpec("checkpoint", text, file)
