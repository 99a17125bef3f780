"""Fully convolutional change-detection baselines (Daudt, Le Saux, Boulch, ICIP 2018).

Three U-Net-like networks with a 4-level encoder (16, 32, 64, 128 channels; 3x3 conv,
BatchNorm, ReLU, dropout; 2x2 max-pool) and a transposed-conv decoder:

- FC-EF: early fusion, t0 and t1 stacked as one 6-channel image.
- FC-Siam-conc: one encoder applied to each date (shared weights); every decoder
  level takes the upsampled map plus the skip features of both dates.
- FC-Siam-diff: as Siam-conc, but the skips are ``|f0 - f1|``.

In both siamese variants the decoder starts from t1's bottleneck, as in the paper's
networks, so they are not symmetric in (t0, t1).

The :class:`~changeseg.models.contract.ChangeModel` contract, as C-3PO: ``forward(t0, t1)``
takes float ``(N, 3, H, W)`` in [0, 1], normalises with ImageNet statistics inside and
returns logits ``(N, num_classes, H, W)`` for any H, W; no backbone, no MTF branches. Pooling rounds up (``ceil_mode``) and
each upsampled map is cropped to its skip's size, so odd sizes work without padding
arithmetic and exported graphs keep dynamic height and width.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from .channels import IMAGENET_MEAN, IMAGENET_STD
from .contract import ChangeModel
from .registry import BASELINE, register_builder

__all__ = ["BASELINES", "FCEF", "FCSiamConc", "FCSiamDiff", "build_baseline"]

ENCODER_WIDTHS = (16, 32, 64, 128)
# Convs per level, encoder and decoder alike: two at the two finest levels, three below.
CONVS_PER_LEVEL = (2, 2, 3, 3)
DROPOUT = 0.2


def _conv_block(in_ch: int, out_ch: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_ch, out_ch, 3, padding=1),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
        nn.Dropout2d(DROPOUT),
    ]


class Features(NamedTuple):
    """What the decoder consumes: per-level skip tensors (finest first) and the pooled bottleneck."""

    skips: list[Tensor]
    bottleneck: Tensor


class Encoder(nn.Module):
    """Four levels of conv blocks; returns each level's last activation and the pooled map below."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        levels = []
        prev = in_channels
        for width, n in zip(ENCODER_WIDTHS, CONVS_PER_LEVEL):
            layers: list[nn.Module] = []
            for _ in range(n):
                layers += _conv_block(prev, width)
                prev = width
            levels.append(nn.Sequential(*layers))
        self.levels = nn.ModuleList(levels)
        self.pool = nn.MaxPool2d(2, ceil_mode=True)

    def forward(self, x: Tensor) -> Features:
        skips = []
        for level in self.levels:
            x = level(x)
            skips.append(x)
            x = self.pool(x)
        return Features(skips, x)


class Decoder(nn.Module):
    """Transposed-conv upsampling, concat with skip features, conv blocks; last conv gives logits.

    ``skip_factor`` is how many skip tensors of a level's width are concatenated
    (1 for EF and Siam-diff, 2 for Siam-conc).
    """

    def __init__(self, *, skip_factor: int, num_classes: int) -> None:
        super().__init__()
        self.up = nn.ModuleList()
        self.levels = nn.ModuleList()
        # Coarsest level first; each level ends at the next finer level's width.
        for i in reversed(range(len(ENCODER_WIDTHS))):
            width = ENCODER_WIDTHS[i]
            self.up.append(nn.ConvTranspose2d(width, width, 3, stride=2, padding=1, output_padding=1))
            out = ENCODER_WIDTHS[i - 1] if i > 0 else num_classes
            chans = [width * (1 + skip_factor)] + [width] * (CONVS_PER_LEVEL[i] - 1) + [out]
            layers: list[nn.Module] = []
            for j, (a, b) in enumerate(zip(chans[:-1], chans[1:])):
                if i == 0 and j == len(chans) - 2:
                    layers.append(nn.Conv2d(a, b, 3, padding=1))  # logits: no BN, ReLU or dropout
                else:
                    layers += _conv_block(a, b)
            self.levels.append(nn.Sequential(*layers))

    def forward(self, bottleneck: Tensor, skips: list[list[Tensor]]) -> Tensor:
        """``skips[k]`` holds the tensors concatenated at level k (finest first)."""
        x = bottleneck
        for up, level, parts in zip(self.up, self.levels, reversed(skips)):
            ref = parts[0]
            # Pooling rounded up, so the upsampled map is at least the skip's size: crop it.
            x = up(x)[:, :, : ref.shape[2], : ref.shape[3]]
            x = level(torch.cat([x, *parts], dim=1))
        return x


