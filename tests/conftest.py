"""Shared fixtures: one real local Ray instance per session, real MLflow on SQLite."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(Path(__file__).parent))

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Fake credentials for the loopback S3 server, set before Ray starts so workers inherit them.
for _key, _value in (
    ("AWS_ACCESS_KEY_ID", "testing"),
    ("AWS_SECRET_ACCESS_KEY", "testing"),
    ("AWS_DEFAULT_REGION", "us-east-1"),
):
    os.environ.setdefault(_key, _value)
# Keep Ray Train's console quiet and its artefacts out of the home folder.
os.environ.setdefault("RAY_TRAIN_ENABLE_STATE_TRACKING", "0")


@pytest.fixture(scope="session")
def ray_local(tmp_path_factory):
    """A real local Ray instance; 6 logical CPUs so Ray Data and 2 train workers fit on 2 cores."""
    import ray

    ray.init(
        num_cpus=6,
        include_dashboard=False,
        log_to_driver=False,
        _temp_dir=str(tmp_path_factory.mktemp("ray")),
        ignore_reinit_error=True,
    )
    yield ray
    ray.shutdown()


@pytest.fixture
def tracking_uri(tmp_path) -> str:
    """A fresh MLflow tracking + registry store (SQLite) for one test."""
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3-protocol server (moto) on loopback; yields its endpoint URL."""
    from helpers import free_port
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint):
    """A fresh bucket on the loopback S3 server."""
    import uuid

    import boto3

    name = f"bucket-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return name
