"""Packed shards: Parquet files holding the encoded image bytes of many pairs; reading them.

Object storage serves a few large objects far faster than many small ones, so a dataset
can be packed once (``changeseg prepare --shards``, :mod:`changeseg.data.packing`) into
``part-NNNNN.parquet`` files with the manifest columns plus ``t0_data``, ``t1_data`` and
``mask_data`` (the files' bytes, unchanged: no re-encoding). Small row groups let one pair
be read on its own (validation), while training streams whole files through Ray Data.
"""

from __future__ import annotations

import posixpath
from dataclasses import replace

import pyarrow.parquet as pq

from changeseg import storage
from changeseg.config import StorageSection
from changeseg.data.manifest import SCHEMA, records_from_table
from changeseg.data.records import PairRecord

DATA_COLUMNS = ("t0_data", "t1_data", "mask_data")
SHARD_GLOB_PREFIX = "part-"
ROW_GROUP_SIZE = 8


def list_shards(uri: str, storage_options: StorageSection | None = None) -> list[str]:
    """The shard files of a shards folder (or ``[uri]`` for one shard file)."""
    if uri.endswith(".parquet"):
        return [uri]
    return [
        u
        for u in storage.list_files(uri, storage_options)
        if posixpath.basename(u).startswith(SHARD_GLOB_PREFIX) and u.endswith(".parquet")
    ]


def is_shard_file(uri: str, storage_options: StorageSection | None = None) -> bool:
    fs, path = storage.filesystem_for(uri, storage_options)
    return "t0_data" in pq.read_schema(path, filesystem=fs).names


def read_shard_records(uri: str, storage_options: StorageSection | None = None) -> list[PairRecord]:
    """Records of every pair in a shards folder, each pointing at its shard and row.

    Only the small columns are read; the image bytes stay in storage.
    """
    shards = list_shards(uri, storage_options)
    if not shards:
        raise FileNotFoundError(f"no {SHARD_GLOB_PREFIX}*.parquet shards in {uri}")
    records = []
    for shard in shards:
        fs, path = storage.filesystem_for(shard, storage_options)
        table = pq.read_table(path, filesystem=fs, columns=[c for c in SCHEMA.names])
        records += [replace(r, shard=shard, shard_row=i) for i, r in enumerate(records_from_table(table))]
    ids = [r.pair_id for r in records]
    if len(set(ids)) != len(ids):
        raise ValueError(f"shards in {uri} hold duplicate pair ids")
    return records


def read_shard_member(shard: str, row: int, key: str, storage_options: StorageSection | None = None) -> bytes | None:
    """The bytes of ``key`` (t0, t1, mask) of row ``row``, reading one row group only."""
    fs, path = storage.filesystem_for(shard, storage_options)
    with fs.open_input_file(path) as handle:
        pf = pq.ParquetFile(handle)
        start = 0
        for group in range(pf.num_row_groups):
            size = pf.metadata.row_group(group).num_rows
            if row < start + size:
                column = pf.read_row_group(group, columns=[f"{key}_data"]).column(0)
                return column[row - start].as_py()
            start += size
    raise IndexError(f"shard {shard} has no row {row}")
