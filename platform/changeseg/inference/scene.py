"""Scoring georeferenced scenes of any size, window by window.

A scene pair is never held whole: the seamless windows of
:mod:`changeseg.inference.tiling` are read from the rasters (t1 through its alignment
to t0's grid), run through :meth:`Predictor.forward` in batches of the predictor's
pixel budget, and only each window's kept centre is written to a tiled GeoTIFF beside
the output. Reading runs ahead of the model and writing behind it in two background
threads (:mod:`changeseg.inference.background`; GDAL releases the GIL), through
bounded queues, so memory is bounded by the tile size and batch, not the scene. Afterwards
the GeoTIFFs become COGs and the changed regions GeoJSON polygons
(:mod:`changeseg.inference.geo_outputs`).
"""

from __future__ import annotations

# rasterio, shapely and pyproj are imported in the functions that use them: GDAL is a large
# native library that only georeferenced inputs need, so image-only jobs never load it.
import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from changeseg import storage
from changeseg.data.decode import to_model_input
from changeseg.data.raster import is_raster_row, open_raster, open_scene_pair, raster_options
from changeseg.inference.background import Prefetch, Sink
from changeseg.inference.geo_outputs import MASK_NODATA, scene_bounds, tiled_profile, to_cog, write_regions
from changeseg.inference.naming import pair_file_name
from changeseg.inference.predictor import Predictor
from changeseg.inference.tiling import plan_windows
from changeseg.metrics import ChangeMetrics

__all__ = ["SceneOptions", "is_scene", "score_scene"]

GDAL_CACHE_MB = 64
PREFETCH = 2  # batches read ahead of the model, and scored batches waiting to be written


@dataclass(frozen=True)
class SceneOptions:
    """What a scene run writes (from the ``score`` and ``data`` sections)."""

    raster: dict
    write_probabilities: bool = False
    probability_dtype: str = "uint8"
    regions_crs: str | None = None
    regions_simplify: float = 0.0
    min_region_area: int = 1
    max_regions: int = 100
    mask_values: str = "binary"
    ignore_index: int = 255

    @classmethod
    def from_config(cls, cfg: Any) -> "SceneOptions":
        s = cfg.score
        return cls(
            raster=raster_options(cfg.data),
            write_probabilities=s.write_probabilities,
            probability_dtype=s.probability_dtype,
            regions_crs=s.regions_crs,
            regions_simplify=s.regions_simplify,
            min_region_area=s.min_region_area,
            max_regions=s.max_regions,
            mask_values=cfg.data.mask_values,
            ignore_index=cfg.data.ignore_index,
        )


def is_scene(row: dict, storage_options=None) -> bool:
    """Whether a record is a georeferenced raster pair (scored window by window into COGs)."""
    if not is_raster_row(row):
        return False
    with open_raster(row, "t0", storage_options) as ds:
        return ds.crs is not None and not ds.transform.is_identity


@dataclass
class _Batch:
    """Windows read ahead of the model: inputs, and per window its centre's validity and truth."""

    windows: list
    t0: np.ndarray  # (N, h, w, C) uint8; made model input in the model's thread (see _score_batch)
    t1: np.ndarray
    valid: list[np.ndarray]  # (h, w) bool of each kept centre
    truth: list[np.ndarray | None]  # class ids of each kept centre, when the pair has a mask


@dataclass
class _Scored:
    """A batch after the model: class ids and P(change) of whole windows, on the CPU."""

    batch: _Batch
    classes: np.ndarray  # (N, h, w) uint8
    change: np.ndarray | None  # (N, h, w) float32, when probabilities are written


def _rio(y: int, x: int, height: int, width: int):
    from rasterio.windows import Window as RioWindow  # lazy: GDAL, see the module note

    return RioWindow(x, y, width, height)


def _centre(w) -> tuple[slice, slice]:
    """The kept centre of window ``w`` in the window's own pixel coordinates."""
    return slice(w.y0 - w.y, w.y1 - w.y), slice(w.x0 - w.x, w.x1 - w.x)


