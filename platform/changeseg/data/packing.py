"""Packing pairs into shards (:mod:`changeseg.data.shards`): read every pair's files once,
optionally decode them to leave out bad pairs, and write ``part-NNNNN.parquet`` files.

Apart from the shard format and its readers because validating decodes pairs
(:mod:`changeseg.data.pairs`), and decoding reads shard rows.
"""

from __future__ import annotations

import io
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from changeseg import storage
from changeseg.config import StorageSection
from changeseg.data.manifest import records_table
from changeseg.data.pairs import load_pair
from changeseg.data.records import PairRecord
from changeseg.data.shards import DATA_COLUMNS, ROW_GROUP_SIZE, SHARD_GLOB_PREFIX

log = logging.getLogger(__name__)


class Progress:
    """A log line every ``every`` seconds and at the end: done/total, rate, what is left."""

    def __init__(self, total: int, what: str, *, every: float = 10.0):
        self.total, self.what, self.every = total, what, every
        self.done = 0
        self.started = self.last = time.perf_counter()

    def step(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self.last >= self.every or self.done == self.total:
            self.last = now
            rate = self.done / max(now - self.started, 1e-9)
            left = (self.total - self.done) / rate if rate else float("inf")
            log.info("%s: %d/%d (%.1f/s, %.0f s left)", self.what, self.done, self.total, rate, left)


@dataclass
class PackResult:
    shards: list[str]
    pairs: int
    bad: list[tuple[str, str]] = field(default_factory=list)


def _read_members(record: PairRecord, storage_options: StorageSection | None, validate: dict | None):
    """(record, {t0_data, t1_data, mask_data}) or (record, reason) when unreadable."""
    try:
        data = {
            "t0_data": storage.read_bytes(record.t0, storage_options),
            "t1_data": storage.read_bytes(record.t1, storage_options),
            "mask_data": storage.read_bytes(record.mask, storage_options) if record.mask else None,
        }
        if validate is not None:
            load_pair({**record.to_row(), **data}, storage_options=storage_options, **validate)
        return record, data
    except Exception as err:  # any unreadable pair is reported, never fatal here
        return record, f"{type(err).__name__}: {err}"


def pack_shards(
    records: list[PairRecord],
    out_uri: str,
    *,
    storage_options: StorageSection | None = None,
    pairs_per_shard: int = 256,
    validate: dict | None = None,
    threads: int = 16,
) -> PackResult:
    """Write ``records`` into ``out_uri/part-NNNNN.parquet``.

    Files are fetched with ``threads`` concurrent reads (object storage latency, not CPU,
    is the limit). ``validate``: keyword arguments of :func:`~changeseg.data.pairs.load_pair`
    (``mask_values``, ``num_classes``, ...) to decode every pair once and leave out bad ones;
    None packs the bytes unchecked. Bad pairs are returned with their reason.
    """
    if pairs_per_shard < 1:
        raise ValueError("pairs_per_shard must be >= 1")
    result = PackResult(shards=[], pairs=0)
    progress = Progress(len(records), "packing pairs")
    batch: list[tuple[PairRecord, dict]] = []

    def flush() -> None:
        if not batch:
            return
        table = records_table([r for r, _ in batch])
        for name in DATA_COLUMNS:
            table = table.append_column(pa.field(name, pa.binary()), pa.array([d[name] for _, d in batch], pa.binary()))
        buf = io.BytesIO()
        # Images are already compressed: no codec on the byte columns, small row groups.
        pq.write_table(table, buf, row_group_size=ROW_GROUP_SIZE, compression="none", use_dictionary=False)
        uri = storage.join(out_uri, f"{SHARD_GLOB_PREFIX}{len(result.shards):05d}.parquet")
        storage.write_bytes(uri, buf.getvalue(), storage_options)
        result.shards.append(uri)
        result.pairs += len(batch)
        batch.clear()

    with ThreadPoolExecutor(max_workers=threads) as pool:
        for record, data in pool.map(lambda r: _read_members(r, storage_options, validate), records):
            progress.step()
            if isinstance(data, str):
                log.warning("pair %s left out: %s", record.pair_id, data)
                result.bad.append((record.pair_id, data))
                continue
            batch.append((record, data))
            if len(batch) >= pairs_per_shard:
                flush()
        flush()
    return result
