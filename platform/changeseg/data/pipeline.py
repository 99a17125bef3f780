"""Ray Data pipelines: pair records in, decoded (and augmented) arrays out.

Records come from any dataset layout, a manifest or packed shards (:func:`plan_datasets`).
Loose files are read by URI inside the Ray Data map; shards are read whole, one task
per shard (large sequential reads), and decoded from their byte columns. Bad pairs
are found on the driver where it is cheap (a reader sees a missing file in its listing)
and by one decoding pass before training (:func:`screen_plan`), which also counts the
change pixels for the class weights; the training map still drops, with a log line, a
pair that fails later.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from changeseg import storage
from changeseg.config import Config
from changeseg.data.layouts import ScanResult, scan_dataset
from changeseg.data.pairs import load_pair
from changeseg.data.raster import count_mask_pixels, is_raster_row, raster_options
from changeseg.data.records import PairRecord, scan_folder, split_records
from changeseg.data.synthetic import write_folder
from changeseg.data.transforms import augment_pair

log = logging.getLogger(__name__)

# Row columns handed to Ray Data and the training loop; metadata stays on the driver.
_ROW_KEYS = ("pair_id", "t0", "t1", "mask", "mask_encoding", "shard", "shard_row")
# Shard columns the loader needs (the image bytes, not the provenance URIs).
_SHARD_COLUMNS = ["pair_id", "mask", "mask_encoding", "t0_data", "t1_data", "mask_data"]


@dataclass
class DatasetPlan:
    """The records a run trains and validates on, where they came from, and what was left out."""

    train: list[PairRecord]
    val: list[PairRecord]
    source: str
    layout: str = "folder"
    # (pair id, reason) of every pair left out, at plan time or by screen_plan.
    skipped: list[tuple[str, str]] = field(default_factory=list)
    # (changed, unchanged) pixels over the training masks, once screen_plan has run.
    train_pixels: tuple[int, int] | None = None


def synthetic_root(cfg: Config) -> str:
    if cfg.data.synthetic.output_dir:
        return cfg.data.synthetic.output_dir
    syn = cfg.data.synthetic
    return str(Path(".changeseg") / "synthetic" / f"seed{syn.seed}-{syn.size}px")


def ensure_synthetic(root: str, *, count: int, seed: int, size: int) -> str:
    """Write ``count`` synthetic pairs under ``root`` unless they are already there."""
    local = Path(root)
    if local.is_dir():
        if len(list((local / "mask").glob("*.png"))) == count:
            return root
        shutil.rmtree(local)  # written for another count: start over rather than mix
    write_folder(local, count=count, seed=seed, size=size)
    return root


def _scan(uri: str, cfg: Config) -> ScanResult:
    return scan_dataset(
        uri,
        layout=cfg.data.layout,
        split=cfg.data.train_split,
        fold=cfg.data.fold,
        num_classes=cfg.model.resolved_num_classes(),
        storage_options=cfg.storage,
    )


def scan_records(uri: str, cfg: Config) -> list[PairRecord]:
    """The complete pairs of the dataset at ``uri`` read as ``data.*`` says; incomplete ones
    are reported like the training data's (``data.strict``: an error)."""
    scan = _scan(uri, cfg)
    report_skipped(list(scan.problems), strict=cfg.data.strict, source=uri)
    return scan.records


def _with_split(records: list[PairRecord], split: str) -> list[PairRecord]:
    """The records of ``split``, or all of them when none carries that split."""
    chosen = [r for r in records if r.split == split]
    return chosen if chosen else list(records)


def report_skipped(skipped: list[tuple[str, str]], *, strict: bool, source: str) -> None:
    """Log each left-out pair; with ``strict`` they are an error instead."""
    if not skipped:
        return
    if strict:
        shown = "; ".join(f"{pid}: {why}" for pid, why in skipped[:10]) + (" ..." if len(skipped) > 10 else "")
        raise ValueError(f"{len(skipped)} bad pair(s) in {source} (data.strict is on): {shown}")
    for pid, why in skipped:
        log.warning("pair %s left out: %s", pid, why)
    log.warning("%d pair(s) of %s left out (see above); data.strict=true makes this an error", len(skipped), source)


