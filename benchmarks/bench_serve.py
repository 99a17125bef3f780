"""HTTP serving against calling the model directly, and with against without batching.

Registers a tiny C-3PO (ResNet-18, MSF width 16, one scale) in a throw-away SQLite
MLflow, then in one run measures, on the same 64x64 pair:

- direct: ``Predictor.predict`` in this process, one pair at a time (the baseline);
- HTTP sequential: one request at a time through Serve, alternated with direct calls
  (overhead = median of the per-pair differences);
- HTTP load: ``--requests`` requests, ``--concurrency`` at a time, with dynamic batching
  (serve.max_batch_size=8) and without (max_batch_size=1): two applications side by
  side, one model replica each, taking the load in alternating chunks of 50;
  p50 / p95 / p99, requests/s and the count of 5xx answers.

Loopback only; on a busy 2-core machine it takes about two minutes. Run from the repository root (Serve imports serve/app.py from there):
.venv/bin/python benchmarks/bench_serve.py [--requests 300]
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from changeseg.runtime import free_port

ROOT = Path(__file__).resolve().parents[1]
TINY = {"backbone": "resnet18", "msf_width": 16, "msf_scales": 1, "head": "fcn"}


def percentiles(values_ms: list[float]) -> dict[str, float]:
    arr = np.asarray(values_ms)
    return {f"p{q}": round(float(np.percentile(arr, q)), 2) for q in (50, 95, 99)}


def register_tiny_model(tmp: Path) -> str:
    import torch

    from changeseg import tracking
    from changeseg.config import build_config
    from changeseg.models import create_model
    from changeseg.models.weights import save_checkpoint

    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    cfg = build_config({"run": {"name": "bench-serve"}, "tracking": {"tracking_uri": uri}, "model": TINY})
    torch.manual_seed(0)
    directory = save_checkpoint(tmp / "ckpt", create_model(**TINY), metadata={})
    run = tracking.start_or_resume_run(cfg)
    tracking.log_and_register_model(cfg, run_id=run.run_id, checkpoint_dir=directory, metrics={"val_global_f1": 0.5})
    return uri


def encode(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def http_requests(
    url: str, t0: bytes, t1: bytes, *, total: int, concurrency: int
) -> tuple[list[tuple[int, float, int]], float]:
    """(status, ms, batch size) per request, and the wall time, ``concurrency`` at a time."""
    import threading

    import requests

    local_state = threading.local()

    def one(_):
        session = getattr(local_state, "session", None) or requests.Session()
        local_state.session = session
        files = {"t0": ("t0.png", t0, "image/png"), "t1": ("t1.png", t1, "image/png")}
        start = time.perf_counter()
        response = session.post(f"{url}/v1/detect", files=files, timeout=60)
        elapsed = 1000 * (time.perf_counter() - start)
        batch = response.json().get("batch_size", 0) if response.ok else 0
        return response.status_code, elapsed, batch

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, range(total)))
    return results, time.perf_counter() - started


def load_summary(results: list[tuple[int, float, int]], wall_s: float, concurrency: int) -> dict:
    statuses = [s for s, _, _ in results]
    return {
        "requests": len(results),
        "concurrency": concurrency,
        **percentiles([ms for _, ms, _ in results]),
        "requests_per_s": round(len(results) / wall_s, 1),
        "ok": statuses.count(200),
        "5xx": sum(s >= 500 for s in statuses),
        "mean_batch": round(float(np.mean([b for _, _, b in results])), 2),
    }


def interleaved(predictor, url: str, t0, t1, t0_png: bytes, t1_png: bytes, *, total: int) -> dict:
    """Direct and HTTP calls on the same pair, alternated, so both see the same machine load;
    the overhead is the median of the per-pair differences."""
    import requests

    session = requests.Session()
    files = {"t0": ("t0.png", t0_png, "image/png"), "t1": ("t1.png", t1_png, "image/png")}
    for _ in range(5):
        predictor.predict(t0, t1)
    direct, http = [], []
    for _ in range(total):
        start = time.perf_counter()
        predictor.predict(t0, t1)
        direct.append(1000 * (time.perf_counter() - start))
        start = time.perf_counter()
        session.post(f"{url}/v1/detect", files=files, timeout=60).raise_for_status()
        http.append(1000 * (time.perf_counter() - start))
    return {
        "direct": percentiles(direct),
        "http_sequential": {**percentiles(http), "requests": total},
        "http_overhead_p50_ms": round(float(np.median(np.subtract(http, direct))), 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--sequential", type=int, default=50, help="direct / HTTP pairs for the one-at-a-time latency")
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args(argv)

    import ray
    import torch

    from changeseg.inference import Predictor
    from changeseg.serving import local

    rng = np.random.default_rng(0)
    t0 = rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)
    t1 = t0.copy()
    t1[8:40, 16:48] = 255 - t1[8:40, 16:48]
    t0_png, t1_png = encode(t0), encode(t1)
    report: dict = {"size": args.size, "model": TINY}

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        uri = register_tiny_model(Path(tmp))

        # One intra-op thread, as in a model replica with num_cpus=1 (Ray sets OMP_NUM_THREADS).
        torch.set_num_threads(1)
        predictor = Predictor.from_uri("models:/changeseg/1", tracking_uri=uri)
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
        try:
            # Both variants run side by side (one model replica each) and take the load
            # in alternating chunks, so a busy machine weighs on both alike.
            config = local.load_deploy_config(
                ROOT / "serve" / "config.yaml",
                port=free_port(),
                args={"tracking": {"tracking_uri": uri}, "serve": {"max_batch_size": 8}},
                deployments={"ChangeModel": {"autoscaling_config": {"min_replicas": 1, "max_replicas": 1}}},
            )
            unbatched = copy.deepcopy(config["applications"][0])
            unbatched.update(name="changeseg-unbatched", route_prefix="/unbatched")
            unbatched["args"]["serve"]["max_batch_size"] = 1
            config["applications"].append(unbatched)
            base = local.deploy(config, timeout_s=180)
            urls = {"batched": base, "unbatched": f"{base}/unbatched"}
            for url in urls.values():
                http_requests(url, t0_png, t1_png, total=16, concurrency=4)  # warm-up: model loaded
            report.update(interleaved(predictor, urls["batched"], t0, t1, t0_png, t1_png, total=args.sequential))
            results = {label: [] for label in urls}
            walls = dict.fromkeys(urls, 0.0)
            chunk = 50
            for start in range(0, args.requests, chunk):
                for label, url in urls.items():
                    got, wall = http_requests(
                        url, t0_png, t1_png, total=min(chunk, args.requests - start), concurrency=args.concurrency
                    )
                    results[label] += got
                    walls[label] += wall
            for label in urls:
                report[f"http_load_{label}"] = load_summary(results[label], walls[label], args.concurrency)
        finally:
            local.shutdown()
            ray.shutdown()

    b, u = report["http_load_batched"], report["http_load_unbatched"]
    report["batching_speedup"] = round(b["requests_per_s"] / u["requests_per_s"], 2)
    d, s = report["direct"], report["http_sequential"]
    print(
        f"\n{args.size}x{args.size} pair, tiny C-3PO (ResNet-18, MSF 16, 1 scale), CPU, one model replica, 1 intra-op thread"
    )
    print(f"  direct Predictor      p50 {d['p50']:.1f} ms   p95 {d['p95']:.1f}   p99 {d['p99']:.1f}")
    print(
        f"  HTTP, one at a time   p50 {s['p50']:.1f} ms   p95 {s['p95']:.1f}   p99 {s['p99']:.1f}   overhead (median of differences) {report['http_overhead_p50_ms']:.1f} ms"
    )
    for label, r in (("batched (8)", b), ("unbatched (1)", u)):
        print(
            f"  HTTP load {label:13s} {r['requests']} req x{r['concurrency']}: p50 {r['p50']:.1f} ms  p95 {r['p95']:.1f}  "
            f"p99 {r['p99']:.1f}  {r['requests_per_s']:.1f} req/s  mean batch {r['mean_batch']}  5xx {r['5xx']}"
        )
    print(f"  batching throughput ratio {report['batching_speedup']:.2f}x")
    print(json.dumps(report, sort_keys=True))
    return 0 if b["5xx"] == 0 and u["5xx"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
