"""Model registry and factory (re-exported by :mod:`changeseg.models`).

``create_model`` builds a model from plain (JSON-safe) arguments, and every
model keeps those arguments in ``model.config`` so ``model_from_config``
rebuilds the architecture from a checkpoint before loading its state dict.

Names: ``c3po`` (every argument free), presets that fix the paper's released
configurations (explicit arguments still override them), and the FC-EF /
FC-Siam baselines, which take only ``num_classes``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .backbones import Backbone, create_backbone, is_backbone_name, list_backbones
from .baselines import BASELINES
from .c3po import C3PO
from .heads import create_head, list_heads
from .msf import MSF
from .mtf import MTF, MTF_MODES
from .presets import C3PO_DEFAULTS, PRESET_WEIGHTS, PRESETS
from .pretrained import SEGMENTATION_SOURCES, LoadReport, apply_weights

__all__ = [
    "C3PO",
    "MSF",
    "MTF",
    "MTF_MODES",
    "PRESETS",
    "SEGMENTATION_SOURCES",
    "Backbone",
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


def _baselines() -> dict[str, type[nn.Module]]:
    return dict(BASELINES)


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`."""
    return sorted(["c3po", *PRESETS, *_baselines()])


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_c3po_args(args: dict[str, Any]) -> None:
    if not is_backbone_name(args["backbone"]):
        raise ValueError(
            f"unknown backbone {args['backbone']!r}; known backbones: {', '.join(list_backbones())}, or timm:<model name>"
        )
    if args["head"] not in list_heads():
        raise ValueError(f"unknown head {args['head']!r}; known heads: {', '.join(list_heads())}")
    if args["mtf"] not in MTF_MODES:
        raise ValueError(f"invalid MTF mode {args['mtf']!r}; valid modes: {', '.join(MTF_MODES)}")
    if not _is_int(args["num_classes"]) or args["num_classes"] < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {args['num_classes']!r}")
    if not _is_int(args["msf_scales"]) or args["msf_scales"] < 1:
        raise ValueError(f"msf_scales must be a positive int, got {args['msf_scales']!r}")
    if not _is_int(args["msf_width"]) or args["msf_width"] < 1:
        raise ValueError(f"msf_width must be a positive int, got {args['msf_width']!r}")
    hc = args["head_channels"]
    if hc is not None and (not _is_int(hc) or hc < 1):
        raise ValueError(f"head_channels must be a positive int, got {hc!r}")


def _apply_segmentation_source(args: dict[str, Any], given: dict[str, Any], weights: str) -> None:
    """A torchvision segmentation source fixes backbone, head and head width; conflicts are errors."""
    source_name = weights.removeprefix("torchvision:")
    spec = SEGMENTATION_SOURCES.get(source_name)
    if spec is None:
        raise ValueError(
            f"unknown segmentation model {source_name!r} in weights={weights!r}; "
            f"known: {', '.join('torchvision:' + k for k in sorted(SEGMENTATION_SOURCES))}"
        )
    for key, required in (("backbone", spec.backbone), ("head", spec.head), ("head_channels", spec.head_channels)):
        if given.get(key) is not None and given[key] != required:
            raise ValueError(f"weights={weights!r} needs {key}={required!r}, got {given[key]!r}")
        args[key] = required


def _c3po_args(name: str, given: dict[str, Any], weights: str | None) -> dict[str, Any]:
    """Defaults, then the preset, then the caller's non-None arguments, then what a
    torchvision segmentation source fixes (a conflicting argument is an error)."""
    args = {**C3PO_DEFAULTS, **PRESETS.get(name, {})}
    args.update({k: v for k, v in given.items() if v is not None})
    if weights and weights.startswith("torchvision:"):
        _apply_segmentation_source(args, given, weights)
    return args


