"""infra/: KubeRay manifests, the cluster-launcher config, the MLflow server, the image.

Checked offline: they parse, name files and configs that exist, validate against the
project's and Ray's own schemas, and the generated manifests equal their sources.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import ray
import yaml
from helpers import load_module

from changeseg.config import build_config, load_config

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
KUBERAY = INFRA / "kuberay"


render = load_module(KUBERAY / "render.py")


def _manifests() -> dict[str, dict]:
    return {p.name: yaml.safe_load(p.read_text()) for p in sorted(KUBERAY.glob("ray*.yaml"))}


def _cluster_specs() -> dict[str, dict]:
    docs = _manifests()
    return {
        "raycluster.yaml": docs["raycluster.yaml"]["spec"],
        "rayjob.yaml": docs["rayjob.yaml"]["spec"]["rayClusterSpec"],
        "rayservice.yaml": docs["rayservice.yaml"]["spec"]["rayClusterConfig"],
    }


def _image_path(path: str) -> Path:
    """A path inside the container image -> the same file in this repository."""
    assert path.startswith(render.IMAGE_ROOT + "/"), path
    return ROOT / path[len(render.IMAGE_ROOT) + 1 :]


def test_kuberay_manifests_are_ray_io_v1_of_the_installed_ray():
    docs = _manifests()
    assert {name: doc["kind"] for name, doc in docs.items()} == {
        "raycluster.yaml": "RayCluster",
        "rayjob.yaml": "RayJob",
        "rayservice.yaml": "RayService",
    }
    assert {doc["apiVersion"] for doc in docs.values()} == {"ray.io/v1"}
    secrets = {
        (d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all((KUBERAY / "secrets.example.yaml").read_text())
    }
    for name, spec in _cluster_specs().items():
        assert spec["rayVersion"] == ray.__version__, name
        assert spec["enableInTreeAutoscaling"] is True
        assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # no work on the head
        groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
        gpu = groups["gpu"]
        assert gpu["minReplicas"] == gpu["replicas"] == 0 and gpu["maxReplicas"] >= 1  # from zero
        assert gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
        pods = [spec["headGroupSpec"]["template"], *(g["template"] for g in groups.values())]
        for group in [spec["headGroupSpec"], *groups.values()]:
            # KubeRay passes rayStartParams to `ray start` and requires string values.
            assert all(isinstance(v, str) for v in group["rayStartParams"].values()), name
        for pod in pods:
            for container in pod["spec"]["containers"]:
                refs = {
                    ("ConfigMap", r["configMapRef"]["name"])
                    if "configMapRef" in r
                    else ("Secret", r["secretRef"]["name"])
                    for r in container["envFrom"]
                }
                assert refs <= secrets, f"{name}: {refs - secrets} not in secrets.example.yaml"


def test_generated_manifests_equal_their_sources(tmp_path):
    rendered = render.render_all()
    for name, text in rendered.items():
        assert (KUBERAY / name).read_text() == text, f"{name} is stale: run python infra/kuberay/render.py"
    assert render.main(["--check"]) == 0

    # An edit to serve/config.yaml alone changes the rendering, so the check above catches drift.
    serve_config = yaml.safe_load((ROOT / "serve" / "config.yaml").read_text())
    serve_config["applications"][0]["deployments"][1]["autoscaling_config"]["max_replicas"] = 7
    edited = tmp_path / "config.yaml"
    edited.write_text(yaml.safe_dump(serve_config))
    drifted = yaml.safe_load(render.render_all(serve_path=edited)["rayservice.yaml"])
    checked_in = _manifests()["rayservice.yaml"]
    assert drifted["spec"]["serveConfigV2"] != checked_in["spec"]["serveConfigV2"]
    assert drifted["spec"]["rayClusterConfig"] == checked_in["spec"]["rayClusterConfig"]


def test_rayservice_runs_serve_config_yaml_on_the_pod_network():
    from ray.serve.schema import ServeDeploySchema

    source = yaml.safe_load((ROOT / "serve" / "config.yaml").read_text())
    served = yaml.safe_load(_manifests()["rayservice.yaml"]["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(served)
    assert served["http_options"]["host"] == "0.0.0.0"  # the Kubernetes Service reaches the proxy
    assert {**served, "http_options": source["http_options"]} == source  # nothing else differs
    app = served["applications"][0]
    module, _, attr = app["import_path"].partition(":")
    assert (ROOT / (module.replace(".", "/") + ".py")).is_file() and attr == "app"
    build_config(app["args"])  # the changeseg sections validate


def test_rayjob_entrypoint_is_a_job_with_a_valid_config():
    argv = shlex.split(_manifests()["rayjob.yaml"]["spec"]["entrypoint"])
    assert argv[0] == "python" and _image_path(argv[1]) == ROOT / "jobs" / "finetune.py"
    config_at = argv.index("--config") + 1
    overrides = argv[config_at + 1 :]
    cfg = load_config(_image_path(argv[config_at]), overrides)
    assert cfg.train.use_gpu and cfg.train.max_failures > 0
    assert cfg.run.storage_path.startswith("s3://") and cfg.data.train_path.startswith("s3://")


def test_image_has_the_installed_ray_and_the_entry_points():
    dockerfile = (INFRA / "image" / "Dockerfile").read_text()
    base = re.search(r"^FROM (\S+)", dockerfile, re.M).group(1)
    assert base == f"rayproject/ray:{ray.__version__}-py311-gpu"
    for source in re.findall(r"^COPY (?:--\S+ )*(.+) \S+$", dockerfile, re.M):
        for path in source.split():
            assert (ROOT / path).exists(), path
    assert re.search(rf"^WORKDIR {render.IMAGE_ROOT}$", dockerfile, re.M)


def test_cluster_launcher_config_passes_rays_validation():
    pytest.importorskip("boto3")
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((INFRA / "cluster" / "aws-gpu.yaml").read_text())
    prepared = prepare_config(config)
    validate_config(prepared)  # what `ray up` runs before it contacts the cloud
    nodes = prepared["available_node_types"]
    assert nodes[prepared["head_node_type"]]["resources"] == {"CPU": 0}
    assert nodes["gpu"]["min_workers"] == 0 and nodes["gpu"]["node_config"]["InstanceType"].startswith("g")
    assert (
        prepared["docker"]["image"]
        == _manifests()["raycluster.yaml"]["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
    )

    import jsonschema

    broken = yaml.safe_load((INFRA / "cluster" / "aws-gpu.yaml").read_text())
    broken["available_node_types"]["gpu"]["min_worker"] = 0  # a typo is rejected
    with pytest.raises(jsonschema.ValidationError, match="min_worker"):
        validate_config(prepare_config(broken))


def test_mlflow_server_uses_a_database_and_object_storage():
    from mlflow.cli import server

    script = (INFRA / "mlflow" / "server.sh").read_text()
    command = script[script.index("exec mlflow server") :]
    flags = set(re.findall(r"(--[a-z-]+)", command))
    known = {opt for param in server.params for opt in param.opts}
    assert flags <= known, f"mlflow server has no {flags - known}"
    assert {"--backend-store-uri", "--artifacts-destination", "--serve-artifacts", "--app-name"} <= flags
    assert "--app-name basic-auth" in command  # every client logs in
    assert '"${MLFLOW_HOST:-127.0.0.1}"' in command  # loopback unless told otherwise

    compose = yaml.safe_load((INFRA / "mlflow" / "docker-compose.yaml").read_text())
    env = compose["services"]["mlflow"]["environment"]
    assert env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://")
    assert env["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")
    assert all(port.startswith("127.0.0.1:") for port in compose["services"]["mlflow"]["ports"])


def test_operations_guide_names_files_that_exist():
    text = (ROOT / "docs" / "operations.md").read_text()
    paths = set(re.findall(r"`((?:infra|serve|jobs|docs)/[\w./-]+)`", text))
    assert len(paths) >= 8
    # infra/mlflow/.env is the copy of example.env users make; git ignores it.
    missing = sorted(p for p in paths if not (ROOT / p).exists() and not p.endswith("/.env"))
    assert not missing, missing
