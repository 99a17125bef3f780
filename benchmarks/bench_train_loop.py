"""Overhead of the Ray Train loop against a bare PyTorch loop, same model and data.

    .venv/bin/python benchmarks/bench_train_loop.py [--pairs 64] [--size 96] [--epochs 3]

Both loops train the demo model on the same synthetic pairs with the same global batch:
the bare loop in one process using every core, Ray Train with 2 DDP workers of one core
each, data streamed by Ray Data. Prints steady-state training images/s of each (epochs
after the first), their ratio, and the wall time of the whole Ray run including start-up,
validation, checkpoints and MLflow logging.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from changeseg.config import build_config
from changeseg.data.decode import load_pair, to_model_input
from changeseg.data.pipeline import plan_datasets, records_to_rows
from changeseg.models import create_model
from changeseg.training.losses import ChangeLoss


def bare_loop(cfg, rows, epochs: int) -> float:
    samples = [load_pair(r) for r in rows]
    t0 = torch.from_numpy(np.stack([s["t0"] for s in samples]))
    t1 = torch.from_numpy(np.stack([s["t1"] for s in samples]))
    mask = torch.from_numpy(np.stack([s["mask"] for s in samples])).long()
    torch.manual_seed(0)
    model = create_model(**cfg.model.factory_kwargs()).train()
    opt = torch.optim.Adam(model.parameters(), cfg.train.lr)
    loss_fn = ChangeLoss()
    batch = cfg.train.batch_size * cfg.train.num_workers
    rates = []
    for _ in range(epochs):
        order = torch.randperm(len(samples))
        start, seen = time.perf_counter(), 0
        for i in range(0, len(samples) - batch + 1, batch):
            idx = order[i : i + batch]
            loss = loss_fn(model(to_model_input(t0[idx]), to_model_input(t1[idx])), mask[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            seen += len(idx)
        rates.append(seen / (time.perf_counter() - start))
    return float(np.mean(rates[1:]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = build_config(
            {
                "run": {"name": "bench", "storage_path": str(Path(tmp) / "runs")},
                "data": {"synthetic": {"train_pairs": args.pairs, "val_pairs": 4, "size": args.size, "output_dir": str(Path(tmp) / "syn")}},
                "model": {"msf_width": 128},
                "train": {"epochs": args.epochs, "batch_size": 8, "num_workers": 2, "num_overlays": 0, "lr": 1e-3},
                "tracking": {"tracking_uri": f"sqlite:///{tmp}/mlflow.db", "register_model": False},
                "ray": {"num_cpus": 6},
            }
        )
        plan = plan_datasets(cfg)
        bare = bare_loop(cfg, records_to_rows(plan.train), args.epochs)

        from mlflow import MlflowClient

        from changeseg.training.trainer import finetune

        started = time.perf_counter()
        result = finetune(cfg)
        wall = time.perf_counter() - started
        history = MlflowClient(cfg.tracking.tracking_uri).get_metric_history(result.mlflow_run_id, "train_images_per_s")
        ray_rate = float(np.mean([m.value for m in history if m.step >= 1]))
    images = args.pairs * args.epochs
    print(f"{args.pairs} pairs at {args.size}x{args.size}, global batch 16, {args.epochs} epochs, {torch.get_num_threads()} cores")
    print(f"bare PyTorch loop (1 process)          {bare:7.2f} images/s")
    print(f"Ray Train loop (2 DDP workers)         {ray_rate:7.2f} images/s   ratio {ray_rate / bare:.2f}")
    print(f"Ray run wall time {wall:.1f} s for {images} training images ({images / wall:.2f} images/s end to end, "
          f"ratio {images / wall / bare:.2f} of the bare loop)")


if __name__ == "__main__":
    main()
