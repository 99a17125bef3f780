"""Pair records: what every dataset becomes before Ray Data reads it."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

from changeseg import storage
from changeseg.config import StorageSection

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".jp2")


@dataclass(frozen=True)
class PairRecord:
    """One change-detection pair: t0 (reference), t1 (comparison) and optional mask.

    ``mask_encoding`` says how the mask file becomes class indices (one of
    :data:`changeseg.data.decode.MASK_ENCODINGS`; None = the config's ``data.mask_values``).
    A pair packed into a Parquet shard has ``shard`` (the shard's URI) and ``shard_row``;
    t0, t1 and mask then only record where the files came from.
    """

    pair_id: str
    t0: str
    t1: str
    mask: str | None = None
    split: str = "train"
    metadata: dict[str, str] = field(default_factory=dict)
    mask_encoding: str | None = None
    shard: str | None = None
    shard_row: int | None = None

    def to_row(self) -> dict:
        return asdict(self)


def _by_stem(uris: list[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for uri in uris:
        path = PurePosixPath(uri)
        if path.suffix.lower() in IMAGE_SUFFIXES:
            found[path.stem] = uri
    return found


def scan_folder(
    uri: str,
    *,
    split: str = "train",
    require_masks: bool = True,
    storage_options: StorageSection | None = None,
) -> list[PairRecord]:
    """Read the generic layout ``uri/t0/<id>.<ext>``, ``uri/t1/<id>.<ext>``, ``uri/mask/<id>.<ext>``.

    Pairs are matched by file stem. A t0 image without its t1 (or mask, when masks are
    required) is an error naming the ids, because silently training on fewer pairs
    than the user has is worse than stopping.
    """
    if not storage.is_remote(uri):
        # Absolute, because Ray workers read these paths from their own working folders.
        uri = str(Path(uri.removeprefix("file://")).expanduser().resolve())
    if not storage.is_dir(uri, storage_options):
        raise FileNotFoundError(f"dataset folder not found: {uri}")
    folders = {}
    for name in ("t0", "t1", "mask"):
        sub = storage.join(uri, name)
        if not storage.is_dir(sub, storage_options):
            if name == "mask" and not require_masks:
                folders[name] = {}
                continue
            raise FileNotFoundError(f"dataset folder {uri} has no '{name}/' subfolder: {sub}")
        folders[name] = _by_stem(storage.list_files(sub, storage_options))
    t0, t1, masks = folders["t0"], folders["t1"], folders["mask"]
    ids = sorted(t0)
    missing = [i for i in ids if i not in t1 or (require_masks and i not in masks)]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise ValueError(f"{uri}: {len(missing)} pair(s) lack a t1 image or a mask: {shown}")
    orphans = sorted(set(t1) - set(t0))
    if orphans:
        shown = ", ".join(orphans[:5]) + (" ..." if len(orphans) > 5 else "")
        raise ValueError(f"{uri}: {len(orphans)} t1 image(s) have no t0: {shown}")
    return [PairRecord(i, t0[i], t1[i], masks.get(i), split) for i in ids]


def split_records(
    records: list[PairRecord], *, val_fraction: float, seed: int
) -> tuple[list[PairRecord], list[PairRecord]]:
    """Deterministic train/validation split; both sides get at least one pair."""
    if len(records) < 2:
        raise ValueError(f"need at least 2 pairs to hold some out for validation, got {len(records)}")
    order = list(records)
    random.Random(seed).shuffle(order)
    n_val = min(len(order) - 1, max(1, round(len(order) * val_fraction)))
    val = sorted(order[:n_val], key=lambda r: r.pair_id)
    train = sorted(order[n_val:], key=lambda r: r.pair_id)
    return train, val
