"""HTTP change detection on Ray Serve, serving versions of the registered model."""

from changeseg.serving.app import API_DEPLOYMENT, MODEL_DEPLOYMENT, build_app

__all__ = ["API_DEPLOYMENT", "MODEL_DEPLOYMENT", "build_app"]
