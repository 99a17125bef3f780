"""`changeseg serve`: a private Ray with token auth and no dashboard, serving until interrupted."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from helpers import free_port

ROOT = Path(__file__).resolve().parents[2]


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_serve_command_rejects_a_missing_serve_config(tmp_path):
    from changeseg.cli import main

    assert main(["serve", "--serve-config", str(tmp_path / "nope.yaml")]) == 2


@pytest.mark.slow
def test_serve_command_serves_until_interrupted_without_a_dashboard(tmp_path):
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "RAY_ADDRESS": ""}
    env.pop("RAY_ADDRESS")
    proc = subprocess.Popen(
        [sys.executable, "-m", "changeseg.cli", "serve", "--port", str(port), "ray.num_cpus=4"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 240
        while not any("serving changeseg at" in line for line in lines):
            assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)
            time.sleep(1)
        assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=30).status_code == 200
        assert not _listening(8265)  # no dashboard
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
        reader.join(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = "".join(lines)
    assert proc.returncode == 0, out
    assert f"serving changeseg at http://127.0.0.1:{port}" in out and "stopped" in out
