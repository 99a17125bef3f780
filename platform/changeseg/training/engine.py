"""The one training engine: recipe, optimisation step, epoch, validation, checkpoints.

Both trainers drive it: the Ray Train worker loop (:mod:`changeseg.training.loop`) and
the in-process trainer (:mod:`changeseg.training.local`), and the GPU check runs it in
a bare ``torch.distributed`` process group. Nothing here imports Ray.

What it guarantees on every device:

- the model is placed on its device *before* the optimiser exists and checkpoints are
  loaded with ``map_location`` to that device, so a resumed Adam state lives beside
  the parameters;
- every collective goes through :func:`changeseg.devices.all_reduce_sum` (NCCL only
  reduces CUDA tensors) and every rank makes the same collective calls, even with no
  validation pairs of its own;
- a step whose pixels are all ``ignore_index`` on every rank, or whose loss is not
  finite on any rank, changes no weight and is counted in ``skipped_steps``;
- forward passes run under the configured autocast precision; the loss and metrics are
  computed in fp32.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file
from torch import nn

from changeseg.config import Config
from changeseg.data.decode import to_model_input
from changeseg.devices import all_reduce_sum, autocast, grad_scaler, prepare_for_device, resolve_precision
from changeseg.inference.predictor import Predictor
from changeseg.metrics import ChangeMetrics, all_reduce_
from changeseg.models import create_model
from changeseg.models.contract import backbone_of
from changeseg.models.weights import WEIGHTS_FILE, save_checkpoint, unwrap
from changeseg.training.losses import ChangeLoss

__all__ = [
    "TRAIN_STATE_FILE",
    "Engine",
    "EpochStats",
    "build_engine",
    "build_optimizer",
    "cosine_with_warmup",
    "restore_checkpoint",
    "save_training_checkpoint",
    "set_train_mode",
    "to_device_batch",
    "train_one_epoch",
    "validate",
]

TRAIN_STATE_FILE = "train_state.pt"


def cosine_with_warmup(*, total_steps: int, warmup_steps: int):
    """Per-iteration multiplier: linear warm-up, then cosine decay to zero (the paper's schedule)."""

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def warmup_steps_for(cfg: Config, steps_per_epoch: int) -> int:
    """max(``warmup_epochs`` x steps per epoch, ``warmup_steps``), as the authors' scripts."""
    return max(int(cfg.train.warmup_epochs * steps_per_epoch), cfg.train.warmup_steps)


def build_optimizer(model: nn.Module, cfg: Config) -> torch.optim.Optimizer:
    """Adam over two parameter groups: the backbone at ``train.backbone_lr`` (default
    ``train.lr``) and everything else (MTF, MSF, head) at ``train.lr``."""
    bare = unwrap(model)
    backbone = backbone_of(bare)
    backbone_params = list(backbone.parameters()) if backbone is not None else []
    backbone_ids = {id(p) for p in backbone_params}
    rest = [p for p in model.parameters() if id(p) not in backbone_ids]
    groups = [{"params": rest, "lr": cfg.train.lr}]
    if backbone_params:
        groups.append({"params": backbone_params, "lr": cfg.train.backbone_lr or cfg.train.lr})
    return torch.optim.Adam(groups, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)


def set_train_mode(model: nn.Module, cfg: Config) -> nn.Module:
    """``model.train()``, except backbone BatchNorm layers under ``train.freeze_backbone_bn``."""
    model.train()
    backbone = backbone_of(unwrap(model))
    if cfg.train.freeze_backbone_bn and backbone is not None:
        for module in backbone.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
    return model


@dataclass
class Engine:
    """A built recipe: the model on its device (DDP-wrapped in a process group) and
    everything that optimises it."""

    cfg: Config
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    loss_fn: ChangeLoss
    device: torch.device
    precision: str
    steps_per_epoch: int

    @property
    def bare_model(self) -> nn.Module:
        return unwrap(self.model)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """SyncBatchNorm across GPUs, then DDP; called only inside a process group."""
    if device.type == "cuda" and dist.get_world_size() > 1:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [device.index] if device.type == "cuda" else None
    # 1x1 convolutions get gradients whose strides differ from the bucket's while meaning
    # the same layout; DDP's warning about it is noise.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    # Gradients as views of DDP's buckets: no copy, and no stride mismatch warnings.
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, gradient_as_bucket_view=True)


