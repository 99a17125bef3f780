"""Readers for the layouts change-detection datasets ship in; each yields pair records.

One recursive listing per dataset (one paginated request stream on S3), matched in
memory. A pair with a member missing is not an error here: it is reported in
``ScanResult.problems`` with its id and reason, and the caller decides (``data.strict``).

| layout | files | split | mask -> classes |
|---|---|---|---|
| ``folder`` | ``[<split>/]t0/<id>``, ``t1/<id>``, ``mask/<id>`` | split folder, else the default | ``binary`` (> 127) unless ``data.mask_values`` says otherwise |
| ``levir`` / ``dsifn`` | ``[<split>/]A/``, ``B/``, ``label/`` | split folder, else a ``train_``/``val_``/``test_`` file prefix | ``binary`` (255 = change) |
| ``airchange`` | ``<site>/[<n>/]im1.*``, ``im2.*``, ``gt.*`` (any case) | the default | ``binary`` (> 127: drops stray grey pixels) |
| ``pcd`` | ``[TSUNAMI|GSV/]t0/<i>.jpg``, ``t1/<i>.jpg``, ``mask/<i>.png`` | 5-fold CV: ``test`` when ``(i % 10) // 2 == fold`` | ``binary-inverted`` (black = change) |
| ``vl_cmu_cd`` | ``train|test/t0/``, ``t1/``, ``mask/`` | split folder | ``binary`` |
| ``changesim`` | ``Query/Query_Seq_<Train|Test>/<map>/<seq>/rgb/<n>.png`` (t1), ``.../t0/rgb/<n>.png``, ``.../change_segmentation/<n>.png`` | Train/Test | ``colormap:changesim`` (5 classes) or ``:binary`` |
| ``manifest`` | a ``.parquet`` manifest | its ``split`` column | its ``mask_encoding`` column |
| ``shards`` | a folder of ``part-*.parquet`` shards (or one) | its ``split`` column | its ``mask_encoding`` column |
"""

from __future__ import annotations

import posixpath
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.fs as pafs

from changeseg import storage
from changeseg.config import StorageSection
from changeseg.data.manifest import read_manifest
from changeseg.data.records import IMAGE_SUFFIXES, PairRecord
from changeseg.data.shards import is_shard_file, read_shard_records

LAYOUTS = ("folder", "levir", "dsifn", "airchange", "pcd", "vl_cmu_cd", "changesim", "manifest", "shards")
KNOWN_SPLITS = ("train", "val", "test", "trainval")
PCD_SUBSETS = ("TSUNAMI", "GSV")


@dataclass
class ScanResult:
    """What a reader found: usable records, and pairs left out with the reason."""

    layout: str
    records: list[PairRecord]
    problems: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class _Listing:
    root: str
    files: list[str]  # relative posix paths
    dirs: set[str]

    def join(self, rel: str) -> str:
        return storage.join(self.root, *rel.split("/"))


def _normalise(uri: str) -> str:
    if storage.is_remote(uri):
        return uri.rstrip("/")
    # Absolute, because Ray workers read these paths from their own working folders.
    return str(Path(uri.removeprefix("file://")).expanduser().resolve())


def list_tree(uri: str, storage_options: StorageSection | None = None) -> _Listing:
    fs, path = storage.filesystem_for(uri, storage_options)
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.Directory:
        raise FileNotFoundError(f"dataset folder not found: {uri}")
    files, dirs = [], set()
    prefix = path.rstrip("/") + "/"
    for item in fs.get_file_info(pafs.FileSelector(path, recursive=True)):
        rel = item.path[len(prefix) :] if item.path.startswith(prefix) else item.path
        if item.type == pafs.FileType.File:
            files.append(rel)
            parent = posixpath.dirname(rel)
            while parent:  # object stores have no directory entries
                dirs.add(parent)
                parent = posixpath.dirname(parent)
        elif item.type == pafs.FileType.Directory:
            dirs.add(rel)
    return _Listing(root=uri, files=sorted(files), dirs=dirs)


