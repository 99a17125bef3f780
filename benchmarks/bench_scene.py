"""Scene scoring: synthetic 4-band uint16 GeoTIFF pairs scored window by window into COGs.

Measures, for a small and a large scene (default 4096 and 8192 px a side; ``--sizes 4096
16384`` for the full comparison; ``--model resnet18`` for a small C-3PO instead of the
default stand-in, which on CPUs takes minutes per 4096-px scene): peak resident memory of the scoring process (each size
in a fresh process), throughput against the bare forward pass over the same windows,
and the time spent reading rasters, writing tiles, building COGs and polygons. Scenes
are written tile by tile, never held in memory.

    .venv/bin/python benchmarks/bench_scene.py [--sizes 4096 8192] [--tile 512] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_scene(path: Path, size: int, *, seed: int, shift: int = 0) -> None:
    """A 4-band uint16 GeoTIFF written in 1024-px strips (tiled 512, deflate)."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    profile = {"driver": "GTiff", "width": size, "height": size, "count": 4, "dtype": "uint16", "crs": "EPSG:32633",
               "transform": from_origin(500_000, 4_000_000, 10, 10), "nodata": 0, "tiled": True, "blockxsize": 512,
               "blockysize": 512, "compress": "deflate", "zlevel": 1, "BIGTIFF": "IF_SAFER"}
    rng = np.random.default_rng(seed)
    with rasterio.open(path, "w", **profile) as dst:
        for y in range(0, size, 1024):
            h = min(1024, size - y)
            yy = np.arange(y, y + h, dtype=np.float32)[:, None]
            xx = np.arange(size, dtype=np.float32)[None, :]
            strip = np.empty((4, h, size), np.uint16)
            for b in range(4):
                strip[b] = 2000 + 800 * np.sin(yy * 0.01 + b) * np.cos(xx * 0.013)
            if shift:  # a few bright squares appear in t1
                strip[:, :, ::997][...] = 9000
            strip += rng.integers(0, 50, size=strip.shape, dtype=np.uint16)
            dst.write(strip, window=Window(0, y, size, h))


def _model(tile: int, name: str):
    """``resnet18``: a small C-3PO; ``tiny``: a 1x1 convolution of |t1 - t0|, which leaves the
    raster reading and writing as nearly all of the cost (the hardest case for overhead)."""
    import torch

    from changeseg.inference.predictor import Predictor
    from changeseg.models import create_model

    torch.manual_seed(0)
    if name == "tiny":
        class Tiny(torch.nn.Module):
            num_classes = 2

            def __init__(self) -> None:
                super().__init__()
                self.conv = torch.nn.Conv2d(4, 2, 1)

            def forward(self, t0, t1):
                return self.conv((t1 - t0).abs())

        model = Tiny()
    else:
        model = create_model(backbone="resnet18", msf_width=16, msf_scales=2, head="fcn", in_channels=4)
    return Predictor(model, tile_size=tile, tile_overlap=64, batch_size=2)


def run_one(size: int, tile: int, threads: int, folder: Path, model: str) -> dict:
    """Score one scene pair in this process; returns timings and the peak RSS."""
    import resource

    import torch

    from changeseg.inference.scene import SceneOptions, score_scene
    from changeseg.inference.tiling import plan_windows

    torch.set_num_threads(threads)
    started = time.perf_counter()
    write_scene(folder / f"t0_{size}.tif", size, seed=0)
    write_scene(folder / f"t1_{size}.tif", size, seed=1, shift=1)
    write_s = time.perf_counter() - started
    predictor = _model(tile, model)
    row = {"pair_id": f"s{size}", "t0": str(folder / f"t0_{size}.tif"), "t1": str(folder / f"t1_{size}.tif")}
    opts = SceneOptions(raster={"bands": (1, 2, 3, 4), "scaling": "range", "value_range": (0, 10000)},
                        write_probabilities=True)
    baseline_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    out = score_scene(predictor, row, output_uri=str(folder / "out"), opts=opts)
    seconds = time.perf_counter() - started
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # The bare forward over the same windows and batches, on ready tensors.
    windows = plan_windows(size, size, tile=tile, overlap=64)
    step = predictor._window_step(1, windows[0])
    x = torch.rand(step, 4, tile, tile)
    started = time.perf_counter()
    for _ in range(0, len(windows), step):
        predictor.forward(x, x)
    bare = time.perf_counter() - started
    return {"size": size, "windows": len(windows), "seconds": round(seconds, 2), "bare_forward_s": round(bare, 2),
            "throughput_vs_bare": round(bare / seconds, 3), "mpx_per_s": round(size * size / seconds / 1e6, 3),
            "peak_rss_mb": round(peak_kb / 1024, 1), "rss_before_scoring_mb": round(baseline_rss / 1024, 1),
            "writing_inputs_s": round(write_s, 2), "regions": out["regions_total"], **out["stats"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192])
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", choices=["tiny", "resnet18"], default="tiny")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # child process: score one size
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.tile, args.threads, Path(args.folder), args.model)))
        return
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-scene-") as tmp:
        for size in args.sizes:  # a fresh process per size: peak RSS is per scene
            cmd = [sys.executable, __file__, "--one", str(size), "--tile", str(args.tile), "--threads", str(args.threads),
                   "--folder", tmp, "--model", args.model]
            done = subprocess.run(cmd, check=True, capture_output=True, text=True)
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(results[-1]), flush=True)
            for f in Path(tmp).glob("t*_*.tif"):
                f.unlink()
    small, large = results[0], results[-1]
    print(json.dumps({"peak_memory_ratio": round(large["peak_rss_mb"] / small["peak_rss_mb"], 3),
                      "pixels_ratio": (large["size"] / small["size"]) ** 2,
                      "throughput_vs_bare": [r["throughput_vs_bare"] for r in results]}, indent=2))


if __name__ == "__main__":
    main()
