"""The Parquet manifest: one row per pair, the form every dataset layout becomes.

Columns: ``pair_id``, ``t0``, ``t1``, ``mask`` (URIs; mask may be null), ``split``,
``mask_encoding`` (null = the config's ``data.mask_values``) and ``metadata`` (a
string-to-string map). Relative paths in a hand-written manifest are taken relative to
the manifest's folder, so a manifest can travel with its images.
"""

from __future__ import annotations

import io
import posixpath

import pyarrow as pa
import pyarrow.parquet as pq

from changeseg import storage
from changeseg.config import StorageSection
from changeseg.data.records import PairRecord

SCHEMA = pa.schema(
    [
        pa.field("pair_id", pa.string(), nullable=False),
        pa.field("t0", pa.string(), nullable=False),
        pa.field("t1", pa.string(), nullable=False),
        pa.field("mask", pa.string()),
        pa.field("split", pa.string(), nullable=False),
        pa.field("mask_encoding", pa.string()),
        pa.field("metadata", pa.map_(pa.string(), pa.string())),
    ]
)
REQUIRED = ("pair_id", "t0", "t1")


def records_table(records: list[PairRecord]) -> pa.Table:
    return pa.table(
        {
            "pair_id": [r.pair_id for r in records],
            "t0": [r.t0 for r in records],
            "t1": [r.t1 for r in records],
            "mask": [r.mask for r in records],
            "split": [r.split for r in records],
            "mask_encoding": [r.mask_encoding for r in records],
            "metadata": [sorted(r.metadata.items()) for r in records],
        },
        schema=SCHEMA,
    )


def _absolute(path: str | None, base: str) -> str | None:
    if not path or "://" in path or path.startswith("/"):
        return path or None
    return storage.join(base, path) if storage.is_remote(base) else str(posixpath.normpath(posixpath.join(base, path)))


def records_from_table(table: pa.Table, *, base: str | None = None) -> list[PairRecord]:
    """Rows -> records; missing optional columns take their defaults."""
    missing = [c for c in REQUIRED if c not in table.column_names]
    if missing:
        raise ValueError(f"manifest lacks column(s) {', '.join(missing)}; it has {', '.join(table.column_names)}")
    columns = {name: table.column(name).to_pylist() for name in SCHEMA.names if name in table.column_names}
    n = table.num_rows
    out = []
    for i in range(n):
        meta = columns.get("metadata", [None] * n)[i]
        t0, t1, mask = columns["t0"][i], columns["t1"][i], columns.get("mask", [None] * n)[i]
        if base is not None:
            t0, t1, mask = _absolute(t0, base), _absolute(t1, base), _absolute(mask, base)
        out.append(
            PairRecord(
                pair_id=str(columns["pair_id"][i]),
                t0=t0,
                t1=t1,
                mask=mask,
                split=columns.get("split", ["train"] * n)[i] or "train",
                metadata=dict(meta or {}),
                mask_encoding=columns.get("mask_encoding", [None] * n)[i],
            )
        )
    ids = [r.pair_id for r in out]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise ValueError(f"manifest has duplicate pair ids: {', '.join(dup)}")
    return out


def write_manifest(records: list[PairRecord], uri: str, *, storage_options: StorageSection | None = None) -> str:
    """Write ``records`` as a Parquet manifest at ``uri`` (local or s3://); returns ``uri``."""
    buf = io.BytesIO()
    pq.write_table(records_table(records), buf, compression="zstd")
    storage.write_bytes(uri, buf.getvalue(), storage_options)
    return uri


def read_manifest(uri: str, *, storage_options: StorageSection | None = None) -> list[PairRecord]:
    if not storage.exists(uri, storage_options):
        raise FileNotFoundError(f"manifest not found: {uri}")
    fs, path = storage.filesystem_for(uri, storage_options)
    table = pq.read_table(path, filesystem=fs)
    base = posixpath.dirname(uri.rstrip("/")) if storage.is_remote(uri) else posixpath.dirname(path)
    return records_from_table(table, base=base)
