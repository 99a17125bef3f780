"""Change models: see :mod:`changeseg.models.factory` (building), ``registry`` (the one
table of names), ``weights_spec`` (where weights come from) and ``contract`` (what every
model offers).

The names below load on first use (PEP 562), so torch-free modules of this package
(``presets``, ``registry``, ``weights_spec``, ``location``) import without torch: the config
schema reads names, families and weights there, and ``changeseg prepare`` never pays
for torch, torchvision and timm.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "C3PO": "factory",
    "MSF": "factory",
    "MTF": "factory",
    "MTF_MODES": "factory",
    "SEGMENTATION_SOURCES": "weights_spec",
    "Backbone": "factory",
    "LoadReport": "factory",
    "create_backbone": "factory",
    "create_head": "factory",
    "create_model": "factory",
    "list_backbones": "factory",
    "list_heads": "factory",
    "list_models": "registry",
    "model_from_config": "factory",
    "resolve_model_args": "factory",
    "PRESETS": "presets",
    "PRESET_WEIGHTS": "presets",
    "ChangeModel": "contract",
    "WeightsSpec": "weights_spec",
    "parse_weights": "weights_spec",
    "model_entry": "registry",
    "register_builder": "registry",
    "register_model": "registry",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'changeseg.models' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"changeseg.models.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
