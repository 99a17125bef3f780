"""Offline batch scoring of pair archives with Ray Data.

Pairs stream from storage through three stages: read + decode (Ray tasks), the model
(an actor pool, ``score.num_gpus`` per actor) and, on the driver, a writer that appends
one small result row per pair to Parquet files under ``OUTPUT/results/``. Masks (and
optionally probability maps) are written by the actors as PNGs under ``OUTPUT/masks/``
(``OUTPUT/probabilities/``) with the pair id as file name.

Nothing lost: every input pair ends as exactly one row, ``ok`` or ``error`` with the
reason. A result file is written in one piece (a local rename, or a single S3 object),
so a killed job leaves whole files only; started again with the same output, the job
skips the pair ids already in them and scores the rest.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from changeseg import storage
from changeseg.config import Config
from changeseg.data.records import PairRecord

log = logging.getLogger(__name__)

__all__ = ["RESULT_SCHEMA", "ScoreSummary", "batch_score", "read_results"]

RESULT_SCHEMA = pa.schema(
    [
        ("pair_id", pa.string()),
        ("status", pa.string()),  # "ok" or "error"
        ("error", pa.string()),
        ("model_name", pa.string()),
        ("model_version", pa.string()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("tiles", pa.int32()),
        ("changed_fraction", pa.float64()),
        ("changed_pixels", pa.int64()),
        ("regions_total", pa.int32()),
        ("regions", pa.string()),  # JSON list of {"class", "bbox": [x0, y0, x1, y1], "area"}
        ("mask_uri", pa.string()),
        ("probability_uri", pa.string()),
        ("decode_ms", pa.float64()),
        ("inference_ms", pa.float64()),
        ("scored_at", pa.float64()),  # Unix time the pair's model call finished
        ("has_truth", pa.bool_()),
        ("metrics_state", pa.list_(pa.float64())),  # ChangeMetrics.state() of this pair
        # Georeferenced scenes (COG masks, GeoJSON regions): t0's CRS and bounds in it.
        ("crs", pa.string()),
        ("bounds", pa.list_(pa.float64())),
        ("regions_uri", pa.string()),
        ("threshold", pa.float64()),  # the P(change) cut of a binary model; null: argmax
    ]
)


@dataclass
class ScoreSummary:
    """What a scoring job did; also written to ``OUTPUT/summary.json``."""

    model: dict[str, Any]
    input: str
    output: str
    pairs_total: int
    already_done: int
    scored_now: int
    ok: int
    errors: int
    seconds: float
    pairs_per_second: float
    results: str
    masks: str
    # Pairs after the first model batch over the time from its end to the last one's:
    # the pipeline's rate once a model replica is up (start-up excluded).
    steady_pairs_per_second: float | None = None
    metrics: dict[str, float] | None = None
    error_examples: list[list[str]] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


# --- inputs --------------------------------------------------------------------------


def load_input_records(input_uri: str, cfg: Config, *, split: str | None = None) -> tuple[list[PairRecord], list[tuple[str, str]]]:
    """Records of a manifest, shards or a dataset layout at any URI, plus incomplete pairs."""
    from changeseg.data.layouts import scan_dataset

    scan = scan_dataset(
        input_uri,
        layout=cfg.data.layout,
        split=split or "test",
        fold=cfg.data.fold,
        num_classes=cfg.model.resolved_num_classes(),
        require_masks=False,
        storage_options=cfg.storage,
    )
    from changeseg.inference.naming import UnsafePairId, check_pair_id

    records, problems = [], list(scan.problems)
    for record in scan.records:
        if split is not None and record.split != split:
            continue
        try:
            check_pair_id(record.pair_id)
            records.append(record)
        except UnsafePairId as err:  # ids name output files: never let one escape the output folder
            problems.append((str(record.pair_id), str(err)))
    seen: set[str] = set()
    duplicated = sorted({r.pair_id for r in records if r.pair_id in seen or seen.add(r.pair_id)})
    if duplicated:
        raise ValueError(f"{input_uri}: pair ids must be unique, repeated: {', '.join(duplicated[:5])}")
    return records, problems


def read_results(output_uri: str, cfg: Config, *, columns: list[str] | None = None):
    """Yield the result tables already under ``OUTPUT/results`` (one per file)."""
    results = storage.join(output_uri, "results")
    if not storage.is_dir(results, cfg.storage):
        return
    fs, _ = storage.filesystem_for(results, cfg.storage)
    for uri in _result_files(results, cfg):
        path = storage.filesystem_for(uri, cfg.storage)[1]
        yield pq.read_table(path, filesystem=fs, columns=columns)


def _result_files(results_uri: str, cfg: Config) -> list[str]:
    """Whole result files: ``*.parquet`` not starting with ``.`` or ``_`` (temporary files
    of an interrupted flush start with ``.tmp-``)."""
    names = []
    for uri in sorted(storage.list_files(results_uri, cfg.storage)):
        base = uri.rstrip("/").rsplit("/", 1)[-1]
        if base.endswith(".parquet") and not base.startswith((".", "_")):
            names.append(uri)
    return names


def drop_error_rows(output_uri: str, cfg: Config) -> int:
    """Remove the ``error`` rows from the result files (each file rewritten whole), so those
    pairs are scored again; returns how many were removed."""
    results = storage.join(output_uri, "results")
    if not storage.is_dir(results, cfg.storage):
        return 0
    removed = 0
    for uri in _result_files(results, cfg):
        fs, path = storage.filesystem_for(uri, cfg.storage)
        table = pq.read_table(path, filesystem=fs)
        keep = [s == "ok" for s in table.column("status").to_pylist()]
        if all(keep):
            continue
        removed += keep.count(False)
        kept = table.filter(pa.array(keep))
        if kept.num_rows == 0:
            fs.delete_file(path)
        else:
            _write_whole(kept, uri, cfg)
    return removed


# --- the model stage ---------------------------------------------------------------


class _Decode:
    """Ray Data map: read and decode one pair; a failure becomes an error row, not a crash."""

    def __init__(self, load: dict) -> None:
        self.load = load

    def __call__(self, row: dict) -> dict:
        from changeseg.data.decode import load_pair

        start = time.perf_counter()
        empty = np.zeros((0, 0, 3), np.uint8)
        out = {"pair_id": row["pair_id"], "error": "", "t0": empty, "t1": empty,
               "mask": np.zeros((0, 0), np.uint8), "has_truth": False, "scene": ""}
        try:
            if _scene_row(row, self.load, out):  # read window by window by the scorer
                out["decode_ms"] = (time.perf_counter() - start) * 1000
                return out
            sample = load_pair(row, **self.load)
            out.update(t0=sample["t0"], t1=sample["t1"])
            if "mask" in sample:
                out.update(mask=sample["mask"], has_truth=True)
        except Exception as err:  # unreadable, undecodable, sizes differ, bad mask values
            out["error"] = f"{type(err).__name__}: {err}"
        out["decode_ms"] = (time.perf_counter() - start) * 1000
        return out


def _scene_row(row: dict, load: dict, out: dict) -> bool:
    """Mark a georeferenced raster pair for window-by-window scoring (its record as JSON)."""
    from changeseg.inference.scene import is_scene

    if not is_scene(row, load.get("storage_options")):
        return False
    keep = ("pair_id", "t0", "t1", "mask", "mask_encoding", "shard", "shard_row")
    out["scene"] = json.dumps({k: row.get(k) for k in keep})
    out["has_truth"] = bool(row.get("mask"))
    return True


class _Scorer:
    """Actor: one model replica. Predicts, writes mask PNGs, returns one result row per pair."""

    def __init__(self, *, checkpoint: list, info: dict, cfg_json: dict, output_uri: str) -> None:
        import ray
        import torch

        from changeseg.inference.predictor import Predictor

        # The weights travel once through the object store (a ref in a list is not auto-resolved);
        # the driver holds that ref for the whole job, so actors started later still find it.
        weights = ray.get(checkpoint[0])
        self.cfg = Config.model_validate(cfg_json)
        self.output = output_uri
        self.info = info
        score = self.cfg.score
        device = "cuda" if score.num_gpus > 0 and torch.cuda.is_available() else "cpu"
        if device == "cpu":
            # One intra-op thread per CPU the actor reserved (Ray's default is one in total).
            torch.set_num_threads(max(1, int(score.cpus_per_actor)))
        self.predictor = Predictor.from_bytes(
            weights["meta"], weights["weights"], info=info, device=device, precision=score.precision,
            channels_last=score.channels_last, tile_size=score.tile_size, tile_overlap=score.tile_overlap,
            batch_size=score.batch_size, tta=score.tta, threshold=score.threshold,
        )
        self.num_classes = self.predictor.num_classes

    def __call__(self, batch: dict) -> pa.Table:
        n = len(batch["pair_id"])
        good = [i for i in range(n) if not batch["error"][i] and not batch["scene"][i]]
        errors = {i: str(batch["error"][i]) for i in range(n) if batch["error"][i]}
        start = time.perf_counter()
        predicted = self.predictor.predict_pairs([batch["t0"][i] for i in good], [batch["t1"][i] for i in good],
                                                 change=self.cfg.score.write_probabilities)
        per_pair_ms = (time.perf_counter() - start) * 1000 / max(len(good), 1)
        results = dict(zip(good, predicted))
        scored_at = time.time()
        rows: list[dict] = []
        for i in range(n):
            row = {name: None for name in RESULT_SCHEMA.names}
            row.update(pair_id=str(batch["pair_id"][i]), scored_at=scored_at, model_name=str(self.info.get("name")),
                       model_version=str(self.info.get("version") or ""), decode_ms=float(batch["decode_ms"][i]),
                       has_truth=bool(batch["has_truth"][i]))
            result = results.get(i)
            if isinstance(result, Exception):  # a failed model call fails its pairs, not the job
                errors[i] = f"{type(result).__name__}: {result}"
            if i not in errors:
                try:
                    if batch["scene"][i]:
                        row.update(self._scene(str(batch["scene"][i])))
                    else:
                        row.update(self._outputs(row["pair_id"], result, batch["mask"][i] if row["has_truth"] else None))
                        row["inference_ms"] = per_pair_ms
                except Exception as err:
                    errors[i] = f"{type(err).__name__}: {err}"
            if i in errors:
                row.update(status="error", error=errors[i])
            rows.append(row)
        return pa.Table.from_pylist(rows, schema=RESULT_SCHEMA)

    def _scene(self, scene_json: str) -> dict:
        """Score a georeferenced pair window by window into COGs and GeoJSON regions."""
        from changeseg.inference.scene import SceneOptions, score_scene

        started = time.perf_counter()
        fields = score_scene(self.predictor, json.loads(scene_json), output_uri=self.output,
                             opts=SceneOptions.from_config(self.cfg), storage_options=self.cfg.storage)
        fields.pop("stats", None)
        return {**fields, "inference_ms": (time.perf_counter() - started) * 1000}

    def _outputs(self, pid: str, result, truth) -> dict:
        """Write the pair's mask (and probability) PNGs; the row's fields for an ok pair."""
        import torch

        from changeseg.inference.naming import pair_file_name
        from changeseg.inference.regions import summarize_mask
        from changeseg.metrics import ChangeMetrics

        score = self.cfg.score
        pred = result.mask
        summary = summarize_mask(pred, ignore_index=None, min_area=score.min_region_area, max_regions=score.max_regions)
        mask_uri = storage.join(self.output, "masks", pair_file_name(pid, ".png"))
        # 0/255 for binary change so the PNG is viewable; class ids otherwise.
        storage.write_bytes(mask_uri, _png(pred * 255 if self.num_classes == 2 else pred), self.cfg.storage)
        prob_uri = None
        if result.change is not None:
            prob_uri = storage.join(self.output, "probabilities", pair_file_name(pid, ".png"))
            change8 = ((result.change.astype(np.uint32) + 128) // 257).astype(np.uint8)  # P(any change) x 255
            storage.write_bytes(prob_uri, _png(change8), self.cfg.storage)
        state = None
        if truth is not None:
            metrics = ChangeMetrics(num_classes=self.num_classes, ignore_index=self.cfg.data.ignore_index)
            metrics.update(torch.from_numpy(pred).long(), torch.from_numpy(np.asarray(truth)).long())
            state = metrics.state().tolist()
        return dict(status="ok", error="", height=pred.shape[0], width=pred.shape[1], tiles=result.tiles,
                    changed_fraction=summary["changed_fraction"], changed_pixels=summary["changed_pixels"],
                    regions_total=summary["regions_total"], regions=json.dumps(summary["regions"]),
                    mask_uri=mask_uri, probability_uri=prob_uri, metrics_state=state, threshold=result.threshold)


# --- the driver ----------------------------------------------------------------------


def _png(array: np.ndarray) -> bytes:
    """PNG with fast compression: masks compress well anyway, and encoding sits on the model's path."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