def _is_image(rel: str) -> bool:
    return posixpath.splitext(rel)[1].lower() in IMAGE_SUFFIXES


def _stem(rel: str) -> str:
    return posixpath.splitext(posixpath.basename(rel))[0]


def _triplet_bases(listing: _Listing, names: tuple[str, str, str]) -> list[str]:
    """Folders (relative, "" = root) that hold the first member folder of ``names``."""
    bases = []
    for d in sorted(listing.dirs | {""}):
        first = f"{d}/{names[0]}" if d else names[0]
        if first in listing.dirs:
            bases.append(d)
    return bases


def _split_from_prefix(stem: str) -> str | None:
    head = stem.split("_", 1)[0].lower()
    return head if "_" in stem and head in KNOWN_SPLITS else None


def _read_triplets(
    listing: _Listing,
    *,
    layout: str,
    names: tuple[str, str, str],
    split: str,
    encoding: str | None,
    prefix_split: bool = False,
    require_masks: bool = True,
    bases: list[str] | None = None,
    pair_id=None,
    split_of=None,
    metadata_of=None,
) -> ScanResult:
    bases = _triplet_bases(listing, names) if bases is None else bases
    if not bases:
        raise FileNotFoundError(
            f"{listing.root}: no '{names[0]}/' folder (layout '{layout}' wants {'/, '.join(names)}/)"
        )
    by_folder: dict[str, dict[str, str]] = defaultdict(dict)
    for rel in listing.files:
        if _is_image(rel):
            by_folder[posixpath.dirname(rel)][_stem(rel)] = rel
    result = ScanResult(layout=layout, records=[])
    multi = len(bases) > 1
    for base in bases:
        members = [by_folder.get(f"{base}/{n}" if base else n, {}) for n in names]
        for n, folder in zip(names[1:], members[1:]):
            sub = f"{base}/{n}" if base else n
            if sub not in listing.dirs and not (n == names[2] and not require_masks):
                raise FileNotFoundError(f"dataset folder {listing.join(base)} has no '{n}/' subfolder")
        t0, t1, masks = members
        base_split = posixpath.basename(base).lower() if posixpath.basename(base).lower() in KNOWN_SPLITS else None
        for stem in sorted(set(t0) | set(t1) | set(masks)):
            pid = pair_id(base, stem) if pair_id else (f"{base.replace('/', '_')}_{stem}" if multi and base else stem)
            if stem not in t0:
                result.problems.append((pid, f"no t0 image ({names[0]}/{stem}.*)"))
                continue
            if stem not in t1:
                result.problems.append((pid, f"no t1 image ({names[1]}/{stem}.*)"))
                continue
            if require_masks and stem not in masks:
                result.problems.append((pid, f"no mask ({names[2]}/{stem}.*)"))
                continue
            if split_of:
                rec_split = split_of(base, stem)
            else:
                rec_split = base_split or (_split_from_prefix(stem) if prefix_split else None) or split
            result.records.append(
                PairRecord(
                    pair_id=pid,
                    t0=listing.join(t0[stem]),
                    t1=listing.join(t1[stem]),
                    mask=listing.join(masks[stem]) if stem in masks else None,
                    split=rec_split,
                    metadata=metadata_of(base, stem) if metadata_of else {},
                    mask_encoding=encoding,
                )
            )
    return result


def read_folder(listing: _Listing, *, split: str, require_masks: bool = True, **_) -> ScanResult:
    return _read_triplets(
        listing, layout="folder", names=("t0", "t1", "mask"), split=split, encoding=None, require_masks=require_masks
    )


def read_levir(listing: _Listing, *, split: str, require_masks: bool = True, layout: str = "levir", **_) -> ScanResult:
    return _read_triplets(
        listing,
        layout=layout,
        names=("A", "B", "label"),
        split=split,
        encoding="binary",
        prefix_split=True,
        require_masks=require_masks,
    )