def resolve_model_args(name: str = "c3po", **given: Any) -> dict[str, Any]:
    """The full architecture arguments ``create_model`` would use (preset, defaults, overrides).

    Builds nothing; for logging and display. Weights arguments are passed through.
    """
    extra = {k: given.pop(k) for k in ("weights", "weights_file", "pretrained_backbone", "storage_options") if k in given}
    if name in PRESETS and extra.get("weights") is None and not extra.get("pretrained_backbone"):
        extra["weights"] = PRESET_WEIGHTS
    if name in _baselines():
        args: dict[str, Any] = {"name": name, "num_classes": given.get("num_classes") or 2}
    else:
        args = {"name": name, **_c3po_args(name, given, extra.get("weights"))}
    return {**args, **{k: v for k, v in extra.items() if k != "storage_options"}}


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
    weights: str | None = None,
    weights_file: str | None = None,
    pretrained_backbone: bool = False,
    storage_options: Any | None = None,
    in_channels: int | None = None,
    rgb_channels: list[int] | None = None,
    channel_mean: list[float] | None = None,
    channel_std: list[float] | None = None,
) -> nn.Module:
    """Build a change-segmentation model and optionally initialise it.

    ``name`` is the only positional argument (``create_model("c3po", backbone=...)``).
    Architecture arguments left as None come from the preset ``name`` (if any), else
    the C3PO defaults. ``weights`` is None (random; for a preset: its ImageNet weights),
    ``"none"`` (random, presets included), ``"imagenet"``,
    ``"torchvision:<segmentation model>"`` or a changeseg checkpoint URI (see
    :mod:`changeseg.models.pretrained`); ``pretrained_backbone=True`` is the same as
    ``weights="imagenet"``. All arguments are checked before weights are loaded.

    Raises:
        ValueError: unknown name/backbone/head/MTF mode/weights, or out-of-range numbers.
        RuntimeError: weights requested but not obtainable (the message says how to
            supply them offline).
    """
    given = {
        "backbone": backbone, "mtf": mtf, "msf_scales": msf_scales, "head": head,
        "num_classes": num_classes, "msf_width": msf_width, "head_channels": head_channels,
    }
    if weights is None and name in PRESETS and not pretrained_backbone:
        weights = PRESET_WEIGHTS
    if weights == "none":
        weights = None
    if pretrained_backbone:
        if weights not in (None, "imagenet"):
            raise ValueError(f"pretrained_backbone=True conflicts with weights={weights!r}")
        weights = "imagenet"
    baselines = _baselines()
    channels = {"in_channels": in_channels or 3, "rgb_channels": rgb_channels, "channel_mean": channel_mean, "channel_std": channel_std}
    if name in baselines:
        given.update({k: v for k, v in channels.items() if k != "in_channels" or v != 3})
        extra = sorted(k for k, v in given.items() if v is not None and k != "num_classes")
        if extra:
            raise ValueError(f"model {name!r} takes only num_classes, got {', '.join(extra)}")
        if weights in ("imagenet",) or (weights or "").startswith("torchvision:"):
            raise ValueError(f"model {name!r} has no pretrained backbone; weights={weights!r} does not apply")
        classes = 2 if num_classes is None else num_classes
        if not _is_int(classes) or classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, got {classes!r}")
        model = baselines[name](num_classes=classes)
    elif name == "c3po" or name in PRESETS:
        args = _c3po_args(name, given, weights)
        _check_c3po_args(args)
        # The upper bound of msf_scales depends on the backbone's scale count; MSF checks it.
        model = C3PO(
            backbone=create_backbone(name=args["backbone"]),
            mtf=args["mtf"],
            msf_scales=args["msf_scales"],
            head=args["head"],
            num_classes=args["num_classes"],
            msf_width=args["msf_width"],
            head_channels=args["head_channels"],
            **channels,
        )
    else:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    apply_weights(model, weights=weights, weights_file=weights_file, storage_options=storage_options)
    return model


# What ``model.config`` (and a checkpoint's model.json) may hold: the architecture, nothing
# that makes loading read other files or URIs (weights, weights_file, storage_options).
ARCHITECTURE_KEYS = ("name", "backbone", "mtf", "msf_scales", "head", "num_classes", "msf_width", "head_channels",
                     "in_channels", "rgb_channels", "channel_mean", "channel_std")


def model_from_config(config: dict[str, Any]) -> nn.Module:
    """Rebuild the architecture saved in ``model.config`` (random weights; load the state
    dict next). Keys other than the architecture's are refused: a checkpoint's JSON must
    not make the loader fetch or read weights from elsewhere."""
    extra = sorted(set(config) - set(ARCHITECTURE_KEYS))
    if extra:
        raise ValueError(f"model config has keys that are not architecture arguments: {', '.join(extra)}")
    return create_model(**config, weights="none")
