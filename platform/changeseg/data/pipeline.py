"""Ray Data pipelines: pair records in, decoded (and augmented) arrays out."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from changeseg import storage
from changeseg.config import Config, StorageSection
from changeseg.data.decode import load_pair
from changeseg.data.records import PairRecord, scan_folder, split_records
from changeseg.data.transforms import augment_pair

log = logging.getLogger(__name__)

# Row columns handed to Ray Data; metadata stays on the driver.
_ROW_KEYS = ("pair_id", "t0", "t1", "mask")


@dataclass
class DatasetPlan:
    """The records a run trains and validates on, and where they came from."""

    train: list[PairRecord]
    val: list[PairRecord]
    source: str


def synthetic_root(cfg: Config) -> str:
    if cfg.data.synthetic.output_dir:
        return cfg.data.synthetic.output_dir
    syn = cfg.data.synthetic
    return str(Path(".changeseg") / "synthetic" / f"seed{syn.seed}-{syn.size}px")


def ensure_synthetic(root: str, *, count: int, seed: int, size: int) -> str:
    """Write ``count`` synthetic pairs under ``root`` unless they are already there."""
    from changeseg.data.synthetic import write_folder

    local = Path(root)
    if local.is_dir():
        if len(list((local / "mask").glob("*.png"))) == count:
            return root
        shutil.rmtree(local)  # written for another count: start over rather than mix
    write_folder(local, count=count, seed=seed, size=size)
    return root


def plan_datasets(cfg: Config) -> DatasetPlan:
    """Resolve the config's data section into train and validation records.

    Fails early, on the driver, for a missing path or an empty dataset.
    """
    data = cfg.data
    opts = cfg.storage
    if data.train_path is None:
        syn = data.synthetic
        root = synthetic_root(cfg)
        if storage.is_remote(root):
            raise ValueError(f"synthetic pairs are written locally; data.synthetic.output_dir is remote: {root}")
        train_dir = ensure_synthetic(str(Path(root) / "train"), count=syn.train_pairs, seed=syn.seed, size=syn.size)
        val_dir = ensure_synthetic(str(Path(root) / "val"), count=syn.val_pairs, seed=syn.seed + 1_000_003, size=syn.size)
        train = scan_folder(train_dir, split="train")
        val = scan_folder(val_dir, split="val")
        source = f"synthetic pairs in {root}"
    else:
        records = scan_folder(data.train_path, split="train", storage_options=opts)
        if not records:
            raise ValueError(f"dataset is empty: no pairs in {data.train_path}")
        if data.val_path:
            train = records
            val = scan_folder(data.val_path, split="val", storage_options=opts)
        else:
            train, val = split_records(records, val_fraction=data.val_fraction, seed=cfg.run.seed)
            val = [PairRecord(r.pair_id, r.t0, r.t1, r.mask, "val", r.metadata) for r in val]
        source = data.train_path
    if not train:
        raise ValueError(f"training set is empty ({source})")
    if not val:
        raise ValueError(f"validation set is empty ({source})")
    return DatasetPlan(train=train, val=val, source=source)


def records_to_rows(records: list[PairRecord]) -> list[dict]:
    return [{k: getattr(r, k) or "" for k in _ROW_KEYS} for r in records]


class _LoadPair:
    """Ray Data map function: read, decode and optionally augment one pair."""

    def __init__(self, *, mask_values: str, storage_options: StorageSection | None, augment: dict | None):
        self.mask_values = mask_values
        self.storage_options = storage_options
        self.augment = augment

    def __call__(self, row: dict) -> dict:
        sample = load_pair(row, mask_values=self.mask_values, storage_options=self.storage_options)
        if self.augment is not None:
            # Fresh entropy per row and per epoch: each pass sees new crops and flips.
            sample = augment_pair(sample, np.random.default_rng(), **self.augment)
        return sample


def pair_dataset(records: list[PairRecord], cfg: Config, *, augment: bool):
    """A Ray Dataset of decoded pairs (``pair_id``, ``t0``, ``t1``, ``mask``)."""
    import ray.data

    if not records:
        raise ValueError("cannot build a dataset from zero pairs")
    aug = None
    if augment:
        aug = {
            "crop_size": cfg.data.crop_size,
            "hflip": cfg.data.hflip,
            "vflip": cfg.data.vflip,
            "ignore_index": cfg.data.ignore_index,
        }
    loader = _LoadPair(mask_values=cfg.data.mask_values, storage_options=cfg.storage, augment=aug)
    return ray.data.from_items(records_to_rows(records)).map(loader)


def _count_batch(batch: dict, ignore_index: int) -> dict:
    changed = unchanged = 0
    for mask in batch["mask"]:
        valid = mask != ignore_index
        c = int(np.count_nonzero((mask != 0) & valid))
        changed += c
        unchanged += int(np.count_nonzero(valid)) - c
    return {"changed": np.array([changed]), "unchanged": np.array([unchanged])}


def count_change_pixels(records: list[PairRecord], cfg: Config) -> tuple[int, int]:
    """(changed, unchanged) pixel counts over the training masks, computed with Ray Data."""
    ds = pair_dataset(records, cfg, augment=False).map_batches(
        _count_batch, fn_kwargs={"ignore_index": cfg.data.ignore_index}, batch_format="numpy"
    )
    changed = unchanged = 0
    for row in ds.iter_rows():
        changed += int(row["changed"])
        unchanged += int(row["unchanged"])
    return changed, unchanged
