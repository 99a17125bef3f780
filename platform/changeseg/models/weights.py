"""Model checkpoints on disk: safetensors weights plus a JSON description.

A checkpoint folder holds ``model.safetensors`` (the state dict) and ``model.json``
(the factory arguments under ``"model"`` and free-form metadata). Nothing is
unpickled when loading, so checkpoints from storage or the registry are safe to open.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_bytes
from safetensors.torch import load_file, save_file
from torch import nn

from changeseg.models.factory import create_model
from changeseg.models.location import META_FILE, WEIGHTS_FILE, find_checkpoint_dir
from changeseg.models.registry import architecture_keys

__all__ = [
    "META_FILE",
    "WEIGHTS_FILE",
    "find_checkpoint_dir",
    "load_checkpoint",
    "model_from_checkpoint",
    "read_metadata",
    "save_checkpoint",
    "unwrap",
]


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside DDP / DataParallel wrappers."""
    return getattr(model, "module", model)


def save_checkpoint(directory: str | Path, model: nn.Module, *, metadata: dict[str, Any] | None = None) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    bare = unwrap(model)
    state = {k: v.detach().cpu().contiguous() for k, v in bare.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE))
    meta = {"model": dict(bare.config), "metadata": metadata or {}}
    (directory / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
    return directory


def read_metadata(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / META_FILE
    if not path.is_file():
        raise FileNotFoundError(f"not a changeseg checkpoint (no {META_FILE}): {directory}")
    return json.loads(path.read_text())


def architecture(config: Any) -> dict[str, Any]:
    """The architecture arguments of a checkpoint's ``model`` entry; any other key is refused."""
    if not isinstance(config, dict):
        raise ValueError(f"checkpoint {META_FILE}: 'model' must be an object, got {type(config).__name__}")
    extra = sorted(str(k) for k in config if k not in architecture_keys(config.get("name", "c3po")))
    if extra:
        raise ValueError(f"checkpoint {META_FILE}: 'model' may hold architecture keys only, not {', '.join(extra)}")
    return dict(config)


def model_from_checkpoint(
    meta: dict[str, Any], weights: bytes | str | Path, *, map_location: str | torch.device = "cpu"
) -> nn.Module:
    """The model a checkpoint describes: ``meta`` from ``model.json``, weights as safetensors bytes or a file."""
    if not isinstance(meta, dict):
        raise ValueError(f"checkpoint {META_FILE} must hold a JSON object")
    model = create_model(**architecture(meta.get("model")))
    if isinstance(weights, (bytes, bytearray)):
        state = load_bytes(bytes(weights))
    else:
        state = load_file(str(weights), device=str(map_location))
    model.load_state_dict(state)
    return model


def load_checkpoint(
    directory: str | Path, *, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model from ``model.json`` (architecture keys only) and load its weights;
    returns (model, metadata)."""
    directory = Path(directory)
    meta = read_metadata(directory)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"checkpoint has no weights file: {weights}")
    model = model_from_checkpoint(meta, weights, map_location=map_location)
    return model, meta.get("metadata", {})
