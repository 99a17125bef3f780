"""A cluster-shaped changeseg stack on one machine; its HTTP endpoints on 127.0.0.1.

    python infra/local/stack.py up   [--state-dir .stack]   # make stack
    python infra/local/stack.py down [--state-dir .stack]   # make stack-down

``up`` starts, each in a process group of its own:

- ``s3``: a loopback S3 server (moto) with the bucket ``changeseg``;
- ``mlflow``: an MLflow server with basic authentication (``--app-name basic-auth``),
  runs, registry and users in SQLite, artifacts in ``s3://changeseg/mlflow-artifacts`` on
  that S3 (uploaded through the server); an admin with a generated password, the jobs'
  user ``changeseg-train`` and the read-only ``changeseg-serve`` (infra/mlflow/users.py);
- ``ray-head`` and ``ray-worker``: a Ray head and a second Ray node joined to it, with
  token authentication, each offering ``--node-cpus`` logical CPUs.

Ports are free ones chosen at start. The state folder gets ``stack.json`` (ports,
process groups, environment, the MLflow users' passwords; mode 600), ``env`` (the jobs' user) (``source`` it to point ``ray job submit``,
``serve deploy``, MLflow and S3 clients at the stack) and the logs. The Ray nodes carry
the same variables, as a cluster's nodes carry their secrets, and this repository on
``PYTHONPATH``, as the container image has it, so ``serve.app:app`` imports everywhere.

``down`` ends exactly those process groups, then any process left running from the
stack's Ray folder (job drivers run in sessions of their own); it never runs
``ray stop``, which would stop every Ray instance on the machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from changeseg.runtime import free_port

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
BUCKET = "changeseg"
# Stop order: what depends on the others goes first.
COMPONENTS = ("ray-worker", "ray-head", "mlflow", "s3")


def _wait_http(url: str, *, timeout_s: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # an HTTP answer of any status: the server is up
        except OSError:
            if time.monotonic() > deadline:
                tail = log.read_text()[-2000:] if log.exists() else ""
                raise RuntimeError(f"{what} did not answer at {url} within {timeout_s:.0f} s\n{tail}") from None
            time.sleep(0.3)


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # After the command name: state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def _end_group(pgid: int, *, grace_s: float = 5.0) -> None:
    """SIGTERM the process group, SIGKILL whatever is left after ``grace_s``."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.2)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _processes_under(folder: str) -> list[int]:
    """Our processes whose command line or working folder lies in ``folder``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if folder in cmdline or cwd == folder or cwd.startswith(folder + "/"):
            found.append(int(entry.name))
    return found


def _start(name: str, cmd: list[str], *, env: dict, state_dir: Path, wait: bool = False) -> int:
    """Start ``cmd`` in a new session (its own process group); returns the group id."""
    log = open(state_dir / "logs" / f"{name}.log", "ab")
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    if wait:  # `ray start` returns once its node is up; the node's processes keep the group
        if proc.wait(timeout=300) != 0:
            _end_group(proc.pid, grace_s=2)
            raise RuntimeError(
                f"{name} failed: {' '.join(cmd)}\n{(state_dir / 'logs' / f'{name}.log').read_text()[-3000:]}"
            )
    return proc.pid


def _mlflow_users():
    spec = importlib.util.spec_from_file_location("mlflow_users", ROOT / "infra" / "mlflow" / "users.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _mlflow_auth_env(state_dir: Path, admin_password: str) -> dict[str, str]:
    """The MLflow server's own settings: the auth app's config file and secrets."""
    config = state_dir / "mlflow-auth.ini"
    config.write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = sqlite:///{state_dir.resolve() / 'mlflow-auth.db'}\n"
        "admin_username = admin\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    config.chmod(0o600)
    return {
        "MLFLOW_AUTH_CONFIG_PATH": str(config),
        "MLFLOW_AUTH_ADMIN_USERNAME": "admin",
        "MLFLOW_AUTH_ADMIN_PASSWORD": admin_password,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
    }


def _ray_node_ports() -> list[str]:
    # Every port a node opens, so two nodes (and other Ray instances) share the machine.
    return [
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
        "--min-worker-port=0",
        "--max-worker-port=0",
    ]


def up(state_dir: Path, *, node_cpus: int) -> dict:
    state_file = state_dir / "stack.json"
    if state_file.exists():
        old = json.loads(state_file.read_text())
        if any(group_members(pgid) for pgid in old["groups"].values()):
            raise SystemExit(f"a stack is already running from {state_dir}; stop it first (make stack-down)")
    (state_dir / "logs").mkdir(parents=True, exist_ok=True)
    ports = {name: free_port() for name in ("s3", "mlflow", "gcs", "dashboard", "client")}
    # Short, unique: Ray puts Unix sockets under it (their paths are limited to ~100 bytes).
    ray_dir = f"/tmp/changeseg-stack-{secrets.token_hex(4)}"
    users = _mlflow_users()
    credentials = {
        "admin": ["admin", secrets.token_hex(16)],
        "train": [users.TRAIN_USER, secrets.token_hex(16)],
        "serve": [users.SERVE_USER, secrets.token_hex(16)],
    }
    settings = {
        "RAY_ADDRESS": f"http://127.0.0.1:{ports['dashboard']}",
        "RAY_DASHBOARD_ADDRESS": f"http://127.0.0.1:{ports['dashboard']}",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(16),
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{ports['mlflow']}",
        # Jobs and replicas on the stack log and register as the jobs' user.
        "MLFLOW_TRACKING_USERNAME": credentials["train"][0],
        "MLFLOW_TRACKING_PASSWORD": credentials["train"][1],
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{ports['s3']}",
        "MLFLOW_S3_ENDPOINT_URL": f"http://127.0.0.1:{ports['s3']}",
        # The loopback server accepts any key; real clusters get these from a secret.
        "AWS_ACCESS_KEY_ID": "stack",
        "AWS_SECRET_ACCESS_KEY": "stack",
        "AWS_DEFAULT_REGION": "us-east-1",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    # The nodes get everything but the client-side addresses (a job's driver gets its own).
    client_only = ("RAY_ADDRESS", "RAY_DASHBOARD_ADDRESS")
    env = {k: v for k, v in os.environ.items() if k not in (*client_only, "MLFLOW_TRACKING_URI")}
    env.update({k: v for k, v in settings.items() if k not in client_only})
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    state = {
        "state_dir": str(state_dir),
        "ray_dir": ray_dir,
        "ports": ports,
        "settings": settings,
        "mlflow_users": credentials,
        "groups": {},
    }

    def save() -> None:
        state_file.write_text(json.dumps(state, indent=2))
        state_file.chmod(0o600)  # it holds the Ray token

    try:
        state["groups"]["s3"] = _start(
            "s3", [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(ports["s3"])], env=env, state_dir=state_dir
        )
        save()
        _wait_http(
            f"{settings['AWS_ENDPOINT_URL']}/moto-api/", timeout_s=60, what="S3", log=state_dir / "logs" / "s3.log"
        )
        import boto3

        boto3.client(
            "s3",
            endpoint_url=settings["AWS_ENDPOINT_URL"],
            region_name="us-east-1",
            aws_access_key_id="stack",
            aws_secret_access_key="stack",
        ).create_bucket(Bucket=BUCKET)

        mlflow_env = env | _mlflow_auth_env(state_dir, credentials["admin"][1])
        state["groups"]["mlflow"] = _start(
            "mlflow",
            [
                str(BIN / "mlflow"),
                "server",
                "--app-name",
                "basic-auth",
                "--backend-store-uri",
                f"sqlite:///{state_dir.resolve() / 'mlflow.db'}",
                "--artifacts-destination",
                f"s3://{BUCKET}/mlflow-artifacts",
                "--serve-artifacts",
                "--host",
                "127.0.0.1",
                "--port",
                str(ports["mlflow"]),
                "--workers",
                "1",
            ],
            env=mlflow_env,
            state_dir=state_dir,
        )
        save()

        common = ["--node-ip-address=127.0.0.1", f"--num-cpus={node_cpus}", "--disable-usage-stats"]
        state["groups"]["ray-head"] = _start(
            "ray-head",
            [
                str(BIN / "ray"),
                "start",
                "--head",
                f"--port={ports['gcs']}",
                f"--temp-dir={ray_dir}/head",
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={ports['dashboard']}",
                f"--ray-client-server-port={ports['client']}",
                *common,
                *_ray_node_ports(),
            ],
            env=env,
            state_dir=state_dir,
            wait=True,
        )
        save()
        state["groups"]["ray-worker"] = _start(
            "ray-worker",
            [
                str(BIN / "ray"),
                "start",
                f"--address=127.0.0.1:{ports['gcs']}",
                f"--temp-dir={ray_dir}/worker",
                *common,
                *_ray_node_ports(),
            ],
            env=env,
            state_dir=state_dir,
            wait=True,
        )
        save()
        _wait_http(
            f"{settings['MLFLOW_TRACKING_URI']}/health",
            timeout_s=120,
            what="MLflow",
            log=state_dir / "logs" / "mlflow.log",
        )
        users.ensure_users(
            settings["MLFLOW_TRACKING_URI"],
            tuple(credentials["admin"]),
            dict(credentials[k] for k in ("train", "serve")),
        )
    except BaseException:
        down(state_dir)
        raise
    lines = [f"export {key}={value}" for key, value in settings.items()]
    env_file = state_dir / "env"
    env_file.write_text("\n".join(lines) + "\n")
    env_file.chmod(0o600)
    return state


def down(state_dir: Path) -> list[str]:
    """Stop every component of the stack in ``state_dir``; returns the names stopped."""
    state_file = state_dir / "stack.json"
    if not state_file.exists():
        return []
    state = json.loads(state_file.read_text())
    stopped = []
    for name in COMPONENTS:
        pgid = state["groups"].get(name)
        if pgid is not None and group_members(pgid):
            _end_group(pgid)
            stopped.append(name)
    ray_dir = state["ray_dir"]
    for pid in _processes_under(ray_dir):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    shutil.rmtree(ray_dir, ignore_errors=True)
    state_file.unlink()
    (state_dir / "env").unlink(missing_ok=True)
    return stopped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="a local Ray + MLflow + S3 stack on 127.0.0.1")
    parser.add_argument("command", choices=["up", "down"])
    parser.add_argument("--state-dir", default=str(ROOT / ".stack"), help="pid/port state, env file, logs")
    parser.add_argument("--node-cpus", type=int, default=3, help="logical CPUs each Ray node offers")
    args = parser.parse_args(argv)
    state_dir = Path(args.state_dir).resolve()
    if args.command == "up":
        state = up(state_dir, node_cpus=args.node_cpus)
        s = state["settings"]
        print(
            f"stack up: Ray dashboard {s['RAY_ADDRESS']} (2 nodes), MLflow {s['MLFLOW_TRACKING_URI']}, "
            f"S3 {s['AWS_ENDPOINT_URL']} (bucket {BUCKET})"
        )
        print(f"point clients at it with: source {state_dir / 'env'}")
    else:
        stopped = down(state_dir)
        print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
