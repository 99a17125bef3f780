"""What every change model offers, and all that inference, evaluation, export, serving
and visualisation may rely on.

A :class:`ChangeModel` takes two float images ``(N, in_channels, H, W)`` in [0, 1],
normalises them inside (``mean`` / ``std``, non-persistent buffers, so exported graphs
and serving need no preprocessing) and returns logits ``(N, num_classes, H, W)``.
``config`` holds the JSON-safe arguments that rebuild it (``model_from_config``);
``backbone`` is its pretrained-capable encoder, or None; models whose
``supports_branches`` is true also return their MTF branch maps from
``forward_with_branches``; ``input_scale`` is the factor by which the model resamples its
inputs inside (C-3PO's ``input_scale``), so memory budgets can count what it processes.

Code that also accepts stand-in modules (tests, benchmarks) asks through
:func:`supports_branches`, :func:`input_channels`, :func:`backbone_of` and
:func:`input_scale_of` instead of probing attributes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .backbones import Backbone

__all__ = ["ChangeModel", "backbone_of", "check_pair", "input_channels", "input_scale_of", "supports_branches"]

Branches = list[dict[str, Tensor]]


class ChangeModel(nn.Module):
    """Base class of the change models (C-3PO and the FC baselines)."""

    supports_branches: ClassVar[bool] = False
    input_scale: float = 1.0
    config: dict[str, Any]

    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int,
        mean: Sequence[float],
        std: Sequence[float],
        backbone: Backbone | None = None,
    ) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
        if len(mean) != in_channels or len(std) != in_channels:
            raise ValueError(f"mean and std need {in_channels} values, got {len(mean)} and {len(std)}")
        self.backbone = backbone
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.register_buffer(
            "mean", torch.tensor([float(v) for v in mean]).view(1, in_channels, 1, 1), persistent=False
        )
        self.register_buffer("std", torch.tensor([float(v) for v in std]).view(1, in_channels, 1, 1), persistent=False)

    def normalise(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def check_pair(self, t0: Tensor, t1: Tensor) -> None:
        check_pair(t0, t1, self.in_channels)

    def forward_with_branches(self, t0: Tensor, t1: Tensor) -> tuple[Tensor, Branches]:
        """Logits plus the MTF branch maps per fused scale (finest first); see ``supports_branches``."""
        raise TypeError(f"{type(self).__name__} has no MTF branches (forward_with_branches)")

    def describe(self) -> str:
        """A short human-readable name of the architecture (report tables)."""
        return str(self.config.get("name", type(self).__name__)).replace("_", "-")


def check_pair(t0: Tensor, t1: Tensor, channels: int = 3) -> None:
    for name, t in (("t0", t0), ("t1", t1)):
        if t.dim() != 4 or t.shape[1] != channels:
            raise ValueError(f"{name} must have shape (N, {channels}, H, W), got {tuple(t.shape)}")
    if t0.shape != t1.shape:
        raise ValueError(f"t0 and t1 shapes differ: {tuple(t0.shape)} vs {tuple(t1.shape)}")


def supports_branches(model: nn.Module) -> bool:
    """Whether ``model`` returns MTF branch maps (a :class:`ChangeModel` that says so)."""
    return isinstance(model, ChangeModel) and model.supports_branches


def input_channels(model: nn.Module) -> int:
    """The channels of each input image: the contract's ``in_channels``; 3 for a stand-in module."""
    return model.in_channels if isinstance(model, ChangeModel) else 3


def backbone_of(model: nn.Module) -> Backbone | None:
    """The pretrained-capable encoder of ``model``, or None (baselines, stand-in modules)."""
    return model.backbone if isinstance(model, ChangeModel) else None


def input_scale_of(model: nn.Module) -> float:
    """How much ``model`` enlarges its inputs inside (each side); 1 for a stand-in module."""
    return float(model.input_scale) if isinstance(model, ChangeModel) else 1.0