class _ResultWriter:
    """Buffers result rows and writes each ``flush_rows`` of them as one new Parquet file."""

    def __init__(self, output_uri: str, cfg: Config) -> None:
        self.dir = storage.join(output_uri, "results")
        self.cfg = cfg
        self.buffer: list[dict] = []
        self.files = 0
        self.prefix = f"part-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"

    def add(self, rows: list[dict]) -> None:
        self.buffer.extend(rows)
        if len(self.buffer) >= self.cfg.score.flush_rows:
            self.flush()

    def flush(self) -> None:
        if not self.buffer:
            return
        table = pa.Table.from_pylist(self.buffer, schema=RESULT_SCHEMA)
        _write_whole(table, storage.join(self.dir, f"{self.prefix}-{self.files:05d}.parquet"), self.cfg)
        self.files += 1
        self.buffer = []


def _write_whole(table: pa.Table, uri: str, cfg: Config) -> None:
    """Write a Parquet file that appears whole or not at all (readers skip ``.tmp-*``)."""
    if storage.is_remote(uri):
        fs, path = storage.filesystem_for(uri, cfg.storage)
        pq.write_table(table, path, filesystem=fs)  # an S3 object appears whole or not at all
        return
    Path(uri).parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=Path(uri).parent, prefix=".tmp-", suffix=".parquet")
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, uri)  # atomic: a killed job never leaves half a file under a result name
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _resolve_model(model_uri: str, cfg: Config) -> tuple[dict, dict]:
    """Checkpoint bytes (model.json + safetensors) and registry info, resolved once on the driver."""
    from changeseg.inference.predictor import resolve_model_dir
    from changeseg.models.weights import META_FILE, WEIGHTS_FILE

    with tempfile.TemporaryDirectory(prefix="changeseg-score-") as tmp:
        directory, info = resolve_model_dir(model_uri, tracking_uri=cfg.tracking.tracking_uri,
                                            storage_options=cfg.storage, download_dir=tmp)
        meta = (directory / META_FILE).read_text()
        weights = (directory / WEIGHTS_FILE).read_bytes()
    return {"meta": meta, "weights": weights}, {k: v for k, v in info.items() if k != "metadata"}


