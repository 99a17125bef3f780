"""One place that turns a URI (local path, ``file://``, ``s3://``) into a filesystem.

S3 endpoint, region and credentials come from :class:`~changeseg.config.StorageSection`
when set, else from the standard variables (``AWS_ENDPOINT_URL_S3``,
``AWS_ENDPOINT_URL``, ``AWS_REGION``, ``AWS_DEFAULT_REGION``, ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``), so the same code reaches AWS, MinIO
or a loopback test server.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs

from changeseg.config import StorageSection


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def _s3_options(storage: StorageSection | None) -> dict:
    storage = storage or StorageSection()
    endpoint = storage.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    region = storage.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    options: dict = {"region": region or "us-east-1"}
    if storage.anonymous:
        options["anonymous"] = True
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        options["endpoint_override"] = parsed.netloc
        options["scheme"] = parsed.scheme
        # Path-style addressing: loopback and MinIO endpoints have no bucket DNS names.
        options["force_virtual_addressing"] = False
    return options


def gdal_s3_options(storage: StorageSection | None = None) -> dict:
    """GDAL's ``/vsis3/`` settings for the endpoint and region :func:`filesystem_for` uses, so
    rasterio reads ``s3://`` rasters in place (credentials: GDAL reads the AWS variables)."""
    options = _s3_options(storage)
    # No listing of the object's "folder" on open: GDAL would probe it for sidecar files.
    out = {"AWS_REGION": options["region"], "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR"}
    if options.get("anonymous"):
        out["AWS_NO_SIGN_REQUEST"] = "YES"
    if "endpoint_override" in options:
        out.update(
            AWS_S3_ENDPOINT=options["endpoint_override"],
            AWS_HTTPS="YES" if options["scheme"] == "https" else "NO",
            AWS_VIRTUAL_HOSTING="FALSE",
        )
    return out


def filesystem_for(uri: str, storage: StorageSection | None = None) -> tuple[pafs.FileSystem, str]:
    """Return ``(filesystem, path)`` where ``path`` is what the filesystem expects."""
    if uri.startswith("s3://"):
        return pafs.S3FileSystem(**_s3_options(storage)), uri[len("s3://") :].rstrip("/")
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    elif "://" in uri:
        raise ValueError(f"unsupported URI scheme in '{uri}': use a local path, file:// or s3://")
    return pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())


def join(uri: str, *parts: str) -> str:
    """Join path segments onto a URI, keeping its scheme."""
    if is_remote(uri):
        scheme, rest = uri.split("://", 1)
        return f"{scheme}://" + posixpath.join(rest.rstrip("/"), *parts)
    return str(Path(uri.removeprefix("file://")).joinpath(*parts))


def exists(uri: str, storage: StorageSection | None = None) -> bool:
    fs, path = filesystem_for(uri, storage)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def is_dir(uri: str, storage: StorageSection | None = None) -> bool:
    fs, path = filesystem_for(uri, storage)
    return fs.get_file_info(path).type == pafs.FileType.Directory


def list_files(uri: str, storage: StorageSection | None = None) -> list[str]:
    """URIs of the plain files directly inside a folder, sorted by name."""
    fs, path = filesystem_for(uri, storage)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    names = sorted(info.base_name for info in infos if info.type == pafs.FileType.File)
    return [join(uri, name) for name in names]


def read_bytes(uri: str, storage: StorageSection | None = None) -> bytes:
    fs, path = filesystem_for(uri, storage)
    with fs.open_input_stream(path) as stream:
        return stream.read()


def write_bytes(uri: str, data: bytes, storage: StorageSection | None = None) -> None:
    fs, path = filesystem_for(uri, storage)
    parent = posixpath.dirname(path)
    if parent:
        fs.create_dir(parent, recursive=True)
    with fs.open_output_stream(path) as stream:
        stream.write(data)


def ray_storage(uri: str, storage: StorageSection | None = None) -> tuple[str, pafs.FileSystem | None]:
    """``(storage_path, storage_filesystem)`` for ``ray.train.RunConfig``.

    Local paths become absolute (Ray workers may run in another working directory);
    s3:// gets an explicit filesystem so a configured endpoint is honoured.
    """
    if uri.startswith("s3://"):
        fs, path = filesystem_for(uri, storage)
        return path, fs
    _, path = filesystem_for(uri, storage)
    return path, None
