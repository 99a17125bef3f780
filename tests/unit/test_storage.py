import os
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from changeseg import storage
from changeseg.config import StorageSection


def test_local_round_trip_and_listing(tmp_path):
    target = storage.join(str(tmp_path), "a", "b.bin")
    storage.write_bytes(target, b"xyz")
    assert storage.read_bytes(target) == b"xyz"
    assert storage.read_bytes("file://" + target) == b"xyz"
    assert storage.exists(target) and not storage.exists(target + ".missing")
    assert storage.is_dir(str(tmp_path / "a"))
    assert storage.list_files(str(tmp_path / "a")) == [target]


def test_s3_uri_maps_to_bucket_path_and_endpoint(monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    fs, path = storage.filesystem_for("s3://bucket/some/prefix/", StorageSection(endpoint_url="http://127.0.0.1:9"))
    assert isinstance(fs, pafs.S3FileSystem)
    assert path == "bucket/some/prefix"
    assert storage.join("s3://bucket/x", "y", "z.png") == "s3://bucket/x/y/z.png"


def test_endpoint_falls_back_to_the_standard_variable(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9999")
    options = storage._s3_options(None)
    assert options["endpoint_override"] == "127.0.0.1:9999" and options["scheme"] == "http"


def test_unknown_scheme_is_an_error():
    with pytest.raises(ValueError, match="gs://b/x"):
        storage.filesystem_for("gs://b/x")


def test_ray_storage_makes_local_paths_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path, fs = storage.ray_storage("./runs")
    assert fs is None and Path(path) == tmp_path / "runs" and os.path.isabs(path)
