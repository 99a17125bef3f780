"""Fine-tuning in this process, without Ray or MLflow, for small sets of pairs.

The same recipe (one :class:`~changeseg.config.Config`) and the same engine
(:mod:`changeseg.training.engine`) as the Ray Train job: model, optimiser groups,
frozen backbone BatchNorm, schedule, precision, class weights, augmentation and
``data.repeat``. The global batch is ``batch_size * num_workers``, as in the
distributed run, so the step count per epoch matches too. Every pair is decoded once
and kept in memory, which is what makes it fast on a handful of real pairs; large
datasets belong to :func:`changeseg.training.trainer.finetune`, which streams them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from changeseg.config import Config
from changeseg.data.pairs import load_pair
from changeseg.data.pipeline import augment_options, load_options
from changeseg.data.records import PairRecord
from changeseg.data.transforms import augment_pair
from changeseg.devices import resolve_device
from changeseg.progress import Progress
from changeseg.training.calibration import curve_for, operating_point_for
from changeseg.training.engine import Engine, build_engine, train_one_epoch, validate
from changeseg.training.losses import class_weights_for, count_mask_pixels

__all__ = ["LocalFit", "fit_local"]


@dataclass
class LocalFit:
    """The trained model (eval mode) and how the run went."""

    model: nn.Module
    steps: int
    seconds: float
    class_weights: list[float] | None
    losses: list[float] = field(default_factory=list)  # mean training loss per epoch
    skipped_steps: int = 0
    # The stored threshold chosen on ``calibration_records`` (binary models), else None.
    operating_point: dict | None = None


def _decode(cfg: Config, records: Sequence[PairRecord]) -> list[dict]:
    options = load_options(cfg)
    samples = [load_pair(r.to_row() if hasattr(r, "to_row") else dict(r), **options) for r in records]
    missing = [s["pair_id"] for s in samples if "mask" not in s]
    if missing:
        raise ValueError(f"training pairs without a mask: {', '.join(missing[:5])}")
    return samples


def _batches(samples: list[dict], order: np.ndarray, *, batch_size: int, rng, augment: dict) -> Iterator[dict]:
    for first in range(0, len(order) - batch_size + 1, batch_size):
        batch = [augment_pair(samples[i], rng, **augment) for i in order[first : first + batch_size]]
        yield {key: np.stack([b[key] for b in batch]) for key in ("t0", "t1", "mask")}


def _steps_per_epoch(cfg: Config, *, pairs: int, batch_size: int) -> int:
    """Steps per epoch; an error when the pairs cannot fill one batch."""
    steps = pairs * cfg.data.repeat // batch_size
    if steps == 0:
        raise ValueError(
            f"{pairs} pair(s) x data.repeat {cfg.data.repeat} cannot fill one batch of {batch_size}: "
            "raise data.repeat or lower train.batch_size"
        )
    return steps


def _calibrate(
    cfg: Config, *, engine: Engine, records: Sequence[PairRecord], progress: Callable[[str], None] | None
) -> dict[str, Any] | None:
    """The operating point chosen on ``records`` (None when the config or the data allow none)."""
    curve = curve_for(cfg)
    validate(engine, _decode(cfg, records), curve=curve)
    point = operating_point_for(cfg, curve)
    if progress is not None and point is not None:
        progress(f"operating point: threshold {point['threshold']:.3f} ({point['method']})")
    return point


def fit_local(
    cfg: Config,
    records: Sequence[PairRecord],
    *,
    model: nn.Module | None = None,
    device: str | torch.device = "auto",
    progress: Callable[[str], None] | None = print,
    progress_seconds: float = 30.0,
    calibration_records: Sequence[PairRecord] = (),
) -> LocalFit:
    """Train ``cfg.model`` (or ``model``) on ``records`` for ``cfg.train.epochs`` epochs;
    with ``calibration_records``, choose the operating point on them afterwards."""
    if not records:
        raise ValueError("fit_local needs at least one training pair")
    torch.manual_seed(cfg.run.seed)
    rng = np.random.default_rng(cfg.run.seed)
    samples = _decode(cfg, records)
    batch_size = cfg.train.batch_size * cfg.train.num_workers
    steps_per_epoch = _steps_per_epoch(cfg, pairs=len(samples), batch_size=batch_size)
    weights = class_weights_for(
        cfg, lambda: count_mask_pixels([s["mask"] for s in samples], ignore_index=cfg.data.ignore_index)
    )
    engine = build_engine(
        cfg, steps_per_epoch=steps_per_epoch, class_weights=weights, device=resolve_device(device), model=model
    )
    total = steps_per_epoch * cfg.train.epochs
    augment = augment_options(cfg)
    clock = Progress(progress_seconds)
    started = clock.started
    losses: list[float] = []
    done = skipped = 0

    def report(step: int, loss: float) -> None:
        if progress is not None and clock.due():
            overall = done + step
            eta = clock.eta(overall, total)
            progress(
                f"step {overall}/{total} (epoch {epoch + 1}), loss {loss:.4f}, {clock.elapsed:.0f} s, about {eta:.0f} s left"
            )

    for epoch in range(cfg.train.epochs):
        order = rng.permutation(np.repeat(np.arange(len(samples)), cfg.data.repeat))
        stats = train_one_epoch(
            engine, _batches(samples, order, batch_size=batch_size, rng=rng, augment=augment), progress=report
        )
        losses.append(stats.loss)
        done += stats.steps
        skipped += stats.skipped_steps
    seconds = time.perf_counter() - started
    if progress is not None:
        progress(
            f"trained {done} steps in {seconds:.0f} s, last epoch loss {losses[-1]:.4f}"
            + (f", {skipped} step(s) skipped (no labelled pixels or a non-finite loss)" if skipped else "")
        )
    point = (
        _calibrate(cfg, engine=engine, records=calibration_records, progress=progress) if calibration_records else None
    )
    model = engine.bare_model.eval()
    return LocalFit(
        model=model,
        steps=done,
        seconds=seconds,
        class_weights=weights,
        losses=losses,
        skipped_steps=skipped,
        operating_point=point,
    )
