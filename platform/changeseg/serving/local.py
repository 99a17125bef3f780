"""Deploying serve/config.yaml from Python, the way ``serve run`` does: demo, tests, benchmark.

The file is validated as Ray's ``ServeDeploySchema`` and applied by the Serve
controller, which imports the application from its ``import_path`` and applies each
deployment's options (replicas, autoscaling, queue limits, GPUs) from the file.
"""

from __future__ import annotations

import base64
import copy
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from ray import serve
from ray.serve._private.api import serve_start
from ray.serve.schema import ServeDeploySchema

from changeseg.data.decode import encode_png
from changeseg.runtime import free_port, init_ray

APP_NAME = "changeseg"
# serve/config.yaml of a source checkout (platform/changeseg/serving -> repository root).
DEFAULT_CONFIG = Path(__file__).resolve().parents[3] / "serve" / "config.yaml"


def load_deploy_config(
    path: str | Path,
    *,
    port: int | None = None,
    args: dict[str, Any] | None = None,
    deployments: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """serve/config.yaml as a dict, with the HTTP port, the application's changeseg
    config sections (``args``, merged per section) and deployment options replaced."""
    data = yaml.safe_load(Path(path).read_text())
    data = copy.deepcopy(data)
    if port is not None:
        data.setdefault("http_options", {})["port"] = int(port)
    app = data["applications"][0]
    merged = app.setdefault("args", {}) or {}
    for section, values in (args or {}).items():
        merged[section] = {**merged.get(section, {}), **values} if isinstance(values, dict) else values
    app["args"] = merged
    for entry in app.get("deployments", []):
        entry.update((deployments or {}).get(entry["name"], {}))
    return data


# serve/app.py only re-exports this builder; importing it from the installed package
# works whatever folder the caller runs in (serve/ is only importable from the checkout).
CHECKOUT_IMPORT_PATH = "serve.app:app"
LIBRARY_IMPORT_PATH = "changeseg.serving:build_app"


def deploy(config: dict[str, Any], *, timeout_s: float = 120.0, wait: bool = True, log_level: str = "INFO") -> str:
    """Start Serve with the file's HTTP options (if not running) and apply the file;
    with ``wait``, block until the application runs. Returns the base URL. ``log_level``:
    Serve's own console logging (controller, proxy, replicas' access lines)."""
    config = copy.deepcopy(config)
    for app in config.get("applications", []):
        if app.get("import_path") == CHECKOUT_IMPORT_PATH:
            app["import_path"] = LIBRARY_IMPORT_PATH
    schema = ServeDeploySchema.model_validate(config)
    client = serve_start(
        http_options=schema.http_options.model_dump(),
        proxy_location=schema.proxy_location,
        global_logging_config={"log_level": log_level},
    )
    client.deploy_apps(schema)
    if wait:
        wait_running({app.name for app in schema.applications}, timeout_s=timeout_s)
    http = schema.http_options
    return f"http://{http.host}:{http.port}"


def wait_running(names: set[str], *, timeout_s: float = 120.0) -> None:
    """Block until every named application is RUNNING; raise if one fails to deploy."""
    deadline = time.monotonic() + timeout_s
    while True:
        apps = serve.status().applications
        states = {name: apps[name] for name in names if name in apps}
        if len(states) == len(names) and all(a.status == "RUNNING" for a in states.values()):
            return
        failed = {n: a.message for n, a in states.items() if a.status in ("DEPLOY_FAILED", "UNHEALTHY")}
        if failed:
            raise RuntimeError(f"Serve application failed to deploy: {failed}")
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"Serve application not running after {timeout_s} s: { {n: a.status for n, a in states.items()} }"
            )
        time.sleep(0.25)


def shutdown() -> None:
    serve.shutdown()


def _interrupt(*_: Any) -> None:
    raise KeyboardInterrupt


def run_server(
    cfg,
    *,
    config_path: str | Path = DEFAULT_CONFIG,
    port: int | None = None,
    stop: Callable[[], bool] | None = None,
    announce: Callable[[str], None] = print,
) -> None:
    """Serve serve/config.yaml until interrupted (Ctrl-C or SIGTERM), on a private Ray
    instance with token authentication and no dashboard unless ``ray.dashboard`` (or on
    the cluster of ``ray.address``). ``stop`` is polled once a second, for tests."""
    init_ray(cfg)
    signal.signal(signal.SIGTERM, _interrupt)  # a container stop ends Serve cleanly too
    try:
        url = deploy(load_deploy_config(config_path, port=port))
        announce(f"serving {APP_NAME} at {url} (POST {url}/v1/detect); Ctrl-C stops")
        while not (stop and stop()):
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        shutdown()
        announce("stopped")


def serve_one_request(
    cfg, *, t0, t1, tracking_uri: str | None = None, config_path: str | Path = DEFAULT_CONFIG, timeout_s: float = 180.0
) -> dict[str, Any]:
    """Serve ``cfg``'s registered model (its alias) from serve/config.yaml on a free
    loopback port, send it one pair over HTTP, shut Serve down; returns the answer
    without the PNGs, plus the round-trip time."""
    import requests  # lazy: only the demo sends a request

    port = free_port()
    tracking = {
        "tracking_uri": tracking_uri or cfg.resolved_tracking_uri(),
        "registered_model": cfg.tracking.registered_model,
        "alias": cfg.tracking.alias,
    }
    init_ray(cfg)
    try:
        # One request for the demo: Serve's controller and access lines would bury the answer.
        url = deploy(
            load_deploy_config(config_path, port=port, args={"tracking": tracking}),
            timeout_s=timeout_s,
            log_level="WARNING",
        )
        requests.get(f"{url}/readyz", timeout=timeout_s).raise_for_status()  # loads the model
        body = {
            "t0": {"data": base64.b64encode(encode_png(t0)).decode()},
            "t1": {"data": base64.b64encode(encode_png(t1)).decode()},
        }
        start = time.perf_counter()
        response = requests.post(f"{url}/v1/detect", json=body, timeout=timeout_s)
        elapsed_ms = 1000 * (time.perf_counter() - start)
        response.raise_for_status()
    finally:
        shutdown()
    answer = response.json()
    return {
        "url": f"{url}/v1/detect",
        "model": answer["model"],
        "summary": {k: v for k, v in answer["summary"].items() if k != "regions"}
        | {"regions": answer["summary"]["regions"][:5]},
        "timings_ms": answer["timings_ms"],
        "round_trip_ms": round(elapsed_ms, 1),
    }
