"""End-to-end: real `ray start` + `ray job submit`, and resume after a killed run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from mlflow import MlflowClient

from helpers import free_port

ROOT = Path(__file__).resolve().parents[1]
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


@pytest.fixture
def ray_head(tmp_path):
    """A real Ray head started with `ray start --head`, token authentication on."""
    token = uuid.uuid4().hex
    env = _env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    port, dashboard = free_port(), free_port()
    temp_dir = Path("/tmp") / f"cs-e2e-{uuid.uuid4().hex[:8]}"
    start = [
        str(BIN / "ray"), "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
        "--num-cpus=6", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard}", f"--temp-dir={temp_dir}", "--disable-usage-stats",
        # Ports of its own, so it can run beside the session's local Ray instance.
        f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
        f"--metrics-export-port={free_port()}", f"--ray-client-server-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
    ]
    # A session of its own: every process of this cluster shares its process group, so
    # teardown stops exactly this cluster (`ray stop` would stop every Ray on the machine).
    proc = subprocess.Popen(start, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, out[-3000:]
    try:
        yield {"env": env, "dashboard": f"http://127.0.0.1:{dashboard}"}
    finally:
        _kill_group(proc.pid)


def _kill_group(pgid: int) -> None:
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 0.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        time.sleep(wait)


def test_ray_job_submit_trains_and_registers(ray_head, tmp_path):
    db = tmp_path / "mlflow.db"
    submission_id = f"finetune-{uuid.uuid4().hex[:8]}"
    cmd = [
        str(BIN / "ray"), "job", "submit", f"--address={ray_head['dashboard']}",
        f"--submission-id={submission_id}", f"--working-dir={ROOT}", "--",
        "python", "jobs/finetune.py", "--config", "jobs/configs/demo.yaml",
        "run.name=submitted", f"run.storage_path={tmp_path / 'runs'}",
        f"data.synthetic.output_dir={tmp_path / 'synthetic'}",
        f"tracking.tracking_uri=sqlite:///{db}", "train.epochs=1", *SMALL,
    ]
    done = subprocess.run(cmd, env=ray_head["env"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    status = subprocess.run(
        [str(BIN / "ray"), "job", "status", f"--address={ray_head['dashboard']}", submission_id],
        env=ray_head["env"], capture_output=True, text=True, timeout=120,
    )
    assert "succeeded" in (status.stdout + status.stderr).lower()

    client = MlflowClient(f"sqlite:///{db}", registry_uri=f"sqlite:///{db}")
    version = client.get_model_version_by_alias("changeseg", "champion")
    assert int(version.version) == 1
    run = client.get_run(version.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["changeseg.run_name"] == "submitted"
    assert "val_global_f1" in run.data.metrics and "val_per_image_f1_mean" in run.data.metrics
    assert run.data.params["train.num_workers"] == "2"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [0]


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
        str(BIN / "python"), str(ROOT / "jobs" / "finetune.py"), "--config", str(ROOT / "jobs/configs/demo.yaml"),
        "--summary", str(summary), "run.name=interrupted", f"run.storage_path={runs}",
        f"data.synthetic.output_dir={tmp_path / 'synthetic'}", f"tracking.tracking_uri=sqlite:///{db}",
        "train.epochs=4", "ray.num_cpus=6", *SMALL,
    ]
    env = _env()
    first = subprocess.Popen(cmd, env=env, cwd=tmp_path, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
    assert checkpointed is not None and checkpointed < 3

    second = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    result = json.loads(summary.read_text())
    assert result["start_epoch"] == checkpointed + 1, "did not continue from the checkpoint"
    assert result["epochs"] == 4

    client = MlflowClient(f"sqlite:///{db}", registry_uri=f"sqlite:///{db}")
    runs_found = client.search_runs([client.get_experiment_by_name("changeseg-demo").experiment_id])
    assert len(runs_found) == 1, "resume must continue the same MLflow run"
    steps = [m.step for m in client.get_metric_history(runs_found[0].info.run_id, "train_loss")]
    assert len(steps) == len(set(steps)), f"an epoch was trained twice: {steps}"
    assert max(steps) == 3 and all(s > checkpointed for s in steps if s >= checkpointed + 1)
    assert runs_found[0].data.tags.get("changeseg.resumed") == "true"
