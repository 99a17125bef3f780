"""Load a model from the registry or a checkpoint and predict change masks."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from changeseg import storage
from changeseg.config import StorageSection, resolve_tracking_uri
from changeseg.data.decode import to_model_input
from changeseg.models.weights import find_checkpoint_dir, load_checkpoint

_REGISTRY_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w-]+))$")


def resolve_model_dir(
    uri: str,
    *,
    tracking_uri: str | None = None,
    storage_options: StorageSection | None = None,
    download_dir: str | Path | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Make a model available as a local checkpoint folder.

    ``uri``: ``models:/<name>/<version>``, ``models:/<name>@<alias>``, a local checkpoint
    folder, or an s3:// checkpoint folder. Returns (folder, registry info).
    """
    download_dir = Path(download_dir or tempfile.mkdtemp(prefix="changeseg-model-"))
    match = _REGISTRY_URI.match(uri)
    if match:
        import mlflow
        from mlflow import MlflowClient

        tracking_uri = resolve_tracking_uri(tracking_uri)
        client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        name = match["name"]
        try:
            if match["alias"]:
                version = client.get_model_version_by_alias(name, match["alias"])
            else:
                version = client.get_model_version(name, match["version"])
        except mlflow.exceptions.MlflowException as err:
            raise LookupError(f"model {uri} not found in the registry at {tracking_uri}: {err.message}") from None
        # Resolve through this client, not MLflow's process-wide registry setting.
        source = client.get_model_version_download_uri(name, str(version.version))
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=source, dst_path=str(download_dir), tracking_uri=tracking_uri
        )
        info = {"name": name, "version": int(version.version), "run_id": version.run_id, "uri": uri}
        return find_checkpoint_dir(local), info
    if storage.is_remote(uri):
        import pyarrow.fs as pafs

        fs, path = storage.filesystem_for(uri, storage_options)
        if fs.get_file_info(path).type != pafs.FileType.Directory:
            raise FileNotFoundError(f"checkpoint folder not found: {uri}")
        pafs.copy_files(path, str(download_dir), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        return find_checkpoint_dir(download_dir), {"name": uri, "version": None, "uri": uri}
    local = Path(uri.removeprefix("file://"))
    if not local.exists():
        raise FileNotFoundError(f"model checkpoint not found: {uri}")
    return find_checkpoint_dir(local), {"name": str(local), "version": None, "uri": uri}


class Predictor:
    """A loaded model plus the pre- and post-processing around it."""

    def __init__(self, model: nn.Module, *, info: dict[str, Any] | None = None, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.info = info or {}

    @classmethod
    def from_uri(cls, uri: str, *, tracking_uri: str | None = None, storage_options: StorageSection | None = None, device: str = "cpu") -> "Predictor":
        with tempfile.TemporaryDirectory(prefix="changeseg-model-") as tmp:
            directory, info = resolve_model_dir(uri, tracking_uri=tracking_uri, storage_options=storage_options, download_dir=tmp)
            model, metadata = load_checkpoint(directory)
        return cls(model, info={**info, "metadata": metadata}, device=device)

    @staticmethod
    def to_tensor(images: np.ndarray) -> torch.Tensor:
        """(H, W, 3) or (N, H, W, 3) uint8 -> (N, 3, H, W) float in [0, 1]."""
        arr = np.asarray(images)
        if arr.ndim == 3:
            arr = arr[None]
        if arr.ndim != 4 or arr.shape[-1] != 3:
            raise ValueError(f"expected RGB images shaped (H, W, 3) or (N, H, W, 3), got {arr.shape}")
        # Decoded images may be read-only views; torch wants writable memory.
        return to_model_input(torch.from_numpy(np.require(arr, requirements=["C", "W"])))

    def predict_proba(self, t0: np.ndarray, t1: np.ndarray) -> np.ndarray:
        """Class probabilities (N, C, H, W) for uint8 RGB inputs."""
        a, b = self.to_tensor(t0), self.to_tensor(t1)
        if a.shape != b.shape:
            raise ValueError(f"t0 and t1 differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
        with torch.inference_mode():
            return self.model(a.to(self.device), b.to(self.device)).softmax(1).cpu().numpy()

    def predict(self, t0: np.ndarray, t1: np.ndarray) -> np.ndarray:
        """Class indices (N, H, W) uint8."""
        return self.predict_proba(t0, t1).argmax(1).astype(np.uint8)
