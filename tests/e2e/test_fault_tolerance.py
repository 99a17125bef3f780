"""A training worker killed mid-run: Ray Train restarts the group from the last checkpoint."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest
from mlflow import MlflowClient

from changeseg.config import build_config
from changeseg.training.trainer import finetune

pytestmark = pytest.mark.slow
# Epochs of a few seconds each: the epochs after the first checkpoint are the window in which
# the test must find and kill a worker, and on a loaded machine listing actors alone takes seconds.
EPOCHS = 6


def _checkpointed_epoch(run_dir) -> int | None:
    try:
        latest = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text()).get("latest_checkpoint_result")
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return int(latest["metrics"]["epoch"]) if latest else None


def _train_workers(ray) -> list[dict]:
    """Alive Ray Train worker actors of this Ray instance (the GCS actor table)."""
    from ray._private import state

    return [a for a in state.actors().values() if a["ActorClassName"] == "RayTrainWorker" and a["State"] == "ALIVE"]


def test_killed_worker_resumes_from_the_last_checkpoint(ray_local, tmp_path, tracking_uri):
    cfg = build_config(
        {
            "run": {"name": "ft", "storage_path": str(tmp_path / "runs")},
            "model": {"msf_width": 16, "msf_scales": 1},
            "train": {"epochs": EPOCHS, "batch_size": 2, "num_workers": 2, "num_overlays": 0, "max_failures": 1},
            "tracking": {"tracking_uri": tracking_uri},
            "data": {"synthetic": {"train_pairs": 8, "val_pairs": 2, "size": 48, "output_dir": str(tmp_path / "syn")}},
        }
    )
    killed: dict = {}

    def kill_one_worker_after_first_checkpoint() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            epoch = _checkpointed_epoch(tmp_path / "runs" / "ft")
            workers = _train_workers(ray_local) if epoch is not None else []
            if workers:
                killed.update(epoch=epoch, pid=workers[0]["Pid"], actor=workers[0]["ActorID"])
                os.kill(workers[0]["Pid"], signal.SIGKILL)  # a real worker process dies mid-run
                return
            time.sleep(0.1)

    killer = threading.Thread(target=kill_one_worker_after_first_checkpoint, daemon=True)
    killer.start()
    result = finetune(cfg)
    killer.join(timeout=5)

    assert killed, "no worker was killed"
    assert killed["epoch"] < EPOCHS - 1, "the kill came after the last checkpoint"
    from ray._private import state

    assert state.actors(actor_id=killed["actor"])["State"] == "DEAD"
    # The restarted group began at the epoch after a checkpoint, not from scratch, and finished.
    assert killed["epoch"] + 1 <= result.start_epoch <= EPOCHS - 1
    assert result.epochs == EPOCHS
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    assert client.get_run(result.mlflow_run_id).info.status == "FINISHED"
    assert int(client.get_model_version_by_alias("changeseg", "champion").version) == 1
