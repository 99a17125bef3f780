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
