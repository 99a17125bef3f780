"""The Ray Train worker loop: a thin adapter around :mod:`changeseg.training.engine`.

Ray's part is only this: the worker's data shard (Ray Data, shuffled afresh every
epoch by the driver's dataset), the device Ray assigned, ``ray.train.report`` with a
checkpoint from rank 0, and resuming from Ray's latest checkpoint. Optimisation,
validation, precision and checkpoint contents are the engine's.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from typing import Any

import numpy as np
import ray.train
import ray.train.torch
import torch

from changeseg.config import Config
from changeseg.data.pairs import load_pair
from changeseg.data.pipeline import load_options
from changeseg.runtime import quiet_ray_loggers
from changeseg.training.calibration import (
    curve_for,
    operating_point_for,
    operating_point_metrics,
    store_operating_point,
)
from changeseg.training.engine import (
    build_engine,
    restore_checkpoint,
    save_training_checkpoint,
    train_one_epoch,
    validate,
)

# Columns the loop takes from the training shard; pair_id is kept so the order is observable.
TRAIN_COLUMNS = ["pair_id", "t0", "t1", "mask"]


def shard_batches(shard, *, batch_size: int, seen_ids: list[str] | None = None) -> Iterator[dict[str, Any]]:
    """NumPy batches of a Ray Data shard (the engine copies them to the device itself,
    through pinned memory on a GPU); appends each batch's pair ids to ``seen_ids``."""
    for batch in shard.iter_batches(batch_size=batch_size, batch_format="numpy", drop_last=True, prefetch_batches=2):
        if seen_ids is not None:
            seen_ids.extend(str(p) for p in batch["pair_id"])
        yield batch


def _validation_samples(rows: list[dict], cfg: Config) -> Iterator[dict]:
    options = load_options(cfg)
    for row in rows:
        yield load_pair(row, **options)


def train_loop_per_worker(params: dict[str, Any]) -> None:
    """Entry point of each Ray Train worker.

    ``params``: ``config`` (a dumped :class:`Config`), ``class_weights`` (list or None),
    ``val_rows`` (validation records, split across workers here so none is dropped) and
    ``steps_per_epoch`` (equal on every worker, which DDP needs).
    """
    quiet_ray_loggers()
    cfg = Config.model_validate(params["config"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if not cfg.train.use_gpu:
        # As many intra-op threads as the worker holds CPUs: Ray's default of one thread
        # leaves the rest of a multi-CPU worker idle.
        torch.set_num_threads(max(1, int(cfg.train.cpus_per_worker)))
    torch.manual_seed(cfg.run.seed + rank)
    np.random.seed(cfg.run.seed + rank)
    engine = build_engine(
        cfg,
        steps_per_epoch=int(params["steps_per_epoch"]),
        class_weights=params.get("class_weights"),
        device=ray.train.torch.get_device(),
    )
    start_epoch = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            start_epoch = restore_checkpoint(engine, directory)

    val_rows = params["val_rows"][rank::world]
    shard = ray.train.get_dataset_shard("train")
    for epoch in range(start_epoch, cfg.train.epochs):
        stats = train_one_epoch(engine, shard_batches(shard, batch_size=cfg.train.batch_size))
        curve = curve_for(cfg)  # binary models: P(change) histogram for the operating point
        val_metrics, val_loss, val_count = validate(engine, _validation_samples(val_rows, cfg), curve=curve)
        point = operating_point_for(cfg, curve)
        metrics: dict[str, float] = {
            "epoch": epoch,
            # The epoch this process started from: > 0 after a resume from a checkpoint.
            "start_epoch": start_epoch,
            "train_loss": stats.loss,
            "val_loss": val_loss / max(val_count, 1),
            "lr": engine.scheduler.get_last_lr()[0],
            "train_images_per_s": stats.images_per_s,
            "skipped_steps": stats.skipped_steps,
            "epoch_seconds": stats.seconds,
            # Share of the epoch rank 0 spent waiting for Ray Data's next batch.
            "data_wait_fraction": stats.data_seconds / max(stats.seconds, 1e-9),
        }
        metrics.update({f"val_{k}": float(v) for k, v in val_metrics.compute().items()})
        metrics.update(operating_point_metrics(point))
        with tempfile.TemporaryDirectory() as tmp:
            reported = None
            if rank == 0:
                save_training_checkpoint(engine, tmp, epoch=epoch, metrics=metrics, config=params["config"])
                store_operating_point(tmp, point)
                reported = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=reported)
