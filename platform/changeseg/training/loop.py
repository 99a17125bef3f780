"""The per-worker training loop run by Ray Train (one process per worker, DDP)."""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from changeseg.config import Config
from changeseg.data.decode import load_pair, to_model_input
from changeseg.data.pipeline import load_options
from changeseg.metrics import ChangeMetrics, all_reduce_
from changeseg.models import create_model
from changeseg.models.weights import WEIGHTS_FILE, save_checkpoint, unwrap
from changeseg.training.losses import ChangeLoss

TRAIN_STATE_FILE = "train_state.pt"


def cosine_with_warmup(*, total_steps: int, warmup_steps: int):
    """Per-iteration multiplier: linear warm-up, then cosine decay to zero (the paper's schedule)."""

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def build_optimizer(model: nn.Module, cfg: Config) -> torch.optim.Optimizer:
    """Adam over two parameter groups: the backbone at ``train.backbone_lr`` (default
    ``train.lr``) and everything else (MTF, MSF, head) at ``train.lr``."""
    bare = unwrap(model)
    backbone = getattr(bare, "backbone", None)
    backbone_params = list(backbone.parameters()) if isinstance(backbone, nn.Module) else []
    backbone_ids = {id(p) for p in backbone_params}
    rest = [p for p in model.parameters() if id(p) not in backbone_ids]
    groups = [{"params": rest, "lr": cfg.train.lr}]
    if backbone_params:
        groups.append({"params": backbone_params, "lr": cfg.train.backbone_lr or cfg.train.lr})
    return torch.optim.Adam(groups, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)


def set_train_mode(model: nn.Module, cfg: Config) -> nn.Module:
    """``model.train()``, except backbone BatchNorm layers under ``train.freeze_backbone_bn``."""
    model.train()
    backbone = getattr(unwrap(model), "backbone", None)
    if cfg.train.freeze_backbone_bn and isinstance(backbone, nn.Module):
        for module in backbone.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
    return model


def evaluate_records(
    model: nn.Module,
    rows: list[dict],
    *,
    cfg: Config,
    device: torch.device,
    loss_fn: nn.Module | None = None,
) -> tuple[ChangeMetrics, float, int]:
    """Validate on whole images, one pair at a time (pairs may differ in size).

    Returns the metric accumulator, the summed loss and the number of pairs.
    """
    metrics = ChangeMetrics(num_classes=cfg.model.resolved_num_classes(), ignore_index=cfg.data.ignore_index)
    loss_sum = 0.0
    model.eval()
    with torch.inference_mode():
        for row in rows:
            sample = load_pair(row, **load_options(cfg))
            t0 = to_model_input(torch.from_numpy(sample["t0"])[None]).to(device)
            t1 = to_model_input(torch.from_numpy(sample["t1"])[None]).to(device)
            target = torch.from_numpy(sample["mask"]).long()[None].to(device)
            logits = model(t0, t1)
            if loss_fn is not None:
                loss_sum += float(loss_fn(logits, target))
            metrics.update(logits.argmax(1), target)
    return metrics, loss_sum, len(rows)


def train_loop_per_worker(params: dict[str, Any]) -> None:
    """Entry point of each Ray Train worker.

    ``params``: ``config`` (a dumped :class:`Config`), ``class_weights`` (list or None),
    ``val_rows`` (validation records, split across workers here so none is dropped) and
    ``steps_per_epoch`` (equal on every worker, which DDP needs).
    """
    import ray.train
    import ray.train.torch

    cfg = Config.model_validate(params["config"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(cfg.run.seed + rank)
    np.random.seed(cfg.run.seed + rank)

    model = create_model(**cfg.model.factory_kwargs(), storage_options=cfg.storage)
    optimizer = build_optimizer(model, cfg)
    steps_per_epoch = int(params["steps_per_epoch"])
    total_steps = steps_per_epoch * cfg.train.epochs
    warmup = int(cfg.train.warmup_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, cosine_with_warmup(total_steps=total_steps, warmup_steps=warmup)
    )

    start_epoch = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            from safetensors.torch import load_file

            model.load_state_dict(load_file(str(Path(directory) / WEIGHTS_FILE)))
            state = torch.load(Path(directory) / TRAIN_STATE_FILE, map_location="cpu", weights_only=True)
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            start_epoch = int(state["epoch"]) + 1

    if cfg.train.use_gpu and world > 1:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = ray.train.torch.prepare_model(model)

    weight = params.get("class_weights")
    loss_fn = ChangeLoss(
        weight=torch.tensor(weight, dtype=torch.float32) if weight is not None else None,
        ignore_index=cfg.data.ignore_index,
    ).to(device)
    val_rows = params["val_rows"][rank::world]
    shard = ray.train.get_dataset_shard("train")

    for epoch in range(start_epoch, cfg.train.epochs):
        set_train_mode(model, cfg)
        started = time.perf_counter()
        loss_total, seen, steps = 0.0, 0, 0
        batches = shard.iter_torch_batches(
            batch_size=cfg.train.batch_size, drop_last=True, dtypes=None, device=device
        )
        for batch in batches:
            if steps >= steps_per_epoch:
                break  # keep every rank at the same step count for DDP
            t0, t1 = to_model_input(batch["t0"]), to_model_input(batch["t1"])
            target = batch["mask"].long()
            loss = loss_fn(model(t0, t1), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_total += float(loss.detach()) * t0.shape[0]
            seen += t0.shape[0]
            steps += 1
        train_seconds = time.perf_counter() - started

        val_metrics, val_loss_sum, val_count = evaluate_records(
            model, val_rows, cfg=cfg, device=device, loss_fn=loss_fn
        )
        all_reduce_(val_metrics)
        sums = torch.tensor([loss_total, seen, val_loss_sum, val_count], dtype=torch.float64)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(sums)
        loss_total, seen, val_loss_sum, val_count = sums.tolist()

        metrics: dict[str, float] = {
            "epoch": epoch,
            # The epoch this process started from: > 0 after a resume from a checkpoint.
            "start_epoch": start_epoch,
            "train_loss": loss_total / max(seen, 1),
            "val_loss": val_loss_sum / max(val_count, 1),
            "lr": scheduler.get_last_lr()[0],
            "train_images_per_s": seen / max(train_seconds, 1e-9),
            "epoch_seconds": time.perf_counter() - started,
        }
        metrics.update({f"val_{k}": float(v) for k, v in val_metrics.compute().items()})

        with tempfile.TemporaryDirectory() as tmp:
            reported = None
            if rank == 0:
                save_checkpoint(tmp, model, metadata={"epoch": epoch, "metrics": metrics, "run": cfg.run.name})
                torch.save(
                    {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "epoch": epoch},
                    Path(tmp) / TRAIN_STATE_FILE,
                )
                (Path(tmp) / "config.json").write_text(json.dumps(params["config"], indent=2))
                reported = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=reported)
