"""C-3PO: siamese backbone -> MTF per scale -> MSF -> segmentation head."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .backbones import Backbone
from .channels import adapt_first_conv, channel_stats
from .heads import create_head
from .msf import MSF
from .mtf import MTF

__all__ = ["C3PO", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class C3PO(nn.Module):
    """Pixel-wise change segmentation between two RGB images.

    Inputs are two float tensors ``(N, 3, H, W)`` in [0, 1]; ImageNet
    normalisation happens inside (non-persistent buffers), so serving and
    exported graphs need no separate preprocessing. Output logits are
    ``(N, num_classes, H, W)`` for any H, W.

    Args:
        backbone: shared encoder, applied to t0 and t1 separately.
        mtf: MTF mode (see :data:`changeseg.models.mtf.MTF_MODES`).
        msf_scales: how many of the coarsest backbone scales are fused (one MTF each).
        head: head name (``fcn`` or ``deeplabv3``).
        num_classes: output classes (2 for binary change).
        msf_width: channels inside MSF.
        head_channels: channels from MSF into the head (default ``msf_width``); a head
            transplanted from a segmentation model needs its own input width here.
    """

    def __init__(
        self,
        *,
        backbone: Backbone,
        mtf: str,
        msf_scales: int,
        head: str,
        num_classes: int,
        msf_width: int = 512,
        head_channels: int | None = None,
        in_channels: int = 3,
        rgb_channels: list[int] | None = None,
        channel_mean: list[float] | None = None,
        channel_std: list[float] | None = None,
    ) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
        self.backbone = backbone
        # MSF validates msf_scales against the backbone before anything else uses it.
        self.msf = MSF(backbone.channels, num_scales=msf_scales, width=msf_width, out_channels=head_channels)
        self.mtf = nn.ModuleList(MTF(c, mtf) for c in backbone.channels[-msf_scales:])
        self.head = create_head(name=head, in_channels=self.msf.out_channels, num_classes=num_classes)
        # Any band count: the first convolution is rebuilt, normalisation is per channel.
        mean, std = channel_stats(in_channels, rgb_channels=rgb_channels, mean=channel_mean, std=channel_std)
        adapt_first_conv(backbone, in_channels, rgb_channels)
        self.in_channels = in_channels
        self.register_buffer("mean", torch.tensor(mean).view(1, in_channels, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, in_channels, 1, 1), persistent=False)
        self.num_classes = num_classes
        self.msf_scales = msf_scales
        # Everything create_model needs to rebuild this architecture (JSON-safe).
        self.config: dict[str, Any] = {
            "name": "c3po",
            "backbone": backbone.name,
            "mtf": mtf,
            "msf_scales": msf_scales,
            "head": head,
            "num_classes": num_classes,
            "msf_width": msf_width,
        }
        if head_channels is not None and head_channels != msf_width:
            self.config["head_channels"] = head_channels
        # Recorded only when not the RGB default, so 3-channel checkpoints stay as they were.
        extra = {"in_channels": in_channels if in_channels != 3 else None,
                 "rgb_channels": list(rgb_channels) if rgb_channels is not None else None,
                 "channel_mean": list(channel_mean) if channel_mean is not None else None,
                 "channel_std": list(channel_std) if channel_std is not None else None}
        self.config.update({k: v for k, v in extra.items() if v is not None})

    def forward(self, t0: Tensor, t1: Tensor) -> Tensor:
        """Change logits ``(N, num_classes, H, W)`` for images t0, t1 ``(N, 3, H, W)`` in [0, 1]."""
        logits, _ = self._run(t0, t1, return_branches=False)
        return logits

    def forward_with_branches(self, t0: Tensor, t1: Tensor) -> tuple[Tensor, list[dict[str, Tensor]]]:
        """Logits plus, per used scale (finest first), the MTF branch maps before combination."""
        return self._run(t0, t1, return_branches=True)

    def _run(self, t0: Tensor, t1: Tensor, *, return_branches: bool) -> tuple[Tensor, list[dict[str, Tensor]]]:
        _check_pair(t0, t1, self.in_channels)
        # Two passes rather than one on the concatenated batch: in training the
        # backbone's BatchNorm then normalises each time step by its own
        # statistics, as a siamese encoder applied per image does.
        feats0 = self.backbone(self._normalise(t0))
        feats1 = self.backbone(self._normalise(t1))
        first = len(feats0) - self.msf_scales
        fused: list[Tensor] = []
        branches: list[dict[str, Tensor]] = []
        for mtf, f0, f1 in zip(self.mtf, feats0[first:], feats1[first:]):
            if return_branches:
                out, maps = mtf(f0, f1, return_branches=True)
                branches.append(maps)
            else:
                out = mtf(f0, f1)
            fused.append(out)
        # The head works at the finest scale fused (MSF-1: 1/32, ..., MSF-4: 1/4 on a
        # ResNet), as in the paper's MSF ablation and the authors' code.
        merged = self.msf(fused, size=fused[0].shape[-2:])
        logits = self.head(merged)
        logits = F.interpolate(logits, size=t0.shape[-2:], mode="bilinear", align_corners=False)
        return logits, branches

    def _normalise(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


def _check_pair(t0: Tensor, t1: Tensor, channels: int = 3) -> None:
    for name, t in (("t0", t0), ("t1", t1)):
        if t.dim() != 4 or t.shape[1] != channels:
            raise ValueError(f"{name} must have shape (N, {channels}, H, W), got {tuple(t.shape)}")
    if t0.shape != t1.shape:
        raise ValueError(f"t0 and t1 shapes differ: {tuple(t0.shape)} vs {tuple(t1.shape)}")