def plan_datasets(cfg: Config) -> DatasetPlan:
    """Resolve the config's data section into train and validation records.

    Fails early, on the driver, for a missing path or an empty dataset. Pairs whose
    files are missing from the listing are reported and left out (fatal with
    ``data.strict``). Splits: ``train_split`` records train; validation is ``val_path``
    (its ``val_split`` records, or all), else the ``val_split`` records of ``train_path``,
    else ``val_fraction`` of the training records held out.
    """
    data = cfg.data
    skipped: list[tuple[str, str]] = []
    layout = "folder"
    if data.train_path is None:
        syn = data.synthetic
        root = synthetic_root(cfg)
        if storage.is_remote(root):
            raise ValueError(f"synthetic pairs are written locally; data.synthetic.output_dir is remote: {root}")
        train_dir = ensure_synthetic(str(Path(root) / "train"), count=syn.train_pairs, seed=syn.seed, size=syn.size)
        val_dir = ensure_synthetic(
            str(Path(root) / "val"), count=syn.val_pairs, seed=syn.seed + 1_000_003, size=syn.size
        )
        train = scan_folder(train_dir, split="train")
        val = scan_folder(val_dir, split="val")
        source = f"synthetic pairs in {root}"
    else:
        scan = _scan(data.train_path, cfg)
        layout, skipped = scan.layout, list(scan.problems)
        if not scan.records:
            extra = f" ({len(skipped)} incomplete pair(s) left out)" if skipped else ""
            raise ValueError(f"dataset is empty: no pairs in {data.train_path}{extra}")
        train = _with_split(scan.records, data.train_split)
        if data.val_path:
            vscan = _scan(data.val_path, cfg)
            skipped += vscan.problems
            val = _with_split(vscan.records, data.val_split)
        else:
            val = [r for r in scan.records if r.split == data.val_split and r.split != data.train_split]
            held = {r.pair_id for r in val}
            train = [r for r in train if r.pair_id not in held]  # never validate on a training pair
            if not val:
                train, val = split_records(train, val_fraction=data.val_fraction, seed=cfg.run.seed)
                val = [replace(r, split="val") for r in val]
        source = data.train_path
        report_skipped(skipped, strict=data.strict, source=source)
    if not train:
        raise ValueError(f"training set is empty ({source})")
    if not val:
        raise ValueError(f"validation set is empty ({source})")
    return DatasetPlan(train=train, val=val, source=source, layout=layout, skipped=skipped)


def records_to_rows(records: list[PairRecord]) -> list[dict]:
    return [
        {
            "pair_id": r.pair_id,
            "t0": r.t0,
            "t1": r.t1,
            "mask": r.mask or "",
            "mask_encoding": r.mask_encoding or "",
            "shard": r.shard or "",
            "shard_row": -1 if r.shard_row is None else int(r.shard_row),
        }
        for r in records
    ]


def load_options(cfg: Config) -> dict:
    """Keyword arguments of :func:`load_pair` for this config (training, validation, screening)."""
    return {
        "mask_values": cfg.data.mask_values,
        "storage_options": cfg.storage,
        "num_classes": cfg.model.resolved_num_classes(),
        "ignore_index": cfg.data.ignore_index,
        "resize": tuple(cfg.data.resize) if cfg.data.resize else None,
        "raster": raster_options(cfg.data),
    }


