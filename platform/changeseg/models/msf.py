"""MSF: FPN-like merge of the coarsest ``num_scales`` fused maps into one 1/4 map."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["MSF"]


class MSF(nn.Module):
    """Merge spatial features across scales.

    Per used scale: ``inner`` = 1x1 conv to ``width`` + ReLU and ``layer`` =
    3x3 conv + ReLU (bias, no BatchNorm, as published). Top-down from the
    coarsest scale, ``last = inner(c) + nearest_upsample(last)`` and the scale's
    output is ``layer(last)``. All outputs are bilinearly resized to the output
    size, concatenated and reduced by 3x3 conv + BN + ReLU to ``width``
    channels.

    Args:
        in_channels: channels of every backbone scale, finest first.
        num_scales: how many of the coarsest scales to use (1..len(in_channels)).
        width: channels of the inner maps.
        out_channels: channels of the output (default ``width``).
    """

    def __init__(
        self, in_channels: Sequence[int], *, num_scales: int = 4, width: int = 512, out_channels: int | None = None
    ) -> None:
        super().__init__()
        in_channels = tuple(int(c) for c in in_channels)
        if not 1 <= num_scales <= len(in_channels):
            raise ValueError(f"num_scales must be in 1..{len(in_channels)}, got {num_scales!r}")
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width!r}")
        self.in_channels = in_channels
        self.num_scales = num_scales
        self.used_channels = in_channels[-num_scales:]
        self.out_channels = out_channels = width if out_channels is None else out_channels
        if out_channels < 1:
            raise ValueError(f"out_channels must be >= 1, got {out_channels!r}")
        self.inner = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, width, 1), nn.ReLU(inplace=True)) for c in self.used_channels
        )
        self.layer = nn.ModuleList(
            nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True)) for _ in self.used_channels
        )
        self.reduce = nn.Sequential(
            nn.Conv2d(width * num_scales, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, features: Sequence[Tensor], *, size: tuple[int, int] | None = None) -> Tensor:
        """Merge ``features`` (finest first) into one ``out_channels``-channel map.

        ``features`` is either every backbone scale (the coarsest
        ``num_scales`` are used) or only the used scales. The output has the
        spatial size ``size`` if given, else that of ``features[0]`` (so with
        every scale passed in, the finest backbone scale: 1/4 for ResNets).
        """
        if len(features) == len(self.in_channels):
            used = list(features[-self.num_scales :])
        elif len(features) == self.num_scales:
            used = list(features)
        else:
            raise ValueError(
                f"MSF expects {len(self.in_channels)} or {self.num_scales} feature maps, got {len(features)}"
            )
        for f, c in zip(used, self.used_channels):
            if f.shape[1] != c:
                raise ValueError(f"MSF expects channels {self.used_channels}, got {[u.shape[1] for u in used]}")
        out_size = tuple(size) if size is not None else tuple(features[0].shape[-2:])

        outputs: list[Tensor] = [None] * len(used)  # type: ignore[list-item]
        last: Tensor | None = None
        for idx in reversed(range(len(used))):
            lateral = self.inner[idx](used[idx])
            if last is not None:
                # size=, not scale_factor=: odd sizes do not halve exactly.
                lateral = lateral + F.interpolate(last, size=lateral.shape[-2:], mode="nearest")
            last = lateral
            outputs[idx] = self.layer[idx](last)

        # Always resized (an identity at equal size) rather than branching on
        # shapes, so traced/exported graphs stay valid for every input size.
        resized = [F.interpolate(o, size=out_size, mode="bilinear", align_corners=False) for o in outputs]
        return self.reduce(torch.cat(resized, dim=1))
