"""Where a checkpoint lives: the files of a checkpoint folder, and any model URI
(registry, ``s3://``, local) turned into a local folder.

Torch-free, so warm starts (``models.pretrained``), the Predictor and batch scoring
resolve a model the same way without loading one.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from changeseg import storage
from changeseg.config import StorageSection, resolve_tracking_uri

__all__ = ["META_FILE", "WEIGHTS_FILE", "find_checkpoint_dir", "resolve_model_dir"]

WEIGHTS_FILE = "model.safetensors"
META_FILE = "model.json"

_REGISTRY_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>[0-9]+)|@(?P<alias>[A-Za-z0-9_-]+))$", re.ASCII)


def find_checkpoint_dir(root: str | Path) -> Path:
    """The folder under ``root`` (itself included) that holds a checkpoint's ``model.json``."""
    root = Path(root)
    if (root / META_FILE).is_file():
        return root
    for path in sorted(root.rglob(META_FILE)):
        if (path.parent / WEIGHTS_FILE).is_file():
            return path.parent
    raise FileNotFoundError(f"no changeseg checkpoint ({META_FILE} + {WEIGHTS_FILE}) under {root}")


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
        return _from_registry(uri, match, tracking_uri=tracking_uri, download_dir=download_dir)
    if storage.is_remote(uri):
        fs, path = storage.filesystem_for(uri, storage_options)
        if fs.get_file_info(path).type != pafs.FileType.Directory:
            raise FileNotFoundError(f"checkpoint folder not found: {uri}")
        pafs.copy_files(path, str(download_dir), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        return find_checkpoint_dir(download_dir), {"name": uri, "version": None, "uri": uri}
    local = Path(uri.removeprefix("file://"))
    if not local.exists():
        raise FileNotFoundError(f"model checkpoint not found: {uri}")
    return find_checkpoint_dir(local), {"name": str(local), "version": None, "uri": uri}


def _from_registry(
    uri: str, match: re.Match, *, tracking_uri: str | None, download_dir: Path
) -> tuple[Path, dict[str, Any]]:
    # Lazy: mlflow takes seconds to import, and only registry URIs need it.
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
