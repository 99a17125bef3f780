"""Fine-tuning in this process, without Ray or MLflow, for small sets of pairs.

The same recipe (one :class:`~changeseg.config.Config`) as the Ray Train job: model,
optimiser groups, frozen backbone BatchNorm, schedule, class weights, augmentation
and ``data.repeat``. The global batch is ``batch_size * num_workers``, as in the
distributed run, so the step count per epoch matches too. Every pair is decoded once
and kept in memory, which is what makes it fast on a handful of real pairs; large
datasets belong to :func:`changeseg.training.trainer.finetune`, which streams them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from changeseg.config import Config
from changeseg.data.decode import load_pair, to_model_input
from changeseg.data.pipeline import augment_options, load_options
from changeseg.data.records import PairRecord
from changeseg.data.transforms import augment_pair
from changeseg.models import create_model
from changeseg.training.losses import ChangeLoss, count_mask_pixels
from changeseg.training.loop import build_optimizer, cosine_with_warmup, set_train_mode
from changeseg.training.trainer import class_weights_for

__all__ = ["LocalFit", "fit_local"]


@dataclass
class LocalFit:
    """The trained model (eval mode) and how the run went."""

    model: nn.Module
    steps: int
    seconds: float
    class_weights: list[float] | None
    losses: list[float] = field(default_factory=list)  # mean training loss per epoch


def fit_local(
    cfg: Config,
    records: Sequence[PairRecord],
    *,
    model: nn.Module | None = None,
    progress: Callable[[str], None] | None = print,
    progress_seconds: float = 30.0,
) -> LocalFit:
    """Train ``cfg.model`` (or ``model``) on ``records`` for ``cfg.train.epochs`` epochs."""
    if not records:
        raise ValueError("fit_local needs at least one training pair")
    torch.manual_seed(cfg.run.seed)
    rng = np.random.default_rng(cfg.run.seed)
    options = load_options(cfg)
    samples = [load_pair(r.to_row() if hasattr(r, "to_row") else dict(r), **options) for r in records]
    missing = [s["pair_id"] for s in samples if "mask" not in s]
    if missing:
        raise ValueError(f"training pairs without a mask: {', '.join(missing[:5])}")
    batch_size = cfg.train.batch_size * cfg.train.num_workers
    per_epoch = len(samples) * cfg.data.repeat
    steps_per_epoch = per_epoch // batch_size
    if steps_per_epoch == 0:
        raise ValueError(
            f"{len(samples)} pair(s) x data.repeat {cfg.data.repeat} cannot fill one batch of {batch_size}: "
            "raise data.repeat or lower train.batch_size"
        )
    weights = class_weights_for(
        cfg, lambda: count_mask_pixels([s["mask"] for s in samples], ignore_index=cfg.data.ignore_index)
    )
    if model is None:
        model = create_model(**cfg.model.factory_kwargs(), storage_options=cfg.storage)
    optimizer = build_optimizer(model, cfg)
    total = steps_per_epoch * cfg.train.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, cosine_with_warmup(total_steps=total, warmup_steps=int(cfg.train.warmup_epochs * steps_per_epoch))
    )
    loss_fn = ChangeLoss(weight=torch.tensor(weights) if weights else None, ignore_index=cfg.data.ignore_index)
    augment = augment_options(cfg)
    started = last = time.perf_counter()
    losses: list[float] = []
    step = 0
    for epoch in range(cfg.train.epochs):
        set_train_mode(model, cfg)
        order = rng.permutation(np.repeat(np.arange(len(samples)), cfg.data.repeat))
        epoch_loss = 0.0
        for first in range(0, steps_per_epoch * batch_size, batch_size):
            batch = [augment_pair(samples[i], rng, **augment) for i in order[first : first + batch_size]]
            t0 = to_model_input(torch.from_numpy(np.stack([b["t0"] for b in batch])))
            t1 = to_model_input(torch.from_numpy(np.stack([b["t1"] for b in batch])))
            target = torch.from_numpy(np.stack([b["mask"] for b in batch])).long()
            loss = loss_fn(model(t0, t1), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            epoch_loss += float(loss.detach())
            step += 1
            now = time.perf_counter()
            if progress is not None and now - last >= progress_seconds:
                eta = (now - started) / step * (total - step)
                progress(f"step {step}/{total} (epoch {epoch + 1}), loss {float(loss.detach()):.4f}, {now - started:.0f} s, about {eta:.0f} s left")
                last = now
        losses.append(epoch_loss / steps_per_epoch)
    model.eval()
    seconds = time.perf_counter() - started
    if progress is not None:
        progress(f"trained {step} steps in {seconds:.0f} s, last epoch loss {losses[-1]:.4f}")
    return LocalFit(model=model, steps=step, seconds=seconds, class_weights=weights, losses=losses)