def build_engine(
    cfg: Config,
    *,
    steps_per_epoch: int,
    class_weights: list[float] | None,
    device: torch.device,
    model: nn.Module | None = None,
) -> Engine:
    """Build the recipe of ``cfg`` on ``device``: model (``cfg.model`` unless given),
    Adam groups, cosine schedule with warm-up, loss, precision and gradient scaler.

    Inside an initialised process group the model is wrapped in DDP.
    """
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL and the collectives use the current device
    if model is None:
        model = create_model(**cfg.model.factory_kwargs(), storage_options=cfg.storage)
    model = prepare_for_device(model, device, channels_last=cfg.train.channels_last)
    if _distributed():
        model = _wrap_ddp(model, device)
    optimizer = build_optimizer(model, cfg)  # after placement: Adam state follows the parameters
    total = steps_per_epoch * cfg.train.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, cosine_with_warmup(total_steps=total, warmup_steps=warmup_steps_for(cfg, steps_per_epoch))
    )
    weight = torch.tensor(class_weights, dtype=torch.float32) if class_weights is not None else None
    precision = resolve_precision(cfg.train.precision, device)
    return Engine(
        cfg=cfg,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=grad_scaler(precision, device),
        loss_fn=ChangeLoss(weight=weight, ignore_index=cfg.data.ignore_index, dice=cfg.train.loss == "ce_dice").to(
            device
        ),
        device=device,
        precision=precision,
        steps_per_epoch=steps_per_epoch,
    )


def to_device_batch(batch: Mapping[str, Any], device: torch.device, *, channels_last: bool = False):
    """uint8 (N, H, W, 3) images and (N, H, W) masks (NumPy or torch) -> model inputs
    and long targets on ``device``. Host memory is pinned for asynchronous copies to a GPU."""

    def move(value: Any) -> torch.Tensor:
        if isinstance(value, torch.Tensor):
            tensor = value
        else:
            with warnings.catch_warnings():
                # Ray Data hands out read-only arrays; nothing here writes to them (the
                # float conversion and the pinned copy are new tensors).
                warnings.simplefilter("ignore", UserWarning)
                tensor = torch.as_tensor(np.ascontiguousarray(value))
        if device.type == "cuda" and tensor.device.type == "cpu":
            tensor = tensor.pin_memory()
        return tensor.to(device, non_blocking=True)

    t0, t1 = to_model_input(move(batch["t0"])), to_model_input(move(batch["t1"]))
    if channels_last:
        t0 = t0.contiguous(memory_format=torch.channels_last)
        t1 = t1.contiguous(memory_format=torch.channels_last)
    return t0, t1, move(batch["mask"]).long()


