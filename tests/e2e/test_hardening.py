"""Deployment hardening, checked offline on the rendered KubeRay manifests and the infra
files: locked-down pods, per-group secrets, network policies, pinned images, no secrets in
git, loopback dashboards, MLflow behind authentication. The Kubernetes objects are also
validated against Kubernetes' own schemas (kubernetes-validate bundles them)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from helpers import load_module

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
KUBERAY = INFRA / "kuberay"
K8S_VERSION = "1.30"  # the oldest Kubernetes the manifests target

render = load_module(KUBERAY / "render.py")


def _rendered() -> dict[str, dict]:
    """Every cluster manifest as KubeRay gets it: the source and a fresh rendering."""
    docs = {name: yaml.safe_load(text) for name, text in render.render_all().items()}
    return {"raycluster.yaml": yaml.safe_load((KUBERAY / "raycluster.yaml").read_text()), **docs}


def _cluster_spec(doc: dict) -> dict:
    spec = doc["spec"]
    return spec.get("rayClusterSpec") or spec.get("rayClusterConfig") or spec


def _groups(doc: dict) -> dict[str, dict]:
    """group name -> pod template, the RayJob's submitter pod included."""
    spec = _cluster_spec(doc)
    groups = {"head": spec["headGroupSpec"]["template"]}
    groups |= {g["groupName"]: g["template"] for g in spec["workerGroupSpecs"]}
    if "submitterPodTemplate" in doc["spec"]:
        groups["submitter"] = doc["spec"]["submitterPodTemplate"]
    return groups


def _access() -> list[dict]:
    return list(yaml.safe_load_all((KUBERAY / "access.yaml").read_text()))


def _secrets(template: dict) -> dict[str, dict]:
    return {
        r["secretRef"]["name"]: r["secretRef"]
        for c in template["spec"]["containers"]
        for r in c.get("envFrom", [])
        if "secretRef" in r
    }


CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "runAsNonRoot": True,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def test_every_pod_runs_unprivileged_with_shm_and_ephemeral_storage():
    service_accounts = {d["metadata"]["name"] for d in _access() if d["kind"] == "ServiceAccount"}
    for name, doc in _rendered().items():
        spec = _cluster_spec(doc)
        autoscaler = spec["autoscalerOptions"]
        assert autoscaler["securityContext"] == CONTAINER_SECURITY, name
        assert "ephemeral-storage" in autoscaler["resources"]["limits"], name
        start_params = {"head": spec["headGroupSpec"]["rayStartParams"]}
        start_params |= {g["groupName"]: g["rayStartParams"] for g in spec["workerGroupSpecs"]}
        for group, template in _groups(doc).items():
            where = f"{name}:{group}"
            pod = template["spec"]
            assert pod["securityContext"]["runAsNonRoot"] is True, where
            assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
            if pod.get("automountServiceAccountToken", True):
                # A token only with a named service account that access.yaml defines.
                assert pod.get("serviceAccountName") in service_accounts, where
            for container in pod["containers"]:
                assert container["securityContext"] == CONTAINER_SECURITY, where
                resources = container["resources"]
                assert "ephemeral-storage" in resources["requests"] and "ephemeral-storage" in resources["limits"], (
                    where
                )
            if group == "submitter":
                continue
            # /dev/shm: memory-backed and as large as the object store Ray is told to use.
            shm = {v["name"]: v for v in pod["volumes"]}
            mounts = {m["mountPath"]: m["name"] for c in pod["containers"] for m in c.get("volumeMounts", [])}
            volume = shm[mounts["/dev/shm"]]["emptyDir"]
            assert volume["medium"] == "Memory", where
            size = _bytes(volume["sizeLimit"])
            assert size >= int(start_params[group]["object-store-memory"]), where
            assert size < _bytes(pod["containers"][0]["resources"]["limits"]["memory"]), where
    workers = [t for name, d in _rendered().items() for g, t in _groups(d).items() if g != "head"]
    assert all(t["spec"]["automountServiceAccountToken"] is False for t in workers)


