"""Create or update the MLflow users changeseg runs as (MLflow's basic-auth app).

    MLFLOW_TRACKING_URI=http://127.0.0.1:5000 MLFLOW_AUTH_ADMIN_PASSWORD=... \
    MLFLOW_TRAIN_PASSWORD=... MLFLOW_SERVE_PASSWORD=... python infra/mlflow/users.py

- ``changeseg-train``: fine-tuning and batch-scoring jobs. It creates the experiment and
  the registered model, which makes it their manager: it logs runs, registers versions
  and moves ``champion``.
- ``changeseg-serve``: Serve replicas. It only reads (the server's default permission),
  so a compromised replica cannot move an alias or delete a version.

The admin (``MLFLOW_AUTH_ADMIN_USERNAME``, default ``admin``) runs this; running it again
sets the passwords anew, which is how they are rotated.
"""

from __future__ import annotations

import os
import sys

import requests

TRAIN_USER = "changeseg-train"
SERVE_USER = "changeseg-serve"


def ensure_user(tracking_uri: str, admin: tuple[str, str], username: str, password: str) -> None:
    """Create ``username`` with ``password``, or set that password if it exists."""
    api = tracking_uri.rstrip("/") + "/api/2.0/mlflow/users"
    body = {"username": username, "password": password}
    created = requests.post(f"{api}/create", json=body, auth=admin, timeout=30)
    if created.ok:
        return
    if created.json().get("error_code") != "RESOURCE_ALREADY_EXISTS":
        raise RuntimeError(f"creating MLflow user {username}: {created.status_code} {created.text[:300]}")
    updated = requests.patch(f"{api}/update-password", json=body, auth=admin, timeout=30)
    if not updated.ok:
        raise RuntimeError(f"updating MLflow user {username}: {updated.status_code} {updated.text[:300]}")


def ensure_users(tracking_uri: str, admin: tuple[str, str], passwords: dict[str, str]) -> None:
    for username, password in passwords.items():
        ensure_user(tracking_uri, admin, username, password)


def main() -> int:
    env = os.environ
    missing = [
        k
        for k in ("MLFLOW_TRACKING_URI", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_TRAIN_PASSWORD", "MLFLOW_SERVE_PASSWORD")
        if not env.get(k)
    ]
    if missing:
        print(f"set {', '.join(missing)}", file=sys.stderr)
        return 2
    admin = (env.get("MLFLOW_AUTH_ADMIN_USERNAME", "admin"), env["MLFLOW_AUTH_ADMIN_PASSWORD"])
    ensure_users(
        env["MLFLOW_TRACKING_URI"],
        admin,
        {TRAIN_USER: env["MLFLOW_TRAIN_PASSWORD"], SERVE_USER: env["MLFLOW_SERVE_PASSWORD"]},
    )
    print(f"MLflow users {TRAIN_USER} (jobs) and {SERVE_USER} (read-only, serving) are set")
    return 0


if __name__ == "__main__":
    sys.exit(main())
