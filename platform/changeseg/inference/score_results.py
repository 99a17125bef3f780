"""The result store of batch scoring: one small row per pair in whole Parquet files.

Rows are written only by the driver, each ``flush_rows`` of them as a new file that
appears whole or not at all (a local rename, or a single S3 object), so a killed job
leaves whole files only and a restart skips the pair ids found in them.
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from changeseg import storage
from changeseg.config import Config
from changeseg.metrics import ChangeMetrics

__all__ = ["RESULT_SCHEMA", "ResultWriter", "drop_error_rows", "read_results", "result_totals", "write_whole"]

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


def read_results(output_uri: str, cfg: Config, *, columns: list[str] | None = None):
    """Yield the result tables already under ``OUTPUT/results`` (one per file)."""
    results = storage.join(output_uri, "results")
    if not storage.is_dir(results, cfg.storage):
        return
    fs, _ = storage.filesystem_for(results, cfg.storage)
    for uri in result_files(results, cfg):
        path = storage.filesystem_for(uri, cfg.storage)[1]
        yield pq.read_table(path, filesystem=fs, columns=columns)


def result_files(results_uri: str, cfg: Config) -> list[str]:
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
    for uri in result_files(results, cfg):
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
            write_whole(kept, uri, cfg)
    return removed


class ResultWriter:
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
        write_whole(table, storage.join(self.dir, f"{self.prefix}-{self.files:05d}.parquet"), self.cfg)
        self.files += 1
        self.buffer = []


def write_whole(table: pa.Table, uri: str, cfg: Config) -> None:
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


def result_totals(output_uri: str, cfg: Config):
    """ok, error and row counts and merged metrics over every result file (earlier runs included)."""
    metrics = None
    ok_all = err_all = rows_all = 0
    for table in read_results(output_uri, cfg, columns=["status", "metrics_state"]):
        statuses = table.column("status").to_pylist()
        ok_all += statuses.count("ok")
        err_all += len(statuses) - statuses.count("ok")
        rows_all += len(statuses)
        for state in table.column("metrics_state").to_pylist():
            if state:
                m = ChangeMetrics.from_state(
                    torch.tensor(state, dtype=torch.float64), ignore_index=cfg.data.ignore_index
                )
                if metrics is None:
                    metrics = m
                else:
                    metrics.merge(m)
    return ok_all, err_all, rows_all, metrics
