"""MLflow: runs, per-epoch metrics, model packaging, registry and the champion alias.

The driver owns the MLflow run; per-epoch metrics are logged by a Ray Train
``UserCallback`` on the train controller, so workers never talk to MLflow.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import yaml
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from mlflow.models.signature import ModelSignature
from mlflow.types.schema import Schema, TensorSpec
from PIL import Image
from ray.train import UserCallback

from changeseg.config import Config, resolve_tracking_uri
from changeseg.data.pairs import load_pair
from changeseg.inference.naming import pair_file_name
from changeseg.inference.predictor import Predictor
from changeseg.models import resolve_model_args
from changeseg.models.weights import read_metadata
from changeseg.viz import overlay_panel

log = logging.getLogger(__name__)
# Jobs print their own progress lines; MLflow's per-download progress bars would
# interleave with them.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

RUN_NAME_TAG = "changeseg.run_name"
PYFUNC_CODE = Path(__file__).with_name("mlflow_pyfunc.py")


def client_for(tracking_uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def default_artifact_location(tracking_uri: str, experiment: str) -> str | None:
    """Beside a SQLite store, not relative to whichever working folder creates the experiment.

    MLflow's default (``./mlartifacts``) would put artifacts of a job submitted with
    ``--working-dir`` into that job's temporary copy of the project.
    """
    if tracking_uri.startswith("sqlite:///"):
        return (Path(tracking_uri[len("sqlite:///") :]).resolve().parent / "mlartifacts" / experiment).as_uri()
    return None


def _experiment_id(client: MlflowClient, name: str, tracking_uri: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id
    return client.create_experiment(name, artifact_location=default_artifact_location(tracking_uri, name))


def start_or_resume_run(cfg: Config):
    """The MLflow run of ``cfg.run.name``: the existing one (resume) or a new one."""
    tracking_uri = cfg.resolved_tracking_uri()
    client = client_for(tracking_uri)
    experiment_id = _experiment_id(client, cfg.tracking.experiment, tracking_uri)
    found = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{RUN_NAME_TAG}` = '{cfg.run.name}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if found:
        run = found[0]
        client.update_run(run.info.run_id, status="RUNNING")
        client.set_tag(run.info.run_id, "changeseg.resumed", "true")
        log.info("continuing MLflow run %s (%s)", run.info.run_id, cfg.run.name)
        return run.info
    run = client.create_run(experiment_id, run_name=cfg.run.name, tags={RUN_NAME_TAG: cfg.run.name})
    return run.info


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, prefix=f"{name}."))
        else:
            out[name] = str(value)
    return out


def log_run_inputs(cfg: Config, *, run_id: str, train_pairs: int, val_pairs: int, class_weights) -> None:
    """Parameters (flattened config) and the resolved config file, once per run."""
    client = client_for(cfg.resolved_tracking_uri())
    existing = client.get_run(run_id).data.params
    params = flatten(cfg.model_dump(mode="json"))
    # The architecture as built (preset and defaults filled in), not just what the config set.
    params.update({f"model.{k}": str(v) for k, v in resolve_model_args(**cfg.model.factory_kwargs()).items()})
    params.update(
        {
            "data.train_pairs": str(train_pairs),
            "data.val_pairs": str(val_pairs),
            "train.class_weights_used": str(class_weights),
        }
    )
    # MLflow params are immutable: on resume, only log what is new.
    new = [Param(k, v[:6000]) for k, v in params.items() if k not in existing]
    changed = sorted(k for k, v in params.items() if k in existing and existing[k] != v[:6000])
    if changed:
        log.warning(
            "resumed run %s with changed parameters (kept the first values in MLflow): %s", cfg.run.name, changed
        )
    for i in range(0, len(new), 100):
        client.log_batch(run_id, params=new[i : i + 100])
    client.log_text(run_id, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), "config/resolved.yaml")


class MLflowEpochLogger(UserCallback):
    """Logs each epoch's reported metrics to the run, step = epoch."""

    def __init__(self, *, tracking_uri: str, run_id: str):
        self.tracking_uri = tracking_uri
        self.run_id = run_id

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        if not metrics:
            return
        values = metrics[0]
        step = int(values.get("epoch", 0))
        # Progress for whoever watches the job's log.
        log.warning(
            "epoch %d: train_loss %.4f  val_loss %.4f  val_global_f1 %.3f  %.1f images/s",
            step,
            values.get("train_loss", float("nan")),
            values.get("val_loss", float("nan")),
            values.get("val_global_f1", float("nan")),
            values.get("train_images_per_s", float("nan")),
        )
        now = int(time.time() * 1000)
        batch = [
            Metric(key, float(value), now, step)
            for key, value in values.items()
            if isinstance(value, (int, float)) and key not in ("epoch", "start_epoch")
        ]
        try:
            client_for(self.tracking_uri).log_batch(self.run_id, metrics=batch)
        except Exception:  # tracking trouble must not kill a training run
            log.exception("could not log epoch %d metrics to MLflow", step)


