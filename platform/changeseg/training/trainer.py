"""The TorchTrainer assembly: config in, tracked and registered model out."""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray.data
import ray.train
from ray.train.torch import TorchTrainer

from changeseg import storage, tracking
from changeseg.config import Config
from changeseg.data.pipeline import (
    DatasetPlan,
    count_change_pixels,
    pair_dataset,
    plan_datasets,
    records_to_rows,
    screen_plan,
)
from changeseg.models import create_model
from changeseg.models.weights import read_metadata
from changeseg.runtime import init_ray
from changeseg.training.loop import TRAIN_COLUMNS, train_loop_per_worker
from changeseg.training.losses import class_weights_for

log = logging.getLogger(__name__)


@dataclass
class FinetuneResult:
    """What a fine-tuning run produced, for callers and the job summary."""

    run_name: str
    mlflow_run_id: str
    tracking_uri: str
    checkpoint_path: str
    final_metrics: dict[str, float]
    start_epoch: int
    epochs: int
    train_pairs: int
    val_pairs: int
    data_source: str
    class_weights: list[float] | None
    seconds: float
    registered: dict[str, Any] = field(default_factory=dict)
    # Pairs left out as unusable: (pair id, reason); also the MLflow metric data_skipped_pairs.
    skipped_pairs: list[tuple[str, str]] = field(default_factory=list)


def check_feasible(cfg: Config, *, train_pairs: int) -> int:
    """Steps per epoch; an error when the data cannot fill one batch per worker."""
    per_worker = train_pairs // cfg.train.num_workers
    steps = per_worker // cfg.train.batch_size
    if steps == 0:
        raise ValueError(
            f"{train_pairs} training pair(s) over {cfg.train.num_workers} worker(s) cannot fill one "
            f"batch of {cfg.train.batch_size} per worker: lower train.batch_size or train.num_workers, "
            "or add data"
        )
    return steps


def resolve_class_weights(cfg: Config, plan: DatasetPlan) -> list[float] | None:
    """The loss's class weights; the change pixels are counted only when the config asks for them."""
    return class_weights_for(cfg, lambda: plan.train_pixels or count_change_pixels(plan.train, cfg))


def finetune(cfg: Config) -> FinetuneResult:
    """Fine-tune with Ray Train, track in MLflow and register the result.

    Re-running with the same ``run.name`` and ``run.storage_path`` resumes from the
    last checkpoint and continues the same MLflow run.
    """
    started = time.perf_counter()
    plan, steps_per_epoch = prepare_plan(cfg)
    weights = resolve_class_weights(cfg, plan)
    log.info(
        "data: %d train / %d val pairs from %s; class weights %s", len(plan.train), len(plan.val), plan.source, weights
    )
    run_id = start_tracking(cfg, plan=plan, class_weights=weights)
    trainer = build_trainer(cfg, plan=plan, class_weights=weights, steps_per_epoch=steps_per_epoch, run_id=run_id)
    result = fit(trainer, cfg=cfg, run_id=run_id)
    outcome = finish_run(cfg, result=result, run_id=run_id, plan=plan)
    return FinetuneResult(
        run_name=cfg.run.name,
        mlflow_run_id=run_id,
        tracking_uri=cfg.resolved_tracking_uri(),
        checkpoint_path=checkpoint_uri(cfg, result=result),
        final_metrics=outcome.metrics,
        start_epoch=outcome.first_epoch,
        epochs=outcome.last_epoch + 1,
        train_pairs=len(plan.train),
        val_pairs=len(plan.val),
        data_source=plan.source,
        class_weights=weights,
        seconds=time.perf_counter() - started,
        registered=outcome.registered,
        skipped_pairs=plan.skipped,
    )


def prepare_plan(cfg: Config) -> tuple[DatasetPlan, int]:
    """The screened dataset plan and steps per epoch; starts Ray.

    Feasibility and the model are checked before Ray starts, so a bad config fails in
    seconds; the check runs again once screening has left out the bad pairs.
    """
    plan = plan_datasets(cfg)
    check_feasible(cfg, train_pairs=len(plan.train) * cfg.data.repeat)
    # Built once here so a bad architecture or unobtainable weights fail before Ray starts.
    create_model(**cfg.model.factory_kwargs(), storage_options=cfg.storage)
    init_ray(cfg)
    # Per-epoch lines from the tracking callback are the progress report; Ray Data's
    # per-operator bars would repeat every second for every epoch.
    ray.data.DataContext.get_current().enable_progress_bars = False
    plan = screen_plan(plan, cfg)
    return plan, check_feasible(cfg, train_pairs=len(plan.train) * cfg.data.repeat)