class _FCBase(ChangeModel):
    name = ""

    def __init__(self, *, num_classes: int) -> None:
        super().__init__(num_classes=num_classes, in_channels=3, mean=IMAGENET_MEAN, std=IMAGENET_STD)
        self.config: dict[str, Any] = {"name": self.name, "num_classes": num_classes}

    def features(self, t0: Tensor, t1: Tensor) -> tuple[Tensor, list[list[Tensor]]]:
        """(bottleneck, per-level skip tensors) that the decoder receives."""
        raise NotImplementedError

    def forward(self, t0: Tensor, t1: Tensor) -> Tensor:
        """Change logits ``(N, num_classes, H, W)`` for images t0, t1 ``(N, 3, H, W)`` in [0, 1]."""
        self.check_pair(t0, t1)
        bottleneck, skips = self.features(t0, t1)
        return self.decoder(bottleneck, skips)


class FCEF(_FCBase):
    """FC-EF: early fusion of the two dates as one 6-channel input."""

    name = "fc_ef"

    def __init__(self, *, num_classes: int = 2) -> None:
        super().__init__(num_classes=num_classes)
        self.encoder = Encoder(6)
        self.decoder = Decoder(skip_factor=1, num_classes=num_classes)

    def features(self, t0: Tensor, t1: Tensor) -> tuple[Tensor, list[list[Tensor]]]:
        f = self.encoder(torch.cat([self.normalise(t0), self.normalise(t1)], dim=1))
        return f.bottleneck, [[s] for s in f.skips]


class FCSiamConc(_FCBase):
    """FC-Siam-conc: shared encoder per date; skips of both dates concatenated."""

    name = "fc_siam_conc"

    def __init__(self, *, num_classes: int = 2) -> None:
        super().__init__(num_classes=num_classes)
        self.encoder = Encoder(3)
        self.decoder = Decoder(skip_factor=2, num_classes=num_classes)

    def features(self, t0: Tensor, t1: Tensor) -> tuple[Tensor, list[list[Tensor]]]:
        # Two passes, not one on a stacked batch: BatchNorm statistics per date in training.
        f0 = self.encoder(self.normalise(t0))
        f1 = self.encoder(self.normalise(t1))
        return f1.bottleneck, [[a, b] for a, b in zip(f0.skips, f1.skips)]


class FCSiamDiff(_FCBase):
    """FC-Siam-diff: shared encoder per date; skips are ``|f0 - f1|``."""

    name = "fc_siam_diff"

    def __init__(self, *, num_classes: int = 2) -> None:
        super().__init__(num_classes=num_classes)
        self.encoder = Encoder(3)
        self.decoder = Decoder(skip_factor=1, num_classes=num_classes)

    def features(self, t0: Tensor, t1: Tensor) -> tuple[Tensor, list[list[Tensor]]]:
        f0 = self.encoder(self.normalise(t0))
        f1 = self.encoder(self.normalise(t1))
        return f1.bottleneck, [[torch.abs(a - b)] for a, b in zip(f0.skips, f1.skips)]


BASELINES: dict[str, type[_FCBase]] = {cls.name: cls for cls in (FCEF, FCSiamConc, FCSiamDiff)}
"""The class of each registered baseline name; each takes keyword-only ``num_classes``."""


@register_builder(BASELINE)
def build_baseline(*, name: str, num_classes: int, in_channels: int = 3) -> _FCBase:
    """The baseline family's builder: the network ``name`` names, on RGB pairs."""
    if in_channels != 3:
        raise ValueError(f"model {name!r} takes RGB images (in_channels=3), got in_channels={in_channels!r}")
    return BASELINES[name](num_classes=num_classes)
