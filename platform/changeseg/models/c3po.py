"""C-3PO: siamese backbone -> MTF per scale -> MSF -> segmentation head."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from torch.nn import functional as F

from .backbones import Backbone, create_backbone, is_backbone_name, list_backbones
from .channels import IMAGENET_MEAN, IMAGENET_STD, adapt_first_conv, channel_stats
from .contract import ChangeModel
from .heads import create_head, list_heads
from .msf import MSF
from .mtf import MTF, MTF_MODES
from .registry import C3PO as C3PO_FAMILY
from .registry import register_builder

__all__ = ["C3PO", "IMAGENET_MEAN", "IMAGENET_STD", "build_c3po"]


class C3PO(ChangeModel):
    """Pixel-wise change segmentation between two RGB images.

    Inputs are two float tensors ``(N, in_channels, H, W)`` in [0, 1], normalised
    inside with the statistics the backbone's weights expect (see
    :class:`~changeseg.models.contract.ChangeModel`). Output logits are
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
        input_scale: both images are resampled by this factor before the backbone and the
            logits back to the input size. 2 gives small objects (buildings of 10-20 px)
            twice the feature cells of a stride-32 backbone, for about 4x the compute.
    """

    supports_branches = True

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
        input_scale: float = 1.0,
    ) -> None:
        # Any band count: the first convolution is rebuilt, normalisation is per channel.
        mean, std = channel_stats(
            in_channels,
            rgb_channels=rgb_channels,
            mean=channel_mean,
            std=channel_std,
            rgb_mean=backbone.rgb_mean,
            rgb_std=backbone.rgb_std,
        )
        super().__init__(num_classes=num_classes, in_channels=in_channels, mean=mean, std=std, backbone=backbone)
        # MSF validates msf_scales against the backbone before anything else uses it.
        self.msf = MSF(backbone.channels, num_scales=msf_scales, width=msf_width, out_channels=head_channels)
        self.mtf = nn.ModuleList(MTF(c, mtf) for c in backbone.channels[-msf_scales:])
        self.head = create_head(name=head, in_channels=self.msf.out_channels, num_classes=num_classes)
        adapt_first_conv(backbone, in_channels, rgb_channels)
        self.msf_scales = msf_scales
        self.input_scale = float(input_scale)
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
        if self.input_scale != 1.0:  # recorded only when used, so older checkpoints stay as they were
            self.config["input_scale"] = self.input_scale
        # Recorded only when not the RGB default, so 3-channel checkpoints stay as they were.
        # Statistics other than ImageNet's (e.g. a timm backbone's own) are recorded as
        # resolved, so a checkpoint normalises the same way whatever timm says later.
        own_stats = channel_mean is None and (tuple(backbone.rgb_mean), tuple(backbone.rgb_std)) != (
            tuple(IMAGENET_MEAN),
            tuple(IMAGENET_STD),
        )
        extra = {
            "in_channels": in_channels if in_channels != 3 else None,
            "rgb_channels": list(rgb_channels) if rgb_channels is not None else None,
            "channel_mean": list(channel_mean) if channel_mean is not None else (mean if own_stats else None),
            "channel_std": list(channel_std) if channel_std is not None else (std if own_stats else None),
        }
        self.config.update({k: v for k, v in extra.items() if v is not None})

    def forward(self, t0: Tensor, t1: Tensor) -> Tensor:
        """Change logits ``(N, num_classes, H, W)`` for images t0, t1 ``(N, in_channels, H, W)`` in [0, 1]."""
        logits, _ = self._run(t0, t1, return_branches=False)
        return logits

    def describe(self) -> str:
        """``C-3PO resnet18 MTF iade x4 fcn``."""
        c = self.config
        return f"C-3PO {c['backbone']} MTF {c['mtf']} x{c['msf_scales']} {c['head']}"

    def forward_with_branches(self, t0: Tensor, t1: Tensor) -> tuple[Tensor, list[dict[str, Tensor]]]:
        """Logits plus, per used scale (finest first), the MTF branch maps before combination."""
        return self._run(t0, t1, return_branches=True)

    def _run(self, t0: Tensor, t1: Tensor, *, return_branches: bool) -> tuple[Tensor, list[dict[str, Tensor]]]:
        self.check_pair(t0, t1)
        size = t0.shape[-2:]
        if self.input_scale != 1.0:
            t0, t1 = (
                F.interpolate(t, scale_factor=self.input_scale, mode="bilinear", align_corners=False) for t in (t0, t1)
            )
        # Two passes rather than one on the concatenated batch: in training the
        # backbone's BatchNorm then normalises each time step by its own
        # statistics, as a siamese encoder applied per image does.
        feats0 = self.backbone(self.normalise(t0))
        feats1 = self.backbone(self.normalise(t1))
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
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits, branches


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_c3po_args(
    *,
    backbone: str,
    mtf: str,
    head: str,
    num_classes: Any,
    msf_scales: Any,
    msf_width: Any,
    head_channels: Any,
    input_scale: Any = 1.0,
) -> None:
    """Names and numbers checked before anything is built (the MSF checks msf_scales' upper bound)."""
    if not is_backbone_name(backbone):
        raise ValueError(
            f"unknown backbone {backbone!r}; known backbones: {', '.join(list_backbones())}, or timm:<model name>"
        )
    if head not in list_heads():
        raise ValueError(f"unknown head {head!r}; known heads: {', '.join(list_heads())}")
    if mtf not in MTF_MODES:
        raise ValueError(f"invalid MTF mode {mtf!r}; valid modes: {', '.join(MTF_MODES)}")
    if not _is_int(num_classes) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    for key, value in (("msf_scales", msf_scales), ("msf_width", msf_width)):
        if not _is_int(value) or value < 1:
            raise ValueError(f"{key} must be a positive int, got {value!r}")
    if head_channels is not None and (not _is_int(head_channels) or head_channels < 1):
        raise ValueError(f"head_channels must be a positive int, got {head_channels!r}")
    if isinstance(input_scale, bool) or not isinstance(input_scale, int | float) or not 0.25 <= input_scale <= 4:
        raise ValueError(f"input_scale must be a number from 0.25 to 4, got {input_scale!r}")


@register_builder(C3PO_FAMILY)
def build_c3po(
    *,
    name: str,
    backbone: str,
    mtf: str,
    msf_scales: int,
    head: str,
    num_classes: int,
    msf_width: int,
    head_channels: int | None = None,
    in_channels: int = 3,
    rgb_channels: list[int] | None = None,
    channel_mean: list[float] | None = None,
    channel_std: list[float] | None = None,
    input_scale: float = 1.0,
) -> C3PO:
    """The C-3PO family's builder: every name of the family (``c3po``, the presets) builds
    a :class:`C3PO` whose config names ``c3po`` with the full arguments."""
    check_c3po_args(
        backbone=backbone,
        mtf=mtf,
        head=head,
        num_classes=num_classes,
        msf_scales=msf_scales,
        msf_width=msf_width,
        head_channels=head_channels,
        input_scale=input_scale,
    )
    return C3PO(
        backbone=create_backbone(name=backbone),
        mtf=mtf,
        msf_scales=msf_scales,
        head=head,
        num_classes=num_classes,
        msf_width=msf_width,
        head_channels=head_channels,
        in_channels=in_channels,
        rgb_channels=rgb_channels,
        channel_mean=channel_mean,
        channel_std=channel_std,
        input_scale=input_scale,
    )