def log_overlays(cfg: Config, *, run_id: str, checkpoint_dir: Path, records: list) -> list[str]:
    """Predict a few validation pairs and log their overlay panels as images."""
    count = min(cfg.train.num_overlays, len(records))
    if count == 0:
        return []
    predictor = Predictor.from_dir(checkpoint_dir)
    client = client_for(cfg.resolved_tracking_uri())
    logged = []
    with tempfile.TemporaryDirectory() as tmp:
        for record in records[:count]:
            try:
                path = Path(tmp) / pair_file_name(record.pair_id, ".png", flat=True)
            except ValueError as err:  # an id that cannot name a file: no overlay for it
                log.warning("no overlay for %r: %s", record.pair_id, err)
                continue
            sample = load_pair(record.to_row(), mask_values=cfg.data.mask_values, storage_options=cfg.storage)
            pred = predictor.predict(sample["t0"], sample["t1"])[0]
            Image.fromarray(overlay_panel(sample["t0"], sample["t1"], pred, sample.get("mask"))).save(path)
            client.log_artifact(run_id, str(path), "overlays")
            logged.append(f"overlays/{path.name}")
    return logged


def model_signature(num_classes: int):
    image = (-1, 3, -1, -1)
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), image, "t0"), TensorSpec(np.dtype(np.float32), image, "t1")]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, num_classes, -1, -1), "probabilities")]),
    )


def _champion_score(client: MlflowClient, name: str, alias: str, metric: str) -> tuple[Any, float | None]:
    try:
        version = client.get_model_version_by_alias(name, alias)
    except mlflow.exceptions.MlflowException:
        return None, None
    score = version.tags.get(metric)
    if score is None and version.run_id:
        score = client.get_run(version.run_id).data.metrics.get(metric)
    return version, float(score) if score is not None else None


def log_and_register_model(
    cfg: Config, *, run_id: str, checkpoint_dir: Path, metrics: dict[str, float]
) -> dict[str, Any]:
    """Log the model (pyfunc from code, weights as artifacts), register it, maybe crown it.

    The new version takes the alias when its ``champion_metric`` beats the current
    champion's, or when there is no champion yet.
    """
    tracking_uri = cfg.resolved_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    client = client_for(tracking_uri)
    name, alias, metric = cfg.tracking.registered_model, cfg.tracking.alias, cfg.tracking.champion_metric
    with mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(PYFUNC_CODE),
            artifacts={"checkpoint": str(checkpoint_dir)},
            signature=model_signature(cfg.model.resolved_num_classes()),
            # Explicit requirements: inference by import-tracing would load the model twice.
            pip_requirements=["changeseg", "torch", "safetensors", "mlflow"],
        )
    version = mlflow.register_model(info.model_uri, name)
    score = metrics.get(metric)
    if score is not None:
        client.set_model_version_tag(name, version.version, metric, str(score))
    client.set_model_version_tag(name, version.version, "changeseg.run_name", cfg.run.name)
    _tag_operating_point(client, name, version.version, checkpoint_dir)
    previous, previous_score = _champion_score(client, name, alias, metric)
    crowned = previous is None or (score is not None and (previous_score is None or score > previous_score))
    if crowned:
        client.set_registered_model_alias(name, alias, version.version)
    log.info(
        "registered %s version %s (%s=%s); %s",
        name,
        version.version,
        metric,
        score,
        f"now '{alias}'" if crowned else f"'{alias}' stays version {previous.version} ({metric}={previous_score})",
    )
    return {
        "name": name,
        "version": int(version.version),
        "model_uri": f"models:/{name}/{version.version}",
        "alias": alias,
        "champion": crowned,
        "champion_version": int(version.version) if crowned else int(previous.version),
        "metric": metric,
        "score": score,
        "previous_champion_score": previous_score,
    }


THRESHOLD_TAG = "changeseg.threshold"


def _tag_operating_point(client: MlflowClient, name: str, version: str, checkpoint_dir: Path) -> None:
    """The checkpoint's stored threshold (and how it was chosen) as tags of the version."""
    point = read_metadata(checkpoint_dir).get("metadata", {}).get("operating_point")
    if not point:
        return
    client.set_model_version_tag(name, version, THRESHOLD_TAG, str(point["threshold"]))
    client.set_model_version_tag(name, version, "changeseg.threshold_method", str(point.get("method", "")))


def end_run(run_id: str, tracking_uri: str | None = None, status: str = "FINISHED") -> None:
    client_for(resolve_tracking_uri(tracking_uri)).set_terminated(run_id, status=status)