def batch_score(
    cfg: Config, *, model_uri: str, input_uri: str, output_uri: str, split: str | None = None, retry_errors: bool = False
) -> ScoreSummary:
    """Score every pair of ``input_uri`` with ``model_uri`` into ``output_uri``; resumable.

    ``retry_errors``: first remove the ``error`` rows of earlier runs (transient failures:
    storage timeouts, a lost actor) from the result files, so those pairs are scored again.
    """
    started = time.perf_counter()
    if not storage.is_remote(output_uri):
        output_uri = str(Path(output_uri.removeprefix("file://")).expanduser().resolve())
    checkpoint, info = _resolve_model(model_uri, cfg)
    records, problems = load_input_records(input_uri, cfg, split=split)
    total = len(records) + len(problems)
    if total == 0:
        raise ValueError(f"no pairs found in {input_uri}")
    if retry_errors:
        log.info("retrying: %d error rows removed from %s", drop_error_rows(output_uri, cfg), output_uri)

    done: set[str] = set()
    for table in read_results(output_uri, cfg, columns=["pair_id"]):
        done.update(table.column("pair_id").to_pylist())
    todo = [r for r in records if r.pair_id not in done]
    writer = _ResultWriter(output_uri, cfg)
    model_fields = {"model_name": str(info.get("name")), "model_version": str(info.get("version") or "")}
    problem_rows = [
        {**{n: None for n in RESULT_SCHEMA.names}, **model_fields, "pair_id": pid, "status": "error", "error": why, "has_truth": False}
        for pid, why in problems if pid not in done
    ]
    writer.add(problem_rows)
    log.info("scoring %d pairs of %s with %s (%d already in %s)", len(todo), input_uri, model_uri, len(done), output_uri)
    error_examples = [[r["pair_id"], r["error"]] for r in problem_rows[:5]]
    steady = _run_pipeline(cfg, todo, checkpoint, info, output_uri, writer, error_examples, started) if todo else None
    writer.flush()

    ok_all, err_all, rows_all, metrics = _totals(output_uri, cfg)
    seconds = time.perf_counter() - started
    scored_now = len(todo) + len(problem_rows)
    summary = ScoreSummary(
        model=info, input=input_uri, output=output_uri, pairs_total=total, already_done=len(done),
        scored_now=scored_now, ok=ok_all, errors=err_all, seconds=round(seconds, 3),
        pairs_per_second=round(scored_now / seconds, 3) if seconds > 0 else 0.0,
        results=storage.join(output_uri, "results"), masks=storage.join(output_uri, "masks"),
        steady_pairs_per_second=round(steady, 3) if steady else None,
        metrics=metrics.compute() if metrics is not None else None, error_examples=error_examples[:5],
    )
    if rows_all != total:
        log.warning("%s holds %d result rows for %d input pairs", summary.results, rows_all, total)
    storage.write_bytes(storage.join(output_uri, "summary.json"), summary.to_json().encode(), cfg.storage)
    return summary


