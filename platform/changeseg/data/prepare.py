"""Scan a dataset in any layout and write its manifest and, optionally, packed shards."""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field

from changeseg import storage
from changeseg.config import StorageSection
from changeseg.data.layouts import scan_dataset
from changeseg.data.manifest import write_manifest
from changeseg.data.packing import PackResult, pack_shards
from changeseg.data.records import PairRecord

log = logging.getLogger(__name__)


@dataclass
class PrepareSummary:
    """What ``prepare_dataset`` found and wrote; ``skipped`` holds (pair id, reason)."""

    source: str
    layout: str
    pairs: int
    splits: dict[str, int]
    manifest: str | None
    shards: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0


def prepare_dataset(
    source: str,
    *,
    layout: str = "auto",
    manifest: str | None = None,
    shards: str | None = None,
    split: str = "train",
    fold: int = 0,
    num_classes: int = 2,
    mask_values: str = "binary",
    pairs_per_shard: int = 256,
    validate: bool = True,
    strict: bool = False,
    storage_options: StorageSection | None = None,
) -> PrepareSummary:
    """Scan ``source`` and write a manifest (``manifest`` URI) and/or shards (``shards`` folder).

    Pairs with a missing member are reported and left out; so are pairs that fail to
    decode when packing with ``validate`` (every pair is decoded once). ``strict`` makes
    either fatal, before anything is written for missing members. With both outputs, the
    manifest lists the pairs that went into the shards.
    """
    started = time.perf_counter()
    scan = scan_dataset(
        source, layout=layout, split=split, fold=fold, num_classes=num_classes, storage_options=storage_options
    )
    log.info("%s: %d pair(s) in layout '%s', %d incomplete", source, len(scan.records), scan.layout, len(scan.problems))
    skipped = list(scan.problems)
    if strict and skipped:
        raise ValueError(f"{len(skipped)} bad pair(s) in {source}: " + "; ".join(f"{p}: {r}" for p, r in skipped[:10]))
    records = scan.records
    written: list[str] = []
    if shards:
        check = {"mask_values": mask_values, "num_classes": num_classes} if validate else None
        packed = write_shards(
            records,
            shards,
            source=source,
            pairs_per_shard=pairs_per_shard,
            validate=check,
            strict=strict,
            storage_options=storage_options,
        )
        skipped += packed.bad
        bad = {pid for pid, _ in packed.bad}
        records = [r for r in records if r.pair_id not in bad]
        written = packed.shards
    if manifest:
        write_manifest(records, manifest, storage_options=storage_options)
    for pid, why in skipped:
        log.warning("pair %s left out: %s", pid, why)
    return PrepareSummary(
        source=source,
        layout=scan.layout,
        pairs=len(records),
        splits=dict(sorted(Counter(r.split for r in records).items())),
        manifest=manifest,
        shards=written,
        skipped=skipped,
        seconds=round(time.perf_counter() - started, 3),
    )


def write_shards(
    records: list[PairRecord],
    shards: str,
    *,
    source: str,
    pairs_per_shard: int,
    validate: dict | None,
    strict: bool,
    storage_options: StorageSection | None,
) -> PackResult:
    """Pack ``records`` into the empty (or new) folder ``shards``; ``strict``: a bad pair is an error."""
    if storage.is_dir(shards, storage_options) and storage.list_files(shards, storage_options):
        # Old shards beside new ones would be read as one dataset.
        raise FileExistsError(f"shards folder is not empty: {shards}")
    packed = pack_shards(
        records, shards, storage_options=storage_options, pairs_per_shard=pairs_per_shard, validate=validate
    )
    if strict and packed.bad:
        raise ValueError(
            f"{len(packed.bad)} bad pair(s) in {source} (shards already written to {shards}): "
            + "; ".join(f"{p}: {r}" for p, r in packed.bad[:10])
        )
    return packed
