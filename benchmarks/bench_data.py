"""Input pipeline throughput against the model's training rate.

    .venv/bin/python benchmarks/bench_data.py [--pairs 64] [--size 256] [--crop 256] [--batch 8]

Writes synthetic pairs, stores them as loose PNG files and as packed Parquet shards, on
local disk and on a loopback S3 server (moto), then times Ray Data decoding and
augmenting them (crop, flips, 90-degree rotations, colour jitter) in training batches:
pairs per second of the second pass over the data (the first warms up workers). Beside
it, the training step rate of the paper's model (ResNet-18, iade, MSF-4, DeepLabv3) on
this machine's CPU at the crop size (measured first, before Ray starts). The pipeline
must outpace the model: the printed ratio is pipeline pairs/s over model pairs/s, and
the per-core rate tells how many cores a faster (GPU) model needs.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
for _key, _value in (
    ("AWS_ACCESS_KEY_ID", "bench"),
    ("AWS_SECRET_ACCESS_KEY", "bench"),
    ("AWS_DEFAULT_REGION", "us-east-1"),
):
    os.environ.setdefault(_key, _value)

from changeseg import storage  # noqa: E402
from changeseg.config import build_config  # noqa: E402
from changeseg.data.decode import to_model_input  # noqa: E402
from changeseg.data.layouts import scan_dataset  # noqa: E402
from changeseg.data.pipeline import pair_dataset  # noqa: E402
from changeseg.data.prepare import prepare_dataset  # noqa: E402


def pipeline_rate(path: str, cfg_data: dict, storage_cfg: dict, batch: int) -> float:
    cfg = build_config({"data": {"train_path": path, **cfg_data}, "storage": storage_cfg})
    records = scan_dataset(path, storage_options=cfg.storage).records
    ds = pair_dataset(records, cfg, augment=True)
    rates = []
    for _ in range(2):
        started, seen = time.perf_counter(), 0
        for b in ds.iter_batches(batch_size=batch, batch_format="numpy"):
            seen += len(b["t0"])
        rates.append(seen / (time.perf_counter() - started))
    return rates[-1]


def model_rate(crop: int, batch: int, steps: int = 1) -> float:
    from changeseg.models import create_model
    from changeseg.training.losses import ChangeLoss

    cfg = build_config(
        {"model": {"backbone": "resnet18", "mtf": "iade", "msf_scales": 4, "head": "deeplabv3", "num_classes": 2}}
    )
    model = create_model(**cfg.model.factory_kwargs()).train()
    opt = torch.optim.Adam(model.parameters(), 1e-4)
    loss_fn = ChangeLoss()
    t = torch.randint(0, 256, (batch, crop, crop, 3), dtype=torch.uint8)
    mask = torch.randint(0, 2, (batch, crop, crop))
    times = []
    for _ in range(steps + 1):
        started = time.perf_counter()
        loss = loss_fn(model(to_model_input(t), to_model_input(t.flip(1))), mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - started)
    return batch / float(np.mean(times[1:]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--pairs-per-shard", type=int, default=8, help="several shards per reading CPU")
    parser.add_argument(
        "--model-batch", type=int, default=2, help="batch of the model rate (per-pair rate on CPU barely depends on it)"
    )
    parser.add_argument("--num-cpus", type=int, default=4, help="logical CPUs of the local Ray instance")
    args = parser.parse_args()
    # The model first, before Ray and the S3 server take CPU time.
    model = model_rate(args.crop, args.model_batch)

    import logging

    import ray
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per S3 request otherwise

    from changeseg.data.synthetic import write_folder

    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    endpoint = "http://%s:%d" % server.get_host_and_port()
    import boto3

    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="bench")
    s3 = {"endpoint_url": endpoint}
    augment = {"crop_size": args.crop, "hflip": True, "vflip": True, "rotate90": True, "color_jitter": 0.2}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            loose = Path(tmp) / "loose"
            write_folder(loose, count=args.pairs, seed=0, size=args.size)
            prepare_dataset(str(loose), shards=str(Path(tmp) / "shards"), pairs_per_shard=args.pairs_per_shard)
            opts = build_config({"storage": s3}).storage
            for path in sorted(loose.rglob("*.png")):
                storage.write_bytes(f"s3://bench/loose/{path.relative_to(loose).as_posix()}", path.read_bytes(), opts)
            prepare_dataset(
                "s3://bench/loose",
                shards="s3://bench/shards",
                pairs_per_shard=args.pairs_per_shard,
                storage_options=opts,
            )
            mb = sum(p.stat().st_size for p in loose.rglob("*.png")) / 2**20
            print(
                f"{args.pairs} pairs of {args.size}x{args.size} ({mb:.1f} MiB of PNG, shards of {args.pairs_per_shard}), "
                f"crop {args.crop}, batch {args.batch}, "
                f"Ray with {args.num_cpus} logical CPUs on {os.cpu_count()} cores"
            )
            rates = {
                "local files": pipeline_rate(str(loose), augment, {}, args.batch),
                "local shards": pipeline_rate(str(Path(tmp) / "shards"), augment, {}, args.batch),
                "S3 files": pipeline_rate("s3://bench/loose", augment, s3, args.batch),
                "S3 shards": pipeline_rate("s3://bench/shards", augment, s3, args.batch),
            }
    finally:
        server.stop()
        ray.shutdown()
    print(f"model training step (CPU, {torch.get_num_threads()} threads): {model:.2f} pairs/s")
    for name, rate in rates.items():
        print(f"pipeline {name:13s}: {rate:7.1f} pairs/s  = {rate / model:6.1f} x the model's rate")
    cores = os.cpu_count() or 1
    # On an accelerator the model is far faster than here: input keeps up while
    # model pairs/s < cores x this per-core rate.
    print(f"per CPU core: {max(rates.values()) / cores:.1f} pairs/s (best form)")
    print(
        f"shards / files: local {rates['local shards'] / rates['local files']:.2f}x, S3 {rates['S3 shards'] / rates['S3 files']:.2f}x"
    )


if __name__ == "__main__":
    main()