class _Outputs:
    """The temporary tiled GeoTIFFs a scene's kept centres are written into (by one thread)."""

    def __init__(self, pair, folder: Path, opts: SceneOptions, stats: dict) -> None:
        import rasterio  # lazy: GDAL, see the module note

        self.stats = stats
        self.mask_path = folder / "mask.tif"
        self.mask = rasterio.open(self.mask_path, "w", **tiled_profile(pair.t0, dtype="uint8", nodata=MASK_NODATA))
        self.prob = None
        self.as_float = opts.probability_dtype == "float32"
        if opts.write_probabilities:
            self.prob_path = folder / "probability.tif"
            nodata = float("nan") if self.as_float else None
            self.prob = rasterio.open(
                self.prob_path, "w", **tiled_profile(pair.t0, dtype=opts.probability_dtype, nodata=nodata)
            )

    def write_batch(self, scored: _Scored) -> None:
        started = time.perf_counter()
        for k, w in enumerate(scored.batch.windows):
            ys, xs = _centre(w)
            valid = scored.batch.valid[k]
            classes = scored.classes[k, ys, xs].copy()
            classes[~valid] = MASK_NODATA
            window = _rio(w.y0, w.x0, w.y1 - w.y0, w.x1 - w.x0)
            self.mask.write(classes, 1, window=window)
            if self.prob is not None:
                self._write_probability(window, scored.change[k, ys, xs], valid)
            self.stats["valid"] += int(valid.sum())
            self.stats["changed"] += int(np.count_nonzero((classes != 0) & valid))
        self.stats["write_s"] += time.perf_counter() - started

    def _write_probability(self, window, p: np.ndarray, valid: np.ndarray) -> None:
        if self.as_float:
            self.prob.write(np.where(valid, p, np.nan).astype(np.float32), 1, window=window)
        else:
            self.prob.write(np.rint(p * 255).astype(np.uint8), 1, window=window)
            self.prob.write_mask(np.where(valid, 255, 0).astype(np.uint8), window=window)

    def close(self) -> None:
        self.mask.close()
        if self.prob is not None:
            self.prob.close()


def _windows_of(predictor: Predictor, height: int, width: int):
    tile = predictor.tile_size or 512
    windows = plan_windows(height, width, tile=tile, overlap=predictor.tile_overlap)
    return windows, predictor._window_step(1, windows[0])


def _read_batches(pair, windows: list, step: int, opts: SceneOptions, num_classes: int, stats: dict):
    """Batches of windows as model input (runs in the reader thread: it alone touches the inputs)."""
    for first in range(0, len(windows), step):
        chunk = windows[first : first + step]
        started = time.perf_counter()
        reads = [pair.read(_rio(w.y, w.x, w.height, w.width)) for w in chunk]
        valid = [r[2][_centre(w)] for r, w in zip(reads, chunk)]
        truth = [
            pair.read_mask(
                _rio(w.y0, w.x0, w.y1 - w.y0, w.x1 - w.x0),
                mask_values=opts.mask_values,
                num_classes=num_classes,
                ignore_index=opts.ignore_index,
            )
            for w in chunk
        ]
        a, b = np.stack([r[0] for r in reads]), np.stack([r[1] for r in reads])
        stats["read_s"] += time.perf_counter() - started
        yield _Batch(chunk, a, b, valid, truth)


def _score_batch(predictor: Predictor, batch: _Batch, cut: float | None, *, change: bool) -> _Scored:
    # Torch runs in this thread only: a torch op in another thread starts a second pool of
    # intra-op threads that competes with the model's for the same cores.
    a, b = (to_model_input(torch.from_numpy(x)) for x in (batch.t0, batch.t1))
    proba = predictor.forward(a, b)
    classes = predictor.classes(proba, cut)
    p = (1.0 - proba[:, 0]).clamp(0, 1).float().cpu().numpy() if change else None
    return _Scored(batch, classes.to(torch.uint8).cpu().numpy(), p)


def _update_metrics(metrics: ChangeMetrics, scored: _Scored, ignore_index: int) -> None:
    """Score the kept centres against the truth (in the model's thread: torch stays in one thread)."""
    for k, w in enumerate(scored.batch.windows):
        truth, valid = scored.batch.truth[k], scored.batch.valid[k]
        if truth is None:
            continue
        truth[~valid] = ignore_index
        pred = np.where(valid, scored.classes[k][_centre(w)], 0)
        metrics.update(torch.from_numpy(pred).long(), torch.from_numpy(truth).long())