def read_vl_cmu_cd(listing: _Listing, *, split: str, require_masks: bool = True, **_) -> ScanResult:
    return _read_triplets(
        listing,
        layout="vl_cmu_cd",
        names=("t0", "t1", "mask"),
        split=split,
        encoding="binary",
        require_masks=require_masks,
    )


def read_pcd(listing: _Listing, *, split: str, fold: int = 0, require_masks: bool = True, **_) -> ScanResult:
    """TSUNAMI and GSV (or one of them given directly): 5-fold cross-validation by index."""
    bases = [s for s in PCD_SUBSETS if f"{s}/t0" in listing.dirs] or ([""] if "t0" in listing.dirs else [])

    def subset(base: str) -> str:
        return base or posixpath.basename(listing.root.rstrip("/"))

    def fold_of(stem: str) -> int | None:
        return (int(stem) % 10) // 2 if stem.isdigit() else None

    def split_of(base: str, stem: str) -> str:
        f = fold_of(stem)
        return split if f is None else ("test" if f == fold else "train")

    def metadata_of(base: str, stem: str) -> dict[str, str]:
        f = fold_of(stem)
        return {"subset": subset(base), **({"fold": str(f)} if f is not None else {})}

    return _read_triplets(
        listing,
        layout="pcd",
        names=("t0", "t1", "mask"),
        split=split,
        encoding="binary-inverted",
        require_masks=require_masks,
        bases=bases,
        pair_id=lambda b, s: f"{subset(b)}_{s}",
        split_of=split_of,
        metadata_of=metadata_of,
    )


_AIRCHANGE_MEMBER = {"im1": "t0", "im2": "t1", "gt": "mask"}


def read_airchange(listing: _Listing, *, split: str, require_masks: bool = True, **_) -> ScanResult:
    """``<site>/<n>/im1|im2|gt.bmp`` (``Archieve`` has no ``<n>``); names are matched
    case-insensitively (``im2.BMP``). Pair ids are the folders, e.g. ``Szada_1``."""
    pairs: dict[str, dict[str, str]] = defaultdict(dict)
    for rel in listing.files:
        stem = _stem(rel).lower()
        if _is_image(rel) and stem in _AIRCHANGE_MEMBER and "/" in rel:
            pairs[posixpath.dirname(rel)][_AIRCHANGE_MEMBER[stem]] = rel
    if not pairs:
        raise FileNotFoundError(f"{listing.root}: no <site>/[<n>/]im1.bmp files (layout 'airchange')")
    result = ScanResult(layout="airchange", records=[])
    for folder in sorted(pairs):
        members = pairs[folder]
        pid = folder.replace("/", "_")
        need = ("t0", "t1", "mask") if require_masks else ("t0", "t1")
        lacking = [m for m in need if m not in members]
        if lacking:
            result.problems.append(
                (pid, "no " + ", ".join({"t0": "im1", "t1": "im2", "mask": "gt"}[m] for m in lacking))
            )
            continue
        site, _, n = folder.partition("/")
        result.records.append(
            PairRecord(
                pair_id=pid,
                t0=listing.join(members["t0"]),
                t1=listing.join(members["t1"]),
                mask=listing.join(members["mask"]) if "mask" in members else None,
                split=split,
                metadata={"site": site, **({"index": n} if n else {})},
                mask_encoding="binary",
            )
        )
    return result


_CHANGESIM_RGB = re.compile(r"(?:^|.*/)Query_Seq_(Train|Test)/([^/]+)/([^/]+)/rgb/([^/]+)\.png$")


