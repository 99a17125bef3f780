"""Building models by name (re-exported by :mod:`changeseg.models`).

``create_model`` looks ``name`` up in the one model table
(:mod:`changeseg.models.registry`), resolves its arguments (the family's defaults, then
what the name fixes, then the caller's, then what a torchvision segmentation source
fixes) and calls the family's builder; every model keeps those arguments in
``model.config`` so ``model_from_config`` rebuilds the architecture from a checkpoint
before loading its state dict.
"""

from __future__ import annotations

from typing import Any

# Imported for its side effect: the baseline family registers its builder (c3po's comes with C3PO).
from . import baselines as _baselines  # noqa: F401
from .backbones import Backbone, create_backbone, list_backbones
from .c3po import C3PO
from .contract import ChangeModel
from .heads import create_head, list_heads
from .msf import MSF
from .mtf import MTF, MTF_MODES
from .pretrained import LoadReport, apply_weights
from .registry import ModelEntry, architecture_keys, builder_for, list_models, model_entry, resolve_weights
from .weights_spec import SEGMENTATION_SOURCES, WeightsSpec

__all__ = [
    "C3PO",
    "MSF",
    "MTF",
    "MTF_MODES",
    "SEGMENTATION_SOURCES",
    "Backbone",
    "ChangeModel",
    "LoadReport",
    "create_backbone",
    "create_head",
    "create_model",
    "list_backbones",
    "list_heads",
    "list_models",
    "model_from_config",
    "resolve_model_args",
]


def _architecture(entry: ModelEntry, given: dict[str, Any], weights: WeightsSpec | None) -> dict[str, Any]:
    """The family's defaults, then the name's fixed arguments, then the caller's non-None
    ones, then what a torchvision segmentation source fixes (a conflict is an error)."""
    family = entry.family
    extra = sorted(k for k, v in given.items() if v is not None and k not in family.arguments)
    if extra:
        raise ValueError(f"model {entry.name!r} takes only {', '.join(family.arguments)}; got {', '.join(extra)}")
    args = {**family.defaults, **entry.fixed, **{k: v for k, v in given.items() if v is not None}}
    source = weights.segmentation if weights is not None else None
    if source is not None:
        for key, required in (
            ("backbone", source.backbone),
            ("head", source.head),
            ("head_channels", source.head_channels),
        ):
            if given.get(key) is not None and given[key] != required:
                raise ValueError(f"weights={weights.text!r} needs {key}={required!r}, got {given[key]!r}")
            args[key] = required
    return args


def resolve_model_args(name: str = "c3po", **given: Any) -> dict[str, Any]:
    """The full architecture arguments ``create_model`` would use (family defaults, the
    name's, the caller's) and the weights it would start from, as text.

    Builds nothing; for logging and display.
    """
    options = {
        k: given.pop(k) for k in ("weights", "weights_file", "pretrained_backbone", "storage_options") if k in given
    }
    weights = resolve_weights(
        name,
        options.get("weights"),
        file=options.get("weights_file"),
        pretrained_backbone=bool(options.get("pretrained_backbone")),
    )
    args = {"name": name, **_architecture(model_entry(name), given, weights)}
    if weights is not None:
        args["weights"] = weights.text
        if weights.file is not None:
            args["weights_file"] = weights.file
    return args


def create_model(
    name: str = "c3po",
    *,
    backbone: str | None = None,
    mtf: str | None = None,
    msf_scales: int | None = None,
    head: str | None = None,
    num_classes: int | None = None,
    msf_width: int | None = None,
    head_channels: int | None = None,
    weights: WeightsSpec | str | None = None,
    weights_file: str | None = None,
    pretrained_backbone: bool = False,
    storage_options: Any | None = None,
    in_channels: int | None = None,
    rgb_channels: list[int] | None = None,
    channel_mean: list[float] | None = None,
    channel_std: list[float] | None = None,
    input_scale: float | None = None,
) -> ChangeModel:
    """Build a change-segmentation model and optionally initialise it.

    ``name`` is the only positional argument (``create_model("c3po", backbone=...)``), one
    of :func:`list_models`. Arguments left as None come from the name (a preset fixes
    the paper's configuration), else the family's defaults; an argument the family does
    not take is an error. ``weights`` is a :class:`WeightsSpec` or its text: None (the
    name's default: ImageNet for a preset, else random), ``"none"``, ``"imagenet"``,
    ``"torchvision:<segmentation model>"`` or a changeseg checkpoint URI (see
    :mod:`changeseg.models.weights_spec`); ``pretrained_backbone=True`` is the same as
    ``weights="imagenet"``. All arguments are checked before weights are loaded.

    Raises:
        ValueError: unknown name/backbone/head/MTF mode/weights, or out-of-range numbers.
        RuntimeError: weights requested but not obtainable (the message says how to
            supply them offline).
    """
    entry = model_entry(name)
    spec = resolve_weights(name, weights, file=weights_file, pretrained_backbone=pretrained_backbone)
    given = {
        "backbone": backbone,
        "mtf": mtf,
        "msf_scales": msf_scales,
        "head": head,
        "num_classes": num_classes,
        "msf_width": msf_width,
        "head_channels": head_channels,
        "in_channels": in_channels,
        "rgb_channels": rgb_channels,
        "channel_mean": channel_mean,
        "channel_std": channel_std,
        "input_scale": input_scale,
    }
    model = builder_for(entry.family)(name=name, **_architecture(entry, given, spec))
    apply_weights(model, weights=spec, storage_options=storage_options)
    return model


def model_from_config(config: dict[str, Any]) -> ChangeModel:
    """Rebuild the architecture saved in ``model.config`` (random weights; load the state
    dict next). Keys other than the architecture's are refused: a checkpoint's JSON must
    not make the loader fetch or read weights from elsewhere."""
    if not isinstance(config, dict):
        raise ValueError(f"model config must be an object, got {type(config).__name__}")
    extra = sorted(str(k) for k in set(config) - architecture_keys(config.get("name", "c3po")))
    if extra:
        raise ValueError(f"model config has keys that are not architecture arguments: {', '.join(extra)}")
    return create_model(**config, weights="none")