def _predict_windows(
    predictor: Predictor, pair, opts: SceneOptions, outputs: _Outputs, metrics: ChangeMetrics, stats: dict
) -> int:
    """Stream every window through the model, reading ahead and writing behind in
    background threads (bounded queues); returns the window count."""
    windows, step = _windows_of(predictor, pair.height, pair.width)
    # The model's stored operating point for a binary model (argmax when it has none).
    cut = predictor.threshold_for()
    stats["threshold"] = cut
    batches = _read_batches(pair, windows, step, opts, predictor.num_classes, stats)
    with (
        Prefetch(batches, depth=PREFETCH, name="scene-read") as reads,
        Sink(outputs.write_batch, depth=PREFETCH, name="scene-write") as sink,
    ):
        pending = iter(reads)
        while True:
            started = time.perf_counter()
            batch = next(pending, None)
            stats["read_wait_s"] += time.perf_counter() - started
            if batch is None:
                break
            started = time.perf_counter()
            scored = _score_batch(predictor, batch, cut, change=outputs.prob is not None)
            _update_metrics(metrics, scored, opts.ignore_index)
            stats["model_s"] += time.perf_counter() - started
            started = time.perf_counter()
            sink.put(scored)
            stats["write_wait_s"] += time.perf_counter() - started
        started = time.perf_counter()
        sink.close()
        stats["write_wait_s"] += time.perf_counter() - started
    return len(windows)


def _publish(local: Path, uri: str, storage_options) -> None:
    """Move a finished local file to its output URI (a rename locally, one upload to S3)."""
    if storage.is_remote(uri):
        storage.write_bytes(uri, local.read_bytes(), storage_options)
        return
    Path(uri).parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(local), uri)


def score_scene(predictor: Predictor, row: dict, *, output_uri: str, opts: SceneOptions, storage_options=None) -> dict:
    """Score one georeferenced pair into ``OUTPUT/masks|probabilities/<id>.tif`` and
    ``OUTPUT/regions/<id>.geojson``; returns the result row's fields (``stats``: timings)."""
    pid = row["pair_id"]
    stats: dict[str, Any] = {
        "read_s": 0.0,
        "read_wait_s": 0.0,
        "model_s": 0.0,
        "write_s": 0.0,
        "write_wait_s": 0.0,
        "cog_s": 0.0,
        "regions_s": 0.0,
        "valid": 0,
        "changed": 0,
    }
    metrics = ChangeMetrics(num_classes=predictor.num_classes, ignore_index=opts.ignore_index)
    import rasterio  # lazy: GDAL, see the module note

    # GDAL's block cache defaults to 5 % of RAM and would grow with the scene: cap it.
    with (
        rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB),
        tempfile.TemporaryDirectory(prefix="changeseg-scene-") as tmp,
        open_scene_pair(row, opts.raster, storage_options) as pair,
    ):
        folder = Path(tmp)
        outputs = _Outputs(pair, folder, opts, stats)
        try:
            tiles = _predict_windows(predictor, pair, opts, outputs, metrics, stats)
        finally:
            outputs.close()
        crs, bounds = (pair.t0.crs.to_string() if pair.t0.crs else ""), scene_bounds(pair.t0)
        height, width, has_truth = pair.height, pair.width, pair.mask is not None
        started = time.perf_counter()
        to_cog(outputs.mask_path, folder / "mask.cog.tif")
        if outputs.prob is not None:
            to_cog(outputs.prob_path, folder / "probability.cog.tif", resampling="average")
        stats["cog_s"] = time.perf_counter() - started
        started = time.perf_counter()
        regions = write_regions(
            folder / "mask.cog.tif",
            folder / "regions.geojson",
            crs=opts.regions_crs,
            simplify=opts.regions_simplify,
            min_area=opts.min_region_area,
            max_regions=opts.max_regions,
        )
        stats["regions_s"] = time.perf_counter() - started
        mask_uri = storage.join(output_uri, "masks", pair_file_name(pid, ".tif"))
        regions_uri = storage.join(output_uri, "regions", pair_file_name(pid, ".geojson"))
        _publish(folder / "mask.cog.tif", mask_uri, storage_options)
        _publish(folder / "regions.geojson", regions_uri, storage_options)
        prob_uri = None
        if outputs.prob is not None:
            prob_uri = storage.join(output_uri, "probabilities", pair_file_name(pid, ".tif"))
            _publish(folder / "probability.cog.tif", prob_uri, storage_options)
    return dict(
        status="ok",
        error="",
        height=height,
        width=width,
        tiles=tiles,
        changed_pixels=stats["changed"],
        changed_fraction=stats["changed"] / max(stats["valid"], 1),
        regions_total=regions.count,
        regions=json.dumps(regions.top()),
        mask_uri=mask_uri,
        probability_uri=prob_uri,
        regions_uri=regions_uri,
        crs=crs,
        bounds=bounds,
        threshold=stats.pop("threshold"),
        metrics_state=metrics.state().tolist() if has_truth else None,
        stats={k: round(v, 4) if isinstance(v, float) else v for k, v in stats.items()},
    )