class _ShardRows:
    """Ray Data flat_map function: one shard -> the rows (with image bytes) of its wanted pairs.

    Reading a shard with pyarrow inside the task streams one large object per task;
    Ray Data's own Parquet reader was measured several times slower to start for this.
    An unreadable shard yields its pairs with the error, so they are counted, not lost.
    """

    def __init__(self, *, storage_options):
        self.storage_options = storage_options

    def __call__(self, item: dict) -> list[dict]:
        wanted = set(item["ids"])
        try:
            fs, path = storage.filesystem_for(item["shard"], self.storage_options)
            table = pq.read_table(path, filesystem=fs, columns=_SHARD_COLUMNS)
        except Exception as err:
            reason = f"shard {item['shard']} unreadable: {type(err).__name__}: {err}"
            return [{"pair_id": pid, "error": reason} for pid in sorted(wanted)]
        rows = [dict(r, error="") for r in table.to_pylist() if r["pair_id"] in wanted]
        missing = wanted - {r["pair_id"] for r in rows}
        return rows + [{"pair_id": pid, "error": f"not in shard {item['shard']}"} for pid in sorted(missing)]


def source_dataset(records: list[PairRecord], cfg: Config):
    """A Ray Dataset of undecoded rows: from the shards when every record is packed (one
    task per shard), else one row per record with its file URIs."""
    import ray.data  # lazy: seconds to import; fit_local and evaluation use this module without Ray

    if not records:
        raise ValueError("cannot build a dataset from zero pairs")
    if all(r.shard for r in records):
        by_shard: dict[str, list[str]] = {}
        for r in records:
            by_shard.setdefault(r.shard, []).append(r.pair_id)
        # Train and validation pairs may share shards: each task keeps its set's pairs only.
        items = [{"shard": shard, "ids": ids} for shard, ids in sorted(by_shard.items())]
        return ray.data.from_items(items).flat_map(_ShardRows(storage_options=cfg.storage))
    return ray.data.from_items(records_to_rows(records))


class _LoadPair:
    """Ray Data flat_map function: read, decode and optionally augment one pair.

    A pair that cannot be used yields nothing and a log line, so one bad file does not
    end a long run; screen_plan has normally left such pairs out already.
    """

    def __init__(self, *, load: dict, augment: dict | None):
        self.load = load
        self.augment = augment

    def __call__(self, row: dict) -> list[dict]:
        if row.get("error"):
            log.warning("pair %s dropped: %s", row.get("pair_id"), row["error"])
            return []
        # A raster scene is read one random crop_size window at a time, never whole.
        size = (self.augment or {}).get("crop_size")
        crop = (size, np.random.default_rng()) if size and is_raster_row(row) else None
        try:
            sample = load_pair(row, **self.load, crop=crop)
        except Exception as err:  # reported and dropped; the rest of the data is used
            log.warning("pair %s dropped: %s: %s", row.get("pair_id"), type(err).__name__, err)
            return []
        if self.augment is not None:
            # Fresh entropy per row and per epoch: each pass sees new crops and flips.
            sample = augment_pair(sample, np.random.default_rng(), **self.augment)
        return [sample]


def augment_options(cfg: Config) -> dict:
    data = cfg.data
    return {
        "crop_size": data.crop_size,
        "hflip": data.hflip,
        "vflip": data.vflip,
        "ignore_index": data.ignore_index,
        "rotate90": data.rotate90,
        "scale_jitter": tuple(data.scale_jitter) if data.scale_jitter else None,
        "color_jitter": data.color_jitter,
        "swap_prob": data.swap_prob,
        "swap_class_map": list(data.swap_class_map) if data.swap_class_map else None,
    }


