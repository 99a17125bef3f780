"""End-to-end: resume after a killed run (`ray job submit` onto a `ray start` cluster is
covered by tests/test_stack.py on the two-node local stack)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow

# A small but real run: synthetic pairs, 2 DDP workers, a narrow model.
SMALL = [
    "data.synthetic.train_pairs=16",
    "data.synthetic.val_pairs=4",
    "data.synthetic.size=64",
    "model.msf_width=16",
    "model.msf_scales=2",
    "train.batch_size=4",
    "train.num_overlays=1",
]


def _env(**extra) -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env.pop("RAY_ADDRESS", None)
    env.update(extra)
    return env


def _kill_group(pgid: int) -> None:
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 0.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        time.sleep(wait)


def _latest_checkpointed_epoch(run_dir: Path) -> int | None:
    snapshot = run_dir / "checkpoint_manager_snapshot.json"
    try:
        data = json.loads(snapshot.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    latest = data.get("latest_checkpoint_result")
    return int(latest["metrics"]["epoch"]) if latest else None


def test_killed_run_resumes_from_its_checkpoint(tmp_path):
    db = tmp_path / "mlflow.db"
    runs = tmp_path / "runs"
    summary = tmp_path / "summary.json"
    cmd = [
        str(BIN / "python"),
        str(ROOT / "jobs" / "finetune.py"),
        "--config",
        str(ROOT / "jobs/configs/demo.yaml"),
        "--summary",
        str(summary),
        "run.name=interrupted",
        f"run.storage_path={runs}",
        f"data.synthetic.output_dir={tmp_path / 'synthetic'}",
        f"tracking.tracking_uri=sqlite:///{db}",
        "train.epochs=3",
        "ray.num_cpus=6",
        *SMALL,
    ]
    env = _env()
    first = subprocess.Popen(
        cmd, env=env, cwd=tmp_path, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 400
    try:
        while _latest_checkpointed_epoch(runs / "interrupted") is None:
            assert first.poll() is None, "the first run ended before its first checkpoint"
            assert time.time() < deadline, "no checkpoint within the time limit"
            time.sleep(0.5)
    finally:
        _kill_group(first.pid)  # the driver and the local Ray instance it started
        first.wait(timeout=60)
    checkpointed = _latest_checkpointed_epoch(runs / "interrupted")
    assert checkpointed is not None and checkpointed < 2

    second = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    result = json.loads(summary.read_text())
    assert result["start_epoch"] == checkpointed + 1, "did not continue from the checkpoint"
    assert result["epochs"] == 3

    client = MlflowClient(f"sqlite:///{db}", registry_uri=f"sqlite:///{db}")
    runs_found = client.search_runs([client.get_experiment_by_name("changeseg-demo").experiment_id])
    assert len(runs_found) == 1, "resume must continue the same MLflow run"
    steps = [m.step for m in client.get_metric_history(runs_found[0].info.run_id, "train_loss")]
    assert len(steps) == len(set(steps)), f"an epoch was trained twice: {steps}"
    assert max(steps) == 2 and all(s > checkpointed for s in steps if s >= checkpointed + 1)
    assert runs_found[0].data.tags.get("changeseg.resumed") == "true"
