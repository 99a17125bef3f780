"""Batch scoring: pipeline throughput against the bare model, and memory as the archive grows.

    .venv/bin/python benchmarks/bench_score.py [--pairs 96] [--size 256] [--width 128]

1. Throughput: the same pairs scored (a) by the bare model forward on pre-decoded
   arrays, in batches, in this process, and (b) by ``batch_score`` (Ray Data: reading,
   decoding, the model in an actor pool, PNG + Parquet writing). Prints pairs/s of each
   and the ratio (b)/(a), steady state (from the first result batch on) and end to end.
2. Memory: peak memory (PSS: shared pages count once) of the process tree (driver, Ray's own processes
   and workers) when scoring N and 10 N small pairs, each in a fresh process, and the ratio.
3. Large pairs (``--large 8192``): peak memory scoring one pair of that size (tiled by the
   inference core, window by window) against one of ``--large-base`` (2048), each in a
   fresh process; bounded tiling keeps the ratio near the ratio of the uint8 images alone.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from changeseg.config import build_config
from changeseg.inference.predictor import Predictor
from changeseg.models import create_model
from changeseg.models.weights import save_checkpoint


def write_archive(root: Path, count: int, size: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    pairs = []
    for name in ("t0", "t1"):
        (root / name).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        a = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        b = a.copy()
        b[size // 4 : size // 2, size // 4 : size // 2] = 255 - b[size // 4 : size // 2, size // 4 : size // 2]
        Image.fromarray(a).save(root / "t0" / f"p{i:05d}.png")
        Image.fromarray(b).save(root / "t1" / f"p{i:05d}.png")
        pairs.append((a, b))
    return pairs


def _pss(pid: int) -> int:
    """Proportional set size: shared pages (object store, libraries) split between users."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def tree_memory(pid: int) -> int:
    """Bytes of memory (PSS) of ``pid`` and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        total += _pss(p)
        stack.extend(children.get(p, []))
    return total


def bare_rate(model, pairs, batch: int) -> float:
    """Pairs/s of the inference core alone on pre-decoded pairs (same batching as the actors)."""
    predictor = Predictor(model, batch_size=batch, precision="fp32")
    predictor.predict_pairs([p[0] for p in pairs[:batch]], [p[1] for p in pairs[:batch]])  # warm-up
    start = time.perf_counter()
    predictor.predict_pairs([p[0] for p in pairs], [p[1] for p in pairs])
    return len(pairs) / (time.perf_counter() - start)


def run_one(pairs: int, size: int, width: int, *, large: bool = False) -> dict:
    """Score ``pairs`` pairs in this process; return rates and the peak tree memory."""
    from changeseg.inference.score import batch_score

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = write_archive(tmp / "archive", pairs, size)
        torch.manual_seed(0)
        model = create_model(msf_width=width)
        model_dir = save_checkpoint(tmp / "model", model)
        # One actor with every core, as the bare loop has; decoding tasks share the cores.
        cores = os.cpu_count() or 1
        cfg = build_config(
            overrides=[
                "score.batch_size=4",
                "score.max_actors=1",
                "score.flush_rows=64",
                f"score.cpus_per_actor={cores}",
                f"ray.num_cpus={cores + 2}",
                f"score.max_pixels={max(size * size, 1024)}",
            ]
        )
        peak = [0]
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                peak[0] = max(peak[0], tree_memory(os.getpid()))
                time.sleep(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        summary = batch_score(
            cfg, model_uri=str(model_dir), input_uri=str(tmp / "archive"), output_uri=str(tmp / "out")
        )
        stop.set()
        sampler.join()
        return {
            "pairs": pairs,
            "peak_mb": peak[0] / 2**20,
            "model": model,
            "data": data,
            "steady": summary.steady_pairs_per_second,
            "end_to_end": summary.pairs_per_second,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=96)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--width", type=int, default=128, help="MSF width of the scored model")
    parser.add_argument("--memory-pairs", type=int, default=100, help="N for the memory comparison (and 10 N)")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory comparison")
    parser.add_argument(
        "--large", type=int, default=0, help="side of one large pair scored with bounded memory (e.g. 8192)"
    )
    parser.add_argument("--large-base", type=int, default=2048, help="side of the pair it is compared with")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--one-size", type=int, default=64, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        out = run_one(args.one, args.one_size, 16)
        print(json.dumps({"pairs": out["pairs"], "peak_mb": out["peak_mb"]}))
        return
    if args.large:
        large_pair(args.large_base, args.large)
        return

    torch.set_num_threads(os.cpu_count() or 1)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.pairs} pairs of {args.size}x{args.size}, "
        f"R18 iade MSF-4x{args.width} FCN, batch 4"
    )
    out = run_one(args.pairs, args.size, args.width)
    bare = bare_rate(out["model"], out["data"], 4)
    print(f"bare model forward (pre-decoded, one process): {bare:.2f} pairs/s")
    print(
        f"batch_score steady state:                        {out['steady']:.2f} pairs/s  ratio {out['steady'] / bare:.2f}"
    )
    print(
        f"batch_score end to end (incl. Ray start-up):      {out['end_to_end']:.2f} pairs/s  ratio {out['end_to_end'] / bare:.2f}"
    )

    if args.no_memory:
        return
    peaks = []
    for n in (args.memory_pairs, 10 * args.memory_pairs):
        done = subprocess.run([sys.executable, __file__, "--one", str(n)], capture_output=True, text=True, check=True)
        peaks.append(json.loads(done.stdout.strip().splitlines()[-1])["peak_mb"])
        print(f"peak memory (PSS) scoring {n} pairs of 64x64: {peaks[-1]:.0f} MiB", flush=True)
    print(f"memory ratio 10x pairs / 1x: {peaks[1] / peaks[0]:.2f}")


def large_pair(base: int, large: int) -> None:
    """Peak memory of scoring one base x base pair and one large x large pair, fresh processes."""
    peaks = {}
    for side in (base, large):
        done = subprocess.run(
            [sys.executable, __file__, "--one", "1", "--one-size", str(side)],
            capture_output=True,
            text=True,
            check=True,
        )
        peaks[side] = json.loads(done.stdout.strip().splitlines()[-1])["peak_mb"]
        print(f"peak memory (PSS) scoring one {side}x{side} pair: {peaks[side]:.0f} MiB", flush=True)
    print(f"memory ratio {large}x{large} / {base}x{base}: {peaks[large] / peaks[base]:.2f}")


if __name__ == "__main__":
    main()
