"""Overhead of the Ray Train loop against the bare engine loop, same model and data.

    .venv/bin/python benchmarks/bench_train_loop.py [--pairs 64] [--size 96] [--epochs 3]

Three runs of the demo model on the same synthetic pairs and global batch, all through
the one training engine (changeseg.training.engine):

- bare: one process, the pairs decoded once and held in memory, 2 intra-op threads;
- Ray, equal resources: 1 Ray Train worker holding 2 CPUs (2 threads), data streamed by
  Ray Data (shuffled, decoded, augmented) beside it;
- Ray, 2 DDP workers of 1 CPU each.

Prints steady-state training images/s of each (epochs after the first), the ratio of
each Ray run to the bare loop, and the wall time of each Ray run including start-up,
validation, checkpoints and MLflow logging. Run it alone: two PyTorch processes on two
cores slow each other down far more than the loop does.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from changeseg.config import build_config
from changeseg.data.decode import load_pair
from changeseg.data.pipeline import plan_datasets, records_to_rows
from changeseg.training.engine import build_engine, train_one_epoch


def _cfg(tmp: str, args, *, workers: int, cpus: float, name: str):
    return build_config(
        {
            "run": {"name": name, "storage_path": str(Path(tmp) / "runs")},
            "data": {
                "synthetic": {
                    "train_pairs": args.pairs,
                    "val_pairs": 4,
                    "size": args.size,
                    "output_dir": str(Path(tmp) / "syn"),
                }
            },
            "model": {"msf_width": 128, "weights": "none"},
            "train": {
                "epochs": args.epochs,
                "batch_size": 16 // workers,
                "num_workers": workers,
                "cpus_per_worker": cpus,
                "num_overlays": 0,
                "lr": 1e-3,
                "class_weights": "none",
            },
            "tracking": {"tracking_uri": f"sqlite:///{tmp}/mlflow-{name}.db", "register_model": False},
            "ray": {"num_cpus": 6},
        }
    )


def bare_loop(cfg, rows, epochs: int) -> float:
    """images/s of the engine on in-memory batches, epochs after the first."""
    torch.set_num_threads(2)
    samples = [load_pair(r) for r in rows]
    arrays = {k: np.stack([s[k] for s in samples]) for k in ("t0", "t1", "mask")}
    batch = cfg.train.batch_size * cfg.train.num_workers
    steps = len(samples) // batch
    torch.manual_seed(0)
    engine = build_engine(cfg, steps_per_epoch=steps, class_weights=None, device=torch.device("cpu"))
    rng = np.random.default_rng(0)
    rates = []
    for _ in range(epochs):
        order = rng.permutation(len(samples))
        batches = ({k: v[order[i : i + batch]] for k, v in arrays.items()} for i in range(0, steps * batch, batch))
        rates.append(train_one_epoch(engine, batches).images_per_s)
    return float(np.mean(rates[1:]))


def ray_run(cfg) -> tuple[float, float, float]:
    """(steady images/s from the workers' reports, wall seconds of the whole run, share of
    the epoch rank 0 waited for batches)."""
    from mlflow import MlflowClient

    from changeseg.training.trainer import finetune

    started = time.perf_counter()
    result = finetune(cfg)
    wall = time.perf_counter() - started
    client = MlflowClient(cfg.tracking.tracking_uri)
    history = client.get_metric_history(result.mlflow_run_id, "train_images_per_s")
    waits = client.get_metric_history(result.mlflow_run_id, "data_wait_fraction")
    return (
        float(np.mean([m.value for m in history if m.step >= 1])),
        wall,
        float(np.mean([m.value for m in waits if m.step >= 1])),
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        one = _cfg(tmp, args, workers=1, cpus=2, name="one-worker")
        two = _cfg(tmp, args, workers=2, cpus=1, name="two-workers")
        plan = plan_datasets(one)
        rows = records_to_rows(plan.train)
        bare_before = bare_loop(one, rows, args.epochs)
        one_rate, one_wall, one_wait = ray_run(one)
        two_rate, two_wall, two_wait = ray_run(two)
        # Measured again after the Ray runs: a busy machine shows as a spread between the two.
        bare_after = bare_loop(one, rows, args.epochs)
    bare = (bare_before + bare_after) / 2
    images = len(plan.train) * args.epochs
    print(f"{len(plan.train)} pairs at {args.size}x{args.size}, global batch 16, {args.epochs} epochs")
    print(
        f"bare engine loop (1 process, 2 threads)  {bare:7.2f} images/s   (before {bare_before:.2f}, after {bare_after:.2f})"
    )
    print(
        f"Ray Train, 1 worker x 2 CPUs            {one_rate:7.2f} images/s   ratio {one_rate / bare:.2f}"
        f"   whole run {one_wall:.1f} s (end-to-end ratio {images / one_wall / bare:.2f}), "
        f"waiting for data {one_wait:.0%} of the epoch"
    )
    print(
        f"Ray Train, 2 DDP workers x 1 CPU        {two_rate:7.2f} images/s   ratio {two_rate / bare:.2f}"
        f"   whole run {two_wall:.1f} s (end-to-end ratio {images / two_wall / bare:.2f}), "
        f"waiting for data {two_wait:.0%} of the epoch"
    )


if __name__ == "__main__":
    main()