def _run_pipeline(cfg: Config, todo: list, checkpoint: dict, info: dict, output_uri: str, writer: "_ResultWriter",
                  error_examples: list, started: float) -> float | None:
    """Stream ``todo`` through decoding and the actor pool into ``writer``; returns the steady rate."""
    import ray
    import ray.data

    from changeseg.data.pipeline import load_options, source_dataset
    from changeseg.runtime import init_ray

    init_ray(cfg)
    ray.data.DataContext.get_current().enable_progress_bars = False
    score = cfg.score
    # Held here for the whole job: actors the pool starts late (scaling up, restarts)
    # resolve it after the first ones, and the object must still exist then.
    weights_ref = ray.put(checkpoint)
    # Decoding runs in tasks of their own (a resource shape unlike the actors', so Ray
    # Data does not fuse the two), overlapping with the model instead of queueing behind it.
    load = {**load_options(cfg), "max_pixels": score.max_pixels}
    ds = source_dataset(todo, cfg).map(_Decode(load), num_cpus=0.5)
    ds = ds.map_batches(
        _Scorer,
        fn_constructor_kwargs={"checkpoint": [weights_ref], "info": info,
                               "cfg_json": cfg.model_dump(mode="json"), "output_uri": output_uri},
        batch_size=score.batch_size,
        compute=ray.data.ActorPoolStrategy(min_size=score.min_actors, max_size=score.max_actors),
        num_gpus=score.num_gpus,
        num_cpus=score.cpus_per_actor,
        batch_format="numpy",
        zero_copy_batch=True,
    )
    last_report = time.perf_counter()
    scored = errors = 0
    stamps: list[float] = []
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        rows = batch.to_pylist()
        stamps += [r["scored_at"] for r in rows if r["scored_at"]]
        writer.add(rows)
        scored += len(rows)
        for row in rows:
            if row["status"] != "ok":
                errors += 1
                error_examples.append([row["pair_id"], row["error"]])
        now = time.perf_counter()
        if now - last_report >= score.progress_seconds or scored == len(todo):
            rate = scored / max(now - started, 1e-9)
            eta = (len(todo) - scored) / rate if rate > 0 else float("inf")
            print(f"[score] {scored}/{len(todo)} pairs, {rate:.2f} pairs/s, eta {eta:.0f} s, errors {errors}", flush=True)
            last_report = now
    del weights_ref  # the job is over; the object store may free the weights
    stamps.sort()
    first_batch = stamps.count(stamps[0]) if stamps else 0
    if len(stamps) > first_batch and stamps[-1] > stamps[0]:
        return (len(stamps) - first_batch) / (stamps[-1] - stamps[0])
    return None


def _totals(output_uri: str, cfg: Config):
    """ok, error and row counts and merged metrics over every result file (earlier runs included)."""
    import torch

    from changeseg.metrics import ChangeMetrics

    metrics = None
    ok_all = err_all = rows_all = 0
    for table in read_results(output_uri, cfg, columns=["status", "metrics_state"]):
        statuses = table.column("status").to_pylist()
        ok_all += statuses.count("ok")
        err_all += len(statuses) - statuses.count("ok")
        rows_all += len(statuses)
        for state in table.column("metrics_state").to_pylist():
            if state:
                m = ChangeMetrics.from_state(torch.tensor(state, dtype=torch.float64), ignore_index=cfg.data.ignore_index)
                if metrics is None:
                    metrics = m
                else:
                    metrics.merge(m)
    return ok_all, err_all, rows_all, metrics