def pair_dataset(records: list[PairRecord], cfg: Config, *, augment: bool, shuffle_seed: int | None = None):
    """A Ray Dataset of decoded pairs (``pair_id``, ``t0``, ``t1``, ``mask``).

    ``shuffle_seed``: the rows are put in a random order before decoding, a different
    one at every execution (every training epoch) yet reproducible from the seed. It
    is a full shuffle of the undecoded rows: file URIs for loose files, the encoded
    bytes for shards (which Ray Data spills to disk when they exceed its object store).
    """
    rows = source_dataset(records, cfg)
    if shuffle_seed is not None:
        from ray.data import RandomSeedConfig  # lazy: as in source_dataset

        rows = rows.random_shuffle(seed=RandomSeedConfig(seed=shuffle_seed, reseed_after_execution=True))
    loader = _LoadPair(load=load_options(cfg), augment=augment_options(cfg) if augment else None)
    return rows.flat_map(loader)


class _Inspect:
    """Ray Data map function: decode one pair; report its error or its change pixels."""

    def __init__(self, *, load: dict):
        self.load = load

    def __call__(self, row: dict) -> dict:
        if row.get("error"):
            return {"pair_id": row["pair_id"], "error": row["error"], "changed": 0, "unchanged": 0}
        if is_raster_row(row):  # scenes are checked and counted strip by strip, never held whole
            try:
                changed, unchanged = count_mask_pixels(row, **self.load)
            except Exception as err:
                return {
                    "pair_id": row["pair_id"],
                    "error": f"{type(err).__name__}: pair {row['pair_id']}: {err}",
                    "changed": 0,
                    "unchanged": 0,
                }
            return {"pair_id": row["pair_id"], "error": "", "changed": changed, "unchanged": unchanged}
        try:
            sample = load_pair(row, **self.load)
        except Exception as err:
            return {"pair_id": row["pair_id"], "error": f"{type(err).__name__}: {err}", "changed": 0, "unchanged": 0}
        changed = unchanged = 0
        if "mask" in sample:
            valid = sample["mask"] != self.load["ignore_index"]
            changed = int(np.count_nonzero((sample["mask"] != 0) & valid))
            unchanged = int(np.count_nonzero(valid)) - changed
        return {"pair_id": row["pair_id"], "error": "", "changed": changed, "unchanged": unchanged}


@dataclass
class Inspection:
    """One decoding pass: the pairs that failed and the change pixels of the others."""

    bad: list[tuple[str, str]]
    pixels: dict[str, tuple[int, int]]


def inspect_pairs(records: list[PairRecord], cfg: Config) -> Inspection:
    rows = source_dataset(records, cfg).map(_Inspect(load=load_options(cfg))).take_all()
    bad = sorted((r["pair_id"], r["error"]) for r in rows if r["error"])
    pixels = {r["pair_id"]: (int(r["changed"]), int(r["unchanged"])) for r in rows if not r["error"]}
    return Inspection(bad=bad, pixels=pixels)


def screen_plan(plan: DatasetPlan, cfg: Config) -> DatasetPlan:
    """Decode every train and validation pair once (Ray Data); leave out the bad ones.

    With ``data.strict`` a bad pair is an error. The pass also yields the training change
    pixels, so the class weights need no second one.
    """
    found = inspect_pairs(plan.train + plan.val, cfg)
    report_skipped(found.bad, strict=cfg.data.strict, source=plan.source)
    bad = {pid for pid, _ in found.bad}
    train = [r for r in plan.train if r.pair_id not in bad]
    val = [r for r in plan.val if r.pair_id not in bad]
    if not train or not val:
        raise ValueError(
            f"no {'training' if not train else 'validation'} pairs left in {plan.source} after leaving out bad ones"
        )
    changed = sum(found.pixels[r.pair_id][0] for r in train)
    unchanged = sum(found.pixels[r.pair_id][1] for r in train)
    return replace(plan, train=train, val=val, skipped=plan.skipped + found.bad, train_pixels=(changed, unchanged))


def count_change_pixels(records: list[PairRecord], cfg: Config) -> tuple[int, int]:
    """(changed, unchanged) pixel counts over the masks of the usable pairs, with Ray Data."""
    found = inspect_pairs(records, cfg)
    return sum(c for c, _ in found.pixels.values()), sum(u for _, u in found.pixels.values())