def _bytes(quantity: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([KMGT]i)?", quantity).groups()
    return int(number) * 1024 ** (" KMGT".index(unit[0]) if unit else 0)


def test_serving_pods_get_no_write_keys_and_no_registry_admin():
    docs = _rendered()
    examples = {d["metadata"]["name"]: d for d in yaml.safe_load_all((KUBERAY / "secrets.example.yaml").read_text())}
    for group, template in _groups(docs["rayservice.yaml"]).items():
        secrets = _secrets(template)
        assert set(secrets) <= {"changeseg-ray-token", "changeseg-mlflow-serve", "changeseg-s3-read"}, group
        assert secrets["changeseg-mlflow-serve"] and secrets.get("changeseg-s3-read", {"optional": True})["optional"]
    assert examples["changeseg-mlflow-serve"]["stringData"]["MLFLOW_TRACKING_USERNAME"] == "changeseg-serve"
    assert examples["changeseg-mlflow"]["stringData"]["MLFLOW_TRACKING_USERNAME"] == "changeseg-train"
    # The registry admin's password and the server's storage keys reach no Ray pod.
    for name, doc in docs.items():
        for group, template in _groups(doc).items():
            assert "changeseg-mlflow-server" not in _secrets(template), f"{name}:{group}"
            assert "changeseg-ray-token" in _secrets(template), f"{name}:{group}"  # token auth everywhere
        assert {"secretRef": {"name": "changeseg-ray-token"}} in _cluster_spec(doc)["autoscalerOptions"]["envFrom"]


def test_rayjob_submitter_presents_the_ray_token_and_nothing_else():
    submitter = _rendered()["rayjob.yaml"]["spec"]["submitterPodTemplate"]
    assert submitter["spec"]["restartPolicy"] == "Never"
    (container,) = submitter["spec"]["containers"]
    assert "command" not in container  # KubeRay supplies `ray job submit ... -- <entrypoint>`
    assert set(_secrets(submitter)) == {"changeseg-ray-token"}
    configmap = yaml.safe_load_all((KUBERAY / "secrets.example.yaml").read_text())
    assert next(d for d in configmap if d["kind"] == "ConfigMap")["data"]["RAY_AUTH_MODE"] == "token"


def _selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def test_network_policies_keep_ray_inside_and_serve_behind_the_ingress():
    policies = [d for d in _access() if d["kind"] == "NetworkPolicy"]
    for doc in _rendered().values():
        for group, template in _groups(doc).items():
            labels = template["metadata"]["labels"]
            applying = [p for p in policies if _selects(p["spec"]["podSelector"], labels)]
            assert applying, f"no NetworkPolicy selects {group}"
            ports = set()
            for policy in applying:
                assert policy["spec"]["policyTypes"] == ["Ingress"]
                for rule in policy["spec"]["ingress"]:
                    assert rule.get("from"), f"{policy['metadata']['name']}: a rule open to every source"
                    inside = all(
                        set(peer) == {"podSelector"}
                        and peer["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "changeseg"}
                        for peer in rule["from"]
                    )
                    if not inside:  # from outside the Ray cluster: one named port each
                        assert [p["port"] for p in rule["ports"]] in ([8265], [8000]), policy["metadata"]["name"]
                        assert all("namespaceSelector" in peer for peer in rule["from"])
                        ports |= {p["port"] for p in rule["ports"]}
            # Only the head (the Serve proxy, proxy_location HeadOnly) takes outside traffic.
            assert ports == ({8000, 8265} if group == "head" else set()), group
    serve = next(p for p in policies if 8000 in {q["port"] for r in p["spec"]["ingress"] for q in r.get("ports", [])})
    assert serve["spec"]["ingress"][0]["from"][0]["namespaceSelector"]["matchLabels"]


def test_kubernetes_objects_validate_against_kubernetes_schemas():
    """Strict schemas: a misspelt field (securityContex, sizelimit) fails too."""
    objects = [*_access(), *yaml.safe_load_all((KUBERAY / "secrets.example.yaml").read_text())]
    for name, doc in _rendered().items():
        for group, template in _groups(doc).items():
            objects.append(
                {
                    "apiVersion": "v1",
                    "kind": "PodTemplate",
                    "metadata": {"name": f"{doc['metadata']['name']}-{group}"},
                    "template": template,
                }
            )
    assert {o["kind"] for o in objects} >= {"NetworkPolicy", "ServiceAccount", "Secret", "ConfigMap", "PodTemplate"}
    for obj in objects:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    broken = {**objects[-1], "template": yaml.safe_load(yaml.safe_dump(objects[-1]["template"]))}
    broken["template"]["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalaton"] = False
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def _images() -> dict[str, str]:
    images = {}
    for path in INFRA.rglob("*"):
        if path.name == "Dockerfile":
            images |= {f"{path}:FROM": m for m in re.findall(r"^FROM (\S+)", path.read_text(), re.M)}
        elif path.suffix == ".yaml":
            for doc in yaml.safe_load_all(path.read_text()):
                _collect_images(doc, str(path.relative_to(ROOT)), images)
    return images


def _collect_images(node, where: str, images: dict) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "image" and isinstance(value, str):
                images[f"{where}:{len(images)}"] = value
            else:
                _collect_images(value, where, images)
    elif isinstance(node, list):
        for item in node:
            _collect_images(item, where, images)


def test_images_are_pinned_to_release_tags():
    images = _images()
    assert len(images) >= 8, images
    for where, image in images.items():
        name, _, tag = image.rpartition(":")
        assert name and "/" not in tag, f"{where}: {image} has no tag"
        # A version (16.9, 3.11.13-slim, RELEASE.2025-...), never latest or a bare major.
        assert tag != "latest" and re.match(r"(RELEASE\.)?\d+[.-]\d+", tag), f"{where}: {image}"


def test_env_files_with_secrets_are_ignored_by_git():
    ignored = ["infra/mlflow/.env", "changeseg.env"]
    done = subprocess.run(["git", "check-ignore", "--no-index", *ignored], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.split() == ignored, done.stdout + done.stderr
    example = subprocess.run(["git", "check-ignore", "--no-index", "infra/mlflow/example.env"], cwd=ROOT)
    assert example.returncode == 1  # the template stays tracked
    assert "changeseg.env" in (INFRA / "cluster" / "aws-gpu.yaml").read_text()
    assert "infra/mlflow/.env" in (INFRA / "mlflow" / "docker-compose.yaml").read_text()


def test_dashboards_and_serve_bind_loopback_outside_kubernetes():
    launcher = yaml.safe_load((INFRA / "cluster" / "aws-gpu.yaml").read_text())
    (head,) = [c for c in launcher["head_start_ray_commands"] if "ray start" in c]
    assert "--dashboard-host=127.0.0.1" in head and "0.0.0.0" not in head
    for config in sorted((ROOT / "serve").glob("*.yaml")):
        assert yaml.safe_load(config.read_text())["http_options"]["host"] == "127.0.0.1", config.name
    stack = (INFRA / "local" / "stack.py").read_text()
    assert '"--dashboard-host=127.0.0.1"' in stack and "0.0.0.0" not in stack


def test_mlflow_needs_a_login_and_minio_a_scoped_user():
    script = (INFRA / "mlflow" / "server.sh").read_text()
    command = script[script.index("exec mlflow server") :]
    assert "--app-name basic-auth" in command
    for required in ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY", "MLFLOW_AUTH_DATABASE_URI"):
        assert f'"${{{required}:?' in script, required  # refuses to start without it
    assert "default_permission = READ" in script
    compose = yaml.safe_load((INFRA / "mlflow" / "docker-compose.yaml").read_text())["services"]
    mlflow_env = compose["mlflow"]["environment"]
    root = compose["minio"]["environment"]["MINIO_ROOT_USER"].split(":")[0]
    assert root.strip("${") not in mlflow_env["AWS_ACCESS_KEY_ID"]  # not MinIO's root user
    assert mlflow_env["AWS_ACCESS_KEY_ID"] == "${MLFLOW_S3_ACCESS_KEY}"
    policy = (INFRA / "mlflow" / "minio-policy.json").read_text()
    assert '"arn:aws:s3:::changeseg/mlflow-artifacts/*"' in policy and '"s3:*"' not in policy
    users = load_module(INFRA / "mlflow" / "users.py")
    assert (users.TRAIN_USER, users.SERVE_USER) == ("changeseg-train", "changeseg-serve")


def test_operations_guide_lists_every_port_and_the_gateway_rules():
    text = (ROOT / "docs" / "operations.md").read_text()
    for port in ("6379", "8265", "10001", "8000", "5000", "9000", "8076"):
        assert re.search(rf"^\|[^\n]*\b{port}\b", text, re.M), f"port {port} not in a table row"
    assert "x-request-timeout-seconds" in text and "body size" in text
