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
from safetensors.torch import load_file, save_file
from torch import nn

WEIGHTS_FILE = "model.safetensors"
META_FILE = "model.json"


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


def load_checkpoint(directory: str | Path, *, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model from ``model.json`` and load its weights; returns (model, metadata)."""
    from changeseg.models import model_from_config

    directory = Path(directory)
    meta = read_metadata(directory)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"checkpoint has no weights file: {weights}")
    model = model_from_config(meta["model"])
    model.load_state_dict(load_file(str(weights), device=str(map_location)))
    return model, meta.get("metadata", {})


def find_checkpoint_dir(root: str | Path) -> Path:
    """The folder under ``root`` (itself included) that holds a checkpoint's ``model.json``."""
    root = Path(root)
    if (root / META_FILE).is_file():
        return root
    for path in sorted(root.rglob(META_FILE)):
        if (path.parent / WEIGHTS_FILE).is_file():
            return path.parent
    raise FileNotFoundError(f"no changeseg checkpoint ({META_FILE} + {WEIGHTS_FILE}) under {root}")
