"""The Ray Serve application: the HTTP API (:mod:`.api`, FastAPI ingress) in front of the
model deployment (:mod:`.model`); request and response models in :mod:`.schema`.
"""

from __future__ import annotations

from typing import Any

from changeseg.config import build_config
from changeseg.serving.api import API_DEPLOYMENT, ChangeAPI
from changeseg.serving.model import MODEL_DEPLOYMENT, ChangeModel

__all__ = ["API_DEPLOYMENT", "MODEL_DEPLOYMENT", "ChangeAPI", "ChangeModel", "build_app"]


def build_app(args: dict[str, Any] | None = None):
    """The application from changeseg config sections (the ``args`` of serve/config.yaml).

    The tracking URI is resolved here, once, so every replica reads the same registry
    whatever its working folder.
    """
    cfg = build_config(dict(args or {}))
    data = cfg.model_dump(mode="json")
    data["tracking"]["tracking_uri"] = cfg.resolved_tracking_uri()
    return ChangeAPI.bind(ChangeModel.bind(data), data)