def start_tracking(cfg: Config, *, plan: DatasetPlan, class_weights: list[float] | None) -> str:
    """Find (resume) or create the MLflow run and log its inputs; returns the run id."""
    run = tracking.start_or_resume_run(cfg)
    tracking.log_run_inputs(
        cfg, run_id=run.run_id, train_pairs=len(plan.train), val_pairs=len(plan.val), class_weights=class_weights
    )
    tracking.client_for(cfg.resolved_tracking_uri()).log_metric(run.run_id, "data_skipped_pairs", len(plan.skipped))
    return run.run_id


def build_trainer(
    cfg: Config, *, plan: DatasetPlan, class_weights: list[float] | None, steps_per_epoch: int, run_id: str
) -> TorchTrainer:
    """The TorchTrainer: workers, checkpoints and failures from ``cfg``, epochs logged to ``run_id``."""
    storage_path, storage_fs = storage.ray_storage(cfg.run.storage_path, cfg.storage)
    train_ds = pair_dataset(plan.train * cfg.data.repeat, cfg, augment=True, shuffle_seed=cfg.run.seed).select_columns(
        TRAIN_COLUMNS
    )
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "config": cfg.model_dump(mode="json"),
            "class_weights": class_weights,
            "val_rows": records_to_rows(plan.val),
            "steps_per_epoch": steps_per_epoch,
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.train.num_workers,
            use_gpu=cfg.train.use_gpu,
            resources_per_worker={"CPU": cfg.train.cpus_per_worker, **({"GPU": 1} if cfg.train.use_gpu else {})},
        ),
        run_config=ray.train.RunConfig(
            name=cfg.run.name,
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
            failure_config=ray.train.FailureConfig(max_failures=cfg.train.max_failures),
            callbacks=[tracking.MLflowEpochLogger(tracking_uri=cfg.resolved_tracking_uri(), run_id=run_id)],
            # Ray Train's INFO lines go to its log files only; the console gets ours.
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
        ),
        datasets={"train": train_ds},
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
    )


def fit(trainer: TorchTrainer, *, cfg: Config, run_id: str) -> ray.train.Result:
    """Run the trainer; the MLflow run is marked FAILED when it does not finish."""
    try:
        result = trainer.fit()
    except BaseException:
        tracking.end_run(run_id, cfg.resolved_tracking_uri(), status="FAILED")
        raise
    if result.checkpoint is None:
        raise RuntimeError(f"run {cfg.run.name} ended without a checkpoint")
    return result


@dataclass
class RunOutcome:
    """What the final checkpoint says about the run, and where it was registered."""

    metrics: dict[str, float]
    first_epoch: int
    last_epoch: int
    registered: dict[str, Any]


def finish_run(cfg: Config, *, result: ray.train.Result, run_id: str, plan: DatasetPlan) -> RunOutcome:
    """Final checkpoint -> overlays -> pyfunc model -> registry; ends the MLflow run."""
    metrics = {k: float(v) for k, v in (result.metrics or {}).items() if isinstance(v, (int, float))}
    with tempfile.TemporaryDirectory() as tmp:
        local_ckpt = Path(tmp) / "checkpoint"
        result.checkpoint.to_directory(str(local_ckpt))
        meta = read_metadata(local_ckpt).get("metadata", {})
        last_epoch = int(meta.get("epoch", cfg.train.epochs - 1))
        first_epoch = int(metrics.get("start_epoch", 0))
        if not metrics:
            metrics = {k: float(v) for k, v in meta.get("metrics", {}).items()}
        tracking.log_overlays(cfg, run_id=run_id, checkpoint_dir=local_ckpt, records=plan.val)
        registered: dict[str, Any] = {}
        if cfg.tracking.register_model:
            registered = tracking.log_and_register_model(cfg, run_id=run_id, checkpoint_dir=local_ckpt, metrics=metrics)
        tracking.end_run(run_id, cfg.resolved_tracking_uri())
    return RunOutcome(metrics=metrics, first_epoch=first_epoch, last_epoch=last_epoch, registered=registered)


def checkpoint_uri(cfg: Config, *, result: ray.train.Result) -> str:
    """The final checkpoint's URI (Ray reports S3 paths without their scheme)."""
    if storage.is_remote(cfg.run.storage_path):
        return "s3://" + result.checkpoint.path.lstrip("/")
    return result.checkpoint.path
