"""The one table of model names: every name ``create_model`` accepts, its family, and
what the name fixes.

Torch-free on purpose: config validation reads names, families and class counts here
without importing torch. A family's builder (the torch code) registers itself with
:func:`register_builder` in its own module (``c3po``, ``baselines``); the factory
imports those modules, so by the time a model is built every family has its builder.

Families:

- ``c3po``: the C-3PO architecture; names ``c3po`` (every argument free) and the
  paper's released configurations (:mod:`changeseg.models.presets`), whose fixed
  arguments explicit ones override and which start from ImageNet weights;
- ``baseline``: FC-EF / FC-Siam (``fc_ef``, ``fc_siam_conc``, ``fc_siam_diff``),
  which take only ``num_classes`` and ``in_channels``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeVar

from .presets import C3PO_DEFAULTS, PRESET_WEIGHTS, PRESETS
from .weights_spec import WeightsSpec, parse_weights

__all__ = [
    "BASELINE",
    "C3PO",
    "FAMILIES",
    "Family",
    "ModelEntry",
    "architecture_keys",
    "builder_for",
    "list_models",
    "model_entry",
    "register_builder",
    "register_model",
    "resolve_weights",
]

C3PO = "c3po"
BASELINE = "baseline"
BuilderT = TypeVar("BuilderT", bound=Callable[..., Any])


@dataclass(frozen=True)
class Family:
    """Models built by one builder from the same architecture arguments."""

    name: str
    # The keys of ``model.config`` besides ``name`` (and of a checkpoint's model.json).
    arguments: tuple[str, ...]
    # Values of arguments that neither the name nor the caller sets.
    defaults: Mapping[str, Any]
    # Whether ImageNet / torchvision segmentation weights apply (the model has a pretrained-capable backbone).
    pretrained_backbone: bool


@dataclass(frozen=True)
class ModelEntry:
    """One registered name."""

    name: str
    family: Family
    # Arguments the name fixes (a preset's configuration); explicit arguments override them.
    fixed: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    # Weights when the caller names none (the presets start from ImageNet, as the paper).
    default_weights: WeightsSpec | None = None

    @property
    def num_classes(self) -> int:
        """The class count unless the caller sets one."""
        return int(self.fixed.get("num_classes", self.family.defaults["num_classes"]))


FAMILIES: dict[str, Family] = {
    C3PO: Family(
        C3PO,
        arguments=(
            "backbone",
            "mtf",
            "msf_scales",
            "head",
            "num_classes",
            "msf_width",
            "head_channels",
            "in_channels",
            "rgb_channels",
            "channel_mean",
            "channel_std",
            "input_scale",
        ),
        defaults=MappingProxyType(dict(C3PO_DEFAULTS)),
        pretrained_backbone=True,
    ),
    BASELINE: Family(
        BASELINE,
        arguments=("num_classes", "in_channels"),
        defaults=MappingProxyType({"num_classes": 2}),
        pretrained_backbone=False,
    ),
}
_MODELS: dict[str, ModelEntry] = {}
_BUILDERS: dict[str, Callable[..., Any]] = {}


def register_model(
    name: str, *, family: str, fixed: Mapping[str, Any] | None = None, default_weights: str | None = None
) -> ModelEntry:
    """Add ``name`` to the table; a name is registered once."""
    if name in _MODELS:
        raise ValueError(f"model {name!r} is already registered")
    fam = FAMILIES[family]
    unknown = sorted(set(fixed or {}) - set(fam.arguments))
    if unknown:
        raise ValueError(f"model {name!r}: {', '.join(unknown)} are not arguments of family {family!r}")
    entry = ModelEntry(name, fam, MappingProxyType(dict(fixed or {})), parse_weights(default_weights))
    _MODELS[name] = entry
    return entry


def register_builder(family: str) -> Callable[[BuilderT], BuilderT]:
    """Decorator: the function that builds ``family``'s models, called as
    ``builder(name=..., **architecture arguments)``."""
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; known: {', '.join(FAMILIES)}")

    def register(builder: BuilderT) -> BuilderT:
        _BUILDERS[family] = builder
        return builder

    return register


def model_entry(name: str) -> ModelEntry:
    """The entry of ``name``; an unknown name is a ValueError listing the known ones."""
    entry = _MODELS.get(name) if isinstance(name, str) else None
    if entry is None:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    return entry


def list_models(*, family: str | None = None) -> list[str]:
    """Registered names (of one family when given), sorted."""
    return sorted(n for n, e in _MODELS.items() if family is None or e.family.name == family)


def builder_for(family: Family) -> Callable[..., Any]:
    """The registered builder of ``family`` (its module must have been imported)."""
    builder = _BUILDERS.get(family.name)
    if builder is None:
        raise LookupError(f"no builder registered for model family {family.name!r}; import changeseg.models.factory")
    return builder


def architecture_keys(name: str) -> frozenset[str]:
    """What ``model.config`` of model ``name`` may hold: ``name`` and its family's arguments."""
    return frozenset(("name", *model_entry(name).family.arguments))


def resolve_weights(
    name: str, weights: object = None, *, file: str | None = None, pretrained_backbone: bool = False
) -> WeightsSpec | None:
    """The weights model ``name`` starts from: ``weights`` as given (string or spec), else
    ImageNet when ``pretrained_backbone``, else the name's default; ``file`` attached.

    Raises:
        ValueError: a bad ``weights`` string, ``pretrained_backbone`` with other weights,
            or ImageNet / torchvision weights for a family without a pretrained backbone.
    """
    entry = model_entry(name)
    spec = parse_weights(weights)
    if pretrained_backbone:
        if spec is not None and spec.kind != "imagenet":
            raise ValueError(f"pretrained_backbone=True conflicts with weights={spec.text!r}")
        spec = parse_weights("imagenet")
    if spec is None:
        spec = entry.default_weights
    if spec is not None and file is not None:
        spec = WeightsSpec(spec.kind, spec.source, file)
    if spec is not None and spec.kind in ("imagenet", "torchvision") and not entry.family.pretrained_backbone:
        raise ValueError(f"model {name!r} has no pretrained backbone; weights={spec.text!r} does not apply")
    return spec


register_model("c3po", family=C3PO)
for _name, _fixed in PRESETS.items():
    register_model(_name, family=C3PO, fixed=_fixed, default_weights=PRESET_WEIGHTS)
for _name in ("fc_ef", "fc_siam_conc", "fc_siam_diff"):
    register_model(_name, family=BASELINE)