def _step(engine: Engine, t0: torch.Tensor, t1: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """One optimisation step; returns (detached loss, whether the update was applied)."""
    with autocast(engine.precision, engine.device):
        logits = engine.model(t0, t1)
    loss = engine.loss_fn(logits.float(), target)
    engine.optimizer.zero_grad(set_to_none=True)
    engine.scaler.scale(loss).backward()
    valid = (target != engine.loss_fn.ignore_index).sum()
    # One small collective after DDP's own: every rank agrees whether to apply the step.
    checks = all_reduce_sum(torch.stack([valid.double(), (~torch.isfinite(loss.detach())).double()]))
    valid_total, nonfinite = checks.tolist()
    applied = valid_total > 0 and nonfinite == 0
    if applied:
        engine.scaler.step(engine.optimizer)
        engine.scaler.update()
        engine.scheduler.step()
    else:
        engine.optimizer.zero_grad(set_to_none=True)
        with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": intended here
            warnings.simplefilter("ignore", UserWarning)
            engine.scheduler.step()  # the schedule follows planned steps, applied or not
    return loss.detach(), applied


@dataclass
class EpochStats:
    """One epoch of training, summed over every rank."""

    loss: float  # mean over applied steps' samples
    samples: int
    steps: int
    skipped_steps: int
    seconds: float
    data_seconds: float = 0.0  # of ``seconds``, waiting for batches (this rank)

    @property
    def images_per_s(self) -> float:
        return self.samples / max(self.seconds, 1e-9)


def train_one_epoch(
    engine: Engine,
    batches: Iterable[Mapping[str, Any]],
    *,
    progress: Callable[[int, float], None] | None = None,
) -> EpochStats:
    """Train on at most ``steps_per_epoch`` batches (every rank takes the same count, as
    DDP needs). ``progress(step, loss)`` is called after each step."""
    set_train_mode(engine.model, engine.cfg)
    started = time.perf_counter()
    loss_sum = torch.zeros((), dtype=torch.float64, device=engine.device)
    samples = steps = skipped = 0
    waited = 0.0  # time spent waiting for the next batch: the data path's share of the epoch
    iterator = iter(batches)
    while steps < engine.steps_per_epoch:
        asked = time.perf_counter()
        batch = next(iterator, None)
        waited += time.perf_counter() - asked
        if batch is None:
            break
        t0, t1, target = to_device_batch(batch, engine.device, channels_last=engine.cfg.train.channels_last)
        loss, applied = _step(engine, t0, t1, target)
        steps += 1
        if applied:
            loss_sum += loss.double() * t0.shape[0]
            samples += t0.shape[0]
        else:
            skipped += 1
        if progress is not None:
            progress(steps, float(loss))
    seconds = time.perf_counter() - started
    totals = all_reduce_sum(
        torch.stack(
            [
                loss_sum,
                torch.tensor(float(samples), dtype=torch.float64, device=engine.device),
                torch.tensor(float(skipped), dtype=torch.float64, device=engine.device),
            ]
        )
    )
    loss_total, samples_total, skipped_total = totals.tolist()
    return EpochStats(
        loss=loss_total / max(samples_total, 1.0),
        samples=int(samples_total),
        steps=steps,
        skipped_steps=int(skipped_total),
        seconds=seconds,
        data_seconds=waited,
    )


def validate(
    engine: Engine, samples: Iterable[Mapping[str, Any]], *, curve: Any = None
) -> tuple[ChangeMetrics, float, int]:
    """Metrics, summed loss and pair count over every rank's validation pairs.

    Runs the bare model (a DDP forward would broadcast buffers, a collective that a
    rank without pairs never joins) one pair at a time, since pairs may differ in size,
    through the inference core's windows: a pair up to ``train.val_tile_size`` a side is
    one window (the whole pair), a larger scene is scored tile by tile as batch scoring
    does, so memory follows the tile, not the scene. Every rank then makes the same
    collectives, whether it had pairs or not. ``curve`` (a
    :class:`changeseg.thresholds.ThresholdCurve`, on every rank or none) also collects
    P(change) per pixel for the operating point, with one more collective.
    """
    cfg = engine.cfg
    metrics = ChangeMetrics(num_classes=cfg.model.resolved_num_classes(), ignore_index=cfg.data.ignore_index)
    predictor = Predictor(
        engine.bare_model,
        device=engine.device,
        precision=engine.precision,
        channels_last=cfg.train.channels_last,
        tile_size=cfg.train.val_tile_size,
        tile_overlap=min(cfg.score.tile_overlap, cfg.train.val_tile_size // 4),
        batch_size=1,
    )
    loss_sum = torch.zeros((), dtype=torch.float64, device=engine.device)
    count = 0
    with torch.inference_mode():
        for sample in samples:
            loss_sum += _validate_pair(engine, predictor, sample, metrics, curve)
            count += 1
    all_reduce_(metrics)
    if curve is not None:
        curve.all_reduce_(engine.device)
    totals = all_reduce_sum(
        torch.stack([loss_sum, torch.tensor(float(count), dtype=torch.float64, device=engine.device)])
    )
    loss_total, count_total = totals.tolist()
    return metrics, loss_total, int(count_total)


def _validate_pair(engine: Engine, predictor: Predictor, sample: Mapping[str, Any], metrics, curve) -> torch.Tensor:
    """One pair's loss (windows weighted by their labelled pixels); updates metrics and curve."""
    t0, t1 = np.asarray(sample["t0"])[None], np.asarray(sample["t1"])[None]
    mask = torch.as_tensor(np.ascontiguousarray(sample["mask"])).to(engine.device)
    loss = torch.zeros((), dtype=torch.float64, device=engine.device)
    labelled = 0
    for window, proba in predictor.iter_windows(t0, t1):
        target = mask[window.y0 : window.y1, window.x0 : window.x1][None].long()
        valid = int((target != engine.loss_fn.ignore_index).sum())
        # Cross entropy of log-probabilities equals that of the logits (softmax(log p) = p).
        loss += engine.loss_fn(proba.clamp_min(1e-12).log(), target).double() * max(valid, 1)
        labelled += max(valid, 1)
        metrics.update(proba.argmax(1), target)
        if curve is not None:  # operating point: P(any change) histogram
            curve.update(1.0 - proba[:, 0], target)
    return loss / max(labelled, 1)


def save_training_checkpoint(
    engine: Engine, directory: str | Path, *, epoch: int, metrics: dict[str, float], config: dict[str, Any]
) -> Path:
    """Weights and ``model.json`` (loadable for inference) plus the optimiser, schedule
    and scaler state that a resume needs, and the run's config."""
    directory = Path(directory)
    save_checkpoint(directory, engine.model, metadata={"epoch": epoch, "metrics": metrics, "run": engine.cfg.run.name})
    state = {
        "optimizer": engine.optimizer.state_dict(),
        "scheduler": engine.scheduler.state_dict(),
        "scaler": engine.scaler.state_dict(),
        "epoch": epoch,
    }
    torch.save(state, directory / TRAIN_STATE_FILE)
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    return directory


def restore_checkpoint(engine: Engine, directory: str | Path) -> int:
    """Load a training checkpoint onto the engine's device; returns the epoch to start at."""
    directory = Path(directory)
    engine.bare_model.load_state_dict(load_file(str(directory / WEIGHTS_FILE), device=str(engine.device)))
    state = torch.load(directory / TRAIN_STATE_FILE, map_location=engine.device, weights_only=True)
    engine.optimizer.load_state_dict(state["optimizer"])
    engine.scheduler.load_state_dict(state["scheduler"])
    if state.get("scaler"):
        engine.scaler.load_state_dict(state["scaler"])
    return int(state["epoch"]) + 1
