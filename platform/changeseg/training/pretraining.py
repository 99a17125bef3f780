"""Pretraining data: change pairs synthesised from single-date images or labelled pairs.

The synthetic pairs are written once, in the generic ``t0/ t1/ mask/`` folder layout, so
pretraining is an ordinary fine-tuning run (Ray job or :func:`fit_local`) on that folder,
and fine-tuning warm-starts from its checkpoint through ``model.weights``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from changeseg.config import Config
from changeseg.data.changesynth import images_of_pairs, write_pairs, write_synthetic_pairs
from changeseg.data.pairs import load_pair
from changeseg.data.pipeline import load_options
from changeseg.data.records import PairRecord

__all__ = ["IMAGE_SUFFIXES", "find_images", "pairs_folder", "pairs_from_images", "pairs_from_labelled"]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}


def pairs_folder(cfg: Config) -> Path:
    """Where a run's pretraining pairs are written: beside its checkpoints."""
    return Path(cfg.run.storage_path) / cfg.run.name / "pretrain-pairs"


def find_images(folder: str | Path) -> list[Path]:
    """Image files under ``folder``, searched recursively, in a stable order."""
    return sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def pairs_from_images(
    images: Sequence[Path],
    output_dir: str | Path,
    *,
    segmentations_dir: str | Path | None = None,
    pairs_per_image: int = 4,
    size: int | None = 256,
    seed: int = 0,
) -> int:
    """Synthetic pairs from unlabelled images; masks in ``segmentations_dir`` named like the
    images (instance ids, or binary masks split into connected components) give objects."""
    if len(images) < 2:
        raise ValueError(f"pretraining needs at least 2 images, found {len(images)}")
    segmentations = None
    if segmentations_dir is not None:
        folder = Path(segmentations_dir)
        segmentations = [next(iter(sorted(folder.glob(p.stem + ".*"))), None) for p in images]
    return write_synthetic_pairs(
        images, output_dir, pairs_per_image=pairs_per_image, size=size, seed=seed, segmentations=segmentations
    )


def pairs_from_labelled(
    cfg: Config,
    records: Sequence[PairRecord],
    output_dir: str | Path,
    *,
    pairs_per_image: int = 4,
    size: int | None = 256,
    progress: Callable[[str], None] | None = None,
) -> int:
    """Synthetic pairs from the t0 and t1 images of labelled pairs: what changed in each t1
    (its change mask's components) is pasted into other scenes, soft patches of the t0s too."""
    samples = []
    for record in records:
        sample = load_pair(record.to_row(), **load_options(cfg))
        image = np.asarray(sample["t0"])
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(
                f"pair {record.pair_id}: synthetic pairs are made from 8-bit RGB images, "
                f"this one is {image.dtype} with shape {image.shape}"
            )
        if "mask" not in sample:
            sample["mask"] = np.zeros(np.asarray(sample["t0"]).shape[:2], np.uint8)
        samples.append(sample)
    images, objects = images_of_pairs(samples)
    if progress is not None:
        found = sum(int(o.max()) for o in objects if o is not None)
        progress(f"{len(images)} images from {len(records)} pairs, {found} changed objects to paste")
    return write_pairs(
        images, output_dir, segmentations=objects, pairs_per_image=pairs_per_image, size=size, seed=cfg.run.seed
    )