def read_changesim(
    listing: _Listing, *, split: str, num_classes: int = 2, require_masks: bool = True, **_
) -> ScanResult:
    """Query frames (t1) with their aligned reference frame (``t0/rgb``) and change mask."""
    encoding = "colormap:changesim:binary" if num_classes == 2 else "colormap:changesim"
    present = set(listing.files)
    result = ScanResult(layout="changesim", records=[])
    for rel in listing.files:
        m = _CHANGESIM_RGB.match(rel)
        if not m:
            continue
        set_name, world, seq, frame = m.groups()
        seq_dir = posixpath.dirname(posixpath.dirname(rel))
        t0 = f"{seq_dir}/t0/rgb/{frame}.png"
        mask = f"{seq_dir}/change_segmentation/{frame}.png"
        pid = f"{world}_{seq}_{frame}"
        if t0 not in present:
            result.problems.append((pid, f"no reference frame {t0}"))
            continue
        if require_masks and mask not in present:
            result.problems.append((pid, f"no change mask {mask}"))
            continue
        result.records.append(
            PairRecord(
                pair_id=pid,
                t0=listing.join(t0),
                t1=listing.join(rel),
                mask=listing.join(mask) if mask in present else None,
                split=set_name.lower(),
                metadata={"map": world, "sequence": seq},
                mask_encoding=encoding,
            )
        )
    if not result.records and not result.problems:
        raise FileNotFoundError(f"{listing.root}: no Query_Seq_Train|Test/<map>/<seq>/rgb/*.png (layout 'changesim')")
    return result


READERS = {
    "folder": read_folder,
    "levir": read_levir,
    "dsifn": lambda listing, **kw: read_levir(listing, layout="dsifn", **kw),
    "airchange": read_airchange,
    "pcd": read_pcd,
    "vl_cmu_cd": read_vl_cmu_cd,
    "changesim": read_changesim,
}


def detect_layout(listing: _Listing) -> str:
    """Guess a folder's layout from its listing; an error names what was expected."""
    top = {rel.split("/", 1)[0] for rel in listing.files} | {d.split("/", 1)[0] for d in listing.dirs}
    if any(
        posixpath.basename(f).startswith("part-") and f.endswith(".parquet") and "/" not in f for f in listing.files
    ):
        return "shards"
    if any(f"{s}/t0" in listing.dirs for s in PCD_SUBSETS):
        return "pcd"
    if any(_CHANGESIM_RGB.match(f) for f in listing.files):
        return "changesim"
    if _triplet_bases(listing, ("A", "B", "label")):
        return "levir"
    if _triplet_bases(listing, ("t0", "t1", "mask")) or "t0" in top:
        return "folder"
    if any(_stem(f).lower() == "im1" and "/" in f for f in listing.files):
        return "airchange"
    if "manifest.parquet" in listing.files:
        return "manifest"
    raise ValueError(
        f"cannot tell the layout of {listing.root}: expected t0/ t1/ mask/, A/ B/ label/, <site>/<n>/im1.bmp, "
        "TSUNAMI|GSV/, Query/Query_Seq_*, part-*.parquet shards or a manifest .parquet; set data.layout"
    )


def scan_dataset(
    uri: str,
    *,
    layout: str = "auto",
    split: str = "train",
    fold: int = 0,
    num_classes: int = 2,
    require_masks: bool = True,
    storage_options: StorageSection | None = None,
) -> ScanResult:
    """Records of the dataset at ``uri`` (folder of any layout, manifest, shards)."""
    if layout != "auto" and layout not in LAYOUTS:
        raise ValueError(f"unknown layout '{layout}' (known: auto, {', '.join(LAYOUTS)})")
    uri = _normalise(uri)
    if uri.endswith(".parquet"):
        if not storage.exists(uri, storage_options):
            raise FileNotFoundError(f"dataset file not found: {uri}")
        if layout == "shards" or (layout == "auto" and is_shard_file(uri, storage_options)):
            return ScanResult("shards", read_shard_records(uri, storage_options))
        return ScanResult("manifest", read_manifest(uri, storage_options=storage_options))
    listing = list_tree(uri, storage_options)
    chosen = detect_layout(listing) if layout == "auto" else layout
    if chosen == "shards":
        return ScanResult("shards", read_shard_records(uri, storage_options))
    if chosen == "manifest":
        return ScanResult(
            "manifest", read_manifest(storage.join(uri, "manifest.parquet"), storage_options=storage_options)
        )
    return READERS[chosen](listing, split=split, fold=fold, num_classes=num_classes, require_masks=require_masks)
