"""End-to-end on the local multi-node stack (infra/local/stack.py, `make stack`): data on
S3, fine-tuning submitted as a Ray job with DDP workers on both nodes, batch scoring with
the registered version, then the Serve app deployed onto the cluster and queried over HTTP.
MLflow runs with authentication: the jobs log in as their user, the serving user only
reads, and a client without credentials cannot move an alias."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import boto3
import numpy as np
import pytest
import requests
from helpers import free_port, load_module, write_pair_folder
from mlflow import MlflowClient
from PIL import Image

from changeseg.serving.local import load_deploy_config

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
STACK = ROOT / "infra" / "local" / "stack.py"
pytestmark = pytest.mark.slow


stack_module = load_module(STACK)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    state_dir = tmp_path_factory.mktemp("stack")
    up = subprocess.run(
        [sys.executable, str(STACK), "up", "--state-dir", str(state_dir)], capture_output=True, text=True, timeout=300
    )
    try:
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        state = json.loads((state_dir / "stack.json").read_text())
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | state["settings"]
        env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
        yield state | {"env": env}
    finally:
        down = subprocess.run(
            [sys.executable, str(STACK), "down", "--state-dir", str(state_dir)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert down.returncode == 0, down.stderr[-2000:]
    # Nothing of the stack is left: no process in its groups or its Ray folder.
    for name, pgid in state["groups"].items():
        assert not stack_module.group_members(pgid), f"{name} still running"
    assert not Path(state["ray_dir"]).exists()


def _run(cmd: list[str], env: dict, timeout: float = 300) -> str:
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-3000:]
    return done.stdout


def _submit(env: dict, *entrypoint: str) -> str:
    return _run([str(BIN / "ray"), "job", "submit", f"--working-dir={ROOT}", "--", "python", *entrypoint], env)


def _login(monkeypatch, user: list[str] | None) -> None:
    """MLflow clients in this process read the standard variables on every request."""
    for var, value in zip(("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"), user or (None, None)):
        if value is None:
            monkeypatch.delenv(var, raising=False)
        else:
            monkeypatch.setenv(var, value)


def _assert_registry_guarded(uri: str, users: dict) -> None:
    """Anonymous: nothing. The serving user: reads, cannot move an alias. Jobs' user: can.

    Plain REST requests with explicit credentials: what the server allows, independent
    of any client-side state of MLflow's process-wide HTTP session."""
    alias_api = f"{uri}/api/2.0/mlflow/registered-models/alias"

    def move(alias: str, auth) -> requests.Response:
        return requests.post(
            alias_api, auth=auth, timeout=30, json={"name": "changeseg", "alias": alias, "version": "1"}
        )

    assert move("champion", None).status_code == 401
    serve = tuple(users["serve"])
    read = requests.get(alias_api, auth=serve, timeout=30, params={"name": "changeseg", "alias": "champion"})
    assert read.status_code == 200 and read.json()["model_version"]["version"] == "1", read.text
    denied = move("challenger", serve)
    assert denied.status_code == 403, denied.text
    assert move("challenger", tuple(users["train"])).status_code == 200
    listed = requests.get(
        f"{uri}/api/2.0/mlflow/registered-models/get", auth=serve, timeout=30, params={"name": "changeseg"}
    )
    assert {a["alias"] for a in listed.json()["registered_model"]["aliases"]} == {"champion", "challenger"}


def test_stack_trains_on_two_nodes_scores_and_serves(stack, tmp_path, monkeypatch):
    env, s3_url = stack["env"], stack["settings"]["AWS_ENDPOINT_URL"]
    s3 = boto3.client(
        "s3", endpoint_url=s3_url, region_name="us-east-1", aws_access_key_id="stack", aws_secret_access_key="stack"
    )
    pairs = write_pair_folder(tmp_path / "data", [f"p{i}" for i in range(8)], size=(64, 64))
    for path in (tmp_path / "data").rglob("*.png"):
        s3.upload_file(str(path), "changeseg", f"data/{path.relative_to(tmp_path / 'data').as_posix()}")

    # One worker per node: each node offers 3 CPUs and each worker asks for 2.
    _submit(
        env,
        "jobs/finetune.py",
        "--config",
        "jobs/configs/demo.yaml",
        "run.name=stack",
        "run.storage_path=s3://changeseg/runs",
        "data.train_path=s3://changeseg/data",
        "train.epochs=1",
        "train.batch_size=2",
        "train.cpus_per_worker=2",
        "train.num_overlays=1",
        "model.msf_width=16",
        "model.msf_scales=1",
    )
    actors = json.loads(
        _run(
            [
                str(BIN / "ray"),
                "list",
                "actors",
                "--filter",
                "class_name=RayTrainWorker",
                "--format",
                "json",
                "--detail",
                "--address",
                env["RAY_ADDRESS"],
            ],
            env,
            timeout=120,
        )
    )
    assert len({a["node_id"] for a in actors}) == 2, "DDP workers did not run on both nodes"
    runs = s3.list_objects_v2(Bucket="changeseg", Prefix="runs/stack/")["Contents"]
    assert any("/checkpoint_" in obj["Key"] for obj in runs)
    _login(monkeypatch, stack["mlflow_users"]["train"])
    registry = MlflowClient(env["MLFLOW_TRACKING_URI"])
    version = registry.get_model_version_by_alias("changeseg", "champion")
    assert int(version.version) == 1  # a str over REST, an int from some stores
    _assert_registry_guarded(env["MLFLOW_TRACKING_URI"], stack["mlflow_users"])

    _submit(
        env,
        "jobs/score.py",
        "--model",
        "models:/changeseg/1",
        "--input",
        "s3://changeseg/data",
        "--output",
        "s3://changeseg/scores",
    )
    summary = json.loads(s3.get_object(Bucket="changeseg", Key="scores/summary.json")["Body"].read())
    assert summary["pairs_total"] == summary["ok"] == 8, summary
    assert 0 <= summary["metrics"]["global_f1"] <= 1  # the input has masks: an evaluation too

    port = free_port()
    config = tmp_path / "serve.yaml"
    config.write_text(json.dumps(load_deploy_config(ROOT / "serve" / "config.yaml", port=port)))
    _run([str(BIN / "serve"), "deploy", str(config)], env, timeout=120)
    deadline = time.monotonic() + 180
    while True:
        try:
            # The first answer loads the model, which may take a while.
            if requests.get(f"http://127.0.0.1:{port}/readyz", timeout=90).status_code == 200:
                break
        except requests.RequestException:  # not listening yet
            pass
        assert time.monotonic() < deadline, "the Serve app did not become ready"
        time.sleep(1)

    def png(array) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(array).save(buf, format="PNG")
        return buf.getvalue()

    pair = pairs["p3"]
    answer = requests.post(
        f"http://127.0.0.1:{port}/v1/detect", files={"t0": png(pair["t0"]), "t1": png(pair["t1"])}, timeout=60
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model"]["version"] == 1
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["mask_png"]))))
    assert mask.shape == (64, 64)
