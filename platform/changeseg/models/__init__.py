"""Model registry and factory.

``create_model`` builds a model from plain (JSON-safe) arguments, and every
model keeps those arguments in ``model.config`` so ``model_from_config``
rebuilds the architecture from a checkpoint before loading its state dict.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from .backbones import Backbone, create_backbone, list_backbones
from .c3po import C3PO
from .heads import create_head, list_heads
from .msf import MSF
from .mtf import MTF, MTF_MODES

__all__ = [
    "C3PO",
    "MSF",
    "MTF",
    "MTF_MODES",
    "Backbone",
    "create_backbone",
    "create_head",
    "create_model",
    "list_backbones",
    "list_heads",
    "list_models",
    "model_from_config",
]


def _build_c3po(
    *,
    backbone: str,
    mtf: str,
    msf_scales: int,
    head: str,
    num_classes: int,
    msf_width: int,
    pretrained_backbone: bool,
) -> nn.Module:
    return C3PO(
        backbone=create_backbone(name=backbone, pretrained=pretrained_backbone),
        mtf=mtf,
        msf_scales=msf_scales,
        head=head,
        num_classes=num_classes,
        msf_width=msf_width,
    )


_MODELS: dict[str, Callable[..., nn.Module]] = {"c3po": _build_c3po}


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`."""
    return sorted(_MODELS)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def create_model(
    *,
    name: str = "c3po",
    backbone: str = "resnet18",
    mtf: str = "iade",
    msf_scales: int = 4,
    head: str = "fcn",
    num_classes: int = 2,
    msf_width: int = 512,
    pretrained_backbone: bool = False,
) -> nn.Module:
    """Build a change-segmentation model.

    All arguments are checked before any weights are built or downloaded.

    Raises:
        ValueError: unknown name/backbone/head/MTF mode, or out-of-range numbers.
        RuntimeError: ``pretrained_backbone`` and the weights cannot be obtained.
    """
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    if backbone not in list_backbones():
        raise ValueError(f"unknown backbone {backbone!r}; known backbones: {', '.join(list_backbones())}")
    if head not in list_heads():
        raise ValueError(f"unknown head {head!r}; known heads: {', '.join(list_heads())}")
    if mtf not in MTF_MODES:
        raise ValueError(f"invalid MTF mode {mtf!r}; valid modes: {', '.join(MTF_MODES)}")
    if not _is_int(num_classes) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    if not _is_int(msf_scales) or msf_scales < 1:
        raise ValueError(f"msf_scales must be a positive int, got {msf_scales!r}")
    if not _is_int(msf_width) or msf_width < 1:
        raise ValueError(f"msf_width must be a positive int, got {msf_width!r}")
    # The upper bound of msf_scales depends on the backbone's scale count; MSF checks it.
    return _MODELS[name](
        backbone=backbone,
        mtf=mtf,
        msf_scales=msf_scales,
        head=head,
        num_classes=num_classes,
        msf_width=msf_width,
        pretrained_backbone=pretrained_backbone,
    )


def model_from_config(config: dict[str, Any]) -> nn.Module:
    """Rebuild the architecture saved in ``model.config`` (random weights; load the state dict next)."""
    return create_model(**{**config, "pretrained_backbone": False})
