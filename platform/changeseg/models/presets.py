"""The released C-3PO configurations and the defaults they build on.

Plain data, torch-free: :mod:`changeseg.models.registry` registers these names, and the
config schema reads them through it without importing torch, torchvision or timm.
"""

from __future__ import annotations

from typing import Any

__all__ = ["C3PO_DEFAULTS", "PRESETS", "PRESET_WEIGHTS"]

# C3PO arguments when neither a preset nor the caller sets them.
C3PO_DEFAULTS: dict[str, Any] = {
    "backbone": "resnet18",
    "mtf": "iade",
    "msf_scales": 4,
    "head": "fcn",
    "num_classes": 2,
    "msf_width": 512,
    "head_channels": None,
}

# The configurations released with the paper (all MSF over 4 scales, DeepLabv3 head).
PRESETS: dict[str, dict[str, Any]] = {
    "c3po_vl_cmu_cd": {"backbone": "resnet18", "mtf": "id", "msf_scales": 4, "head": "deeplabv3", "num_classes": 2},
    "c3po_pcd_resnet18": {
        "backbone": "resnet18",
        "mtf": "iade",
        "msf_scales": 4,
        "head": "deeplabv3",
        "num_classes": 2,
    },
    "c3po_pcd_vgg16_bn": {
        "backbone": "vgg16_bn",
        "mtf": "iade",
        "msf_scales": 4,
        "head": "deeplabv3",
        "num_classes": 2,
    },
    "c3po_changesim_binary": {
        "backbone": "resnet18",
        "mtf": "iade",
        "msf_scales": 4,
        "head": "deeplabv3",
        "num_classes": 2,
    },
    # static (no change), new, missing, rotated, replaced
    "c3po_changesim_multi": {
        "backbone": "resnet18",
        "mtf": "iade",
        "msf_scales": 4,
        "head": "deeplabv3",
        "num_classes": 5,
    },
}


# The paper always starts from pretrained weights, so the presets do too. They need
# the torchvision download, a copy in $TORCH_HOME/hub/checkpoints or ``weights_file``;
# ``weights="none"`` builds a preset from random weights instead.
PRESET_WEIGHTS = "imagenet"
