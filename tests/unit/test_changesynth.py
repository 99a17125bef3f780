"""Synthetic change pairs from single-date images: objects keep their own pixels."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from changeseg.data.changesynth import images_of_pairs, synthesize_pair, write_pairs, write_synthetic_pairs


def _donor_with_object() -> tuple[np.ndarray, np.ndarray]:
    donor = np.zeros((64, 64, 3), np.uint8)
    donor[10:20, 30:50] = 250  # the object; the rest of the donor is black
    instances = np.zeros((64, 64), np.int32)
    instances[10:20, 30:50] = 3
    return donor, instances


def test_pasted_object_carries_its_own_pixels():
    donor, instances = _donor_with_object()
    image = np.full((64, 64, 3), 100, np.uint8)
    for seed in range(5):
        pair = synthesize_pair(
            image,
            [donor],
            np.random.default_rng(seed),
            segmentations=[instances],
            objects=(1, 1),
            jitter=0.0,
            max_shift=0,
        )
        changed = pair["mask"] == 1
        assert changed.sum() == 200
        # Whichever date got the object shows the object's value there, the other the background.
        values = {int(pair["t0"][changed].mean()), int(pair["t1"][changed].mean())}
        assert values == {100, 250}
        assert (pair["t0"][~changed] == 100).all() and (pair["t1"][~changed] == 100).all()


def test_binary_masks_become_one_object_per_component(tmp_path):
    donor = np.zeros((48, 48, 3), np.uint8)
    mask = np.zeros((48, 48), np.uint8)
    mask[2:8, 2:8] = 255  # 36 px
    mask[30:40, 30:40] = 255  # 100 px
    mask[20, 20] = 255  # a speck under 16 px is never an object
    Image.fromarray(donor).save(tmp_path / "donor.png")
    Image.fromarray(mask).save(tmp_path / "donor_mask.png")
    Image.fromarray(np.full((48, 48, 3), 90, np.uint8)).save(tmp_path / "image.png")
    write_synthetic_pairs(
        [tmp_path / "image.png", tmp_path / "donor.png"],
        tmp_path / "pairs",
        pairs_per_image=6,
        size=None,
        seed=1,
        segmentations=[None, tmp_path / "donor_mask.png"],
    )
    sizes = set()
    for path in sorted((tmp_path / "pairs" / "mask").glob("synth_00000_*.png")):
        sizes.add(int((np.asarray(Image.open(path)) > 0).sum()))
    # Pairs of the first image paste whole components (36 or 100 px each), never the mask as
    # one object (that would bring the 1-px speck along: 137 px).
    combos = {a * 36 + b * 100 for a in range(6) for b in range(6)}
    assert sizes and sizes <= combos and sizes != {0}


def test_images_of_pairs_uses_t1_change_as_objects(tmp_path):
    t0 = np.full((32, 32, 3), 10, np.uint8)
    t1 = np.full((32, 32, 3), 200, np.uint8)
    mask = np.zeros((32, 32), np.uint8)
    mask[4:12, 4:12] = 1
    mask[20:28, 20:28] = 1
    mask[0, :] = 255  # ignored pixels are not change
    images, objects = images_of_pairs([{"t0": t0, "t1": t1, "mask": mask}, {"t0": t0, "t1": t1, "mask": mask * 0}])
    assert len(images) == 4 and objects[0] is None and objects[3] is None
    assert objects[1].max() == 2 and (objects[1] > 0).sum() == 128
    count = write_pairs(images, tmp_path / "out", segmentations=objects, pairs_per_image=2, size=16, seed=0)
    assert count == 8 and len(list((tmp_path / "out" / "t1").glob("*.png"))) == 8


def test_pretraining_pairs_from_labelled_levir_pairs(tmp_path):
    from conftest import SHARED_DATA

    from changeseg.config import build_config
    from changeseg.data.layouts import scan_dataset
    from changeseg.training.pretraining import pairs_from_labelled

    records = [
        r for r in scan_dataset(str(SHARED_DATA / "levir-cd-samples"), layout="levir").records if r.split != "test"
    ]
    lines: list[str] = []
    count = pairs_from_labelled(
        build_config({}), records, tmp_path / "p", pairs_per_image=2, size=64, progress=lines.append
    )
    assert count == 2 * 2 * len(records)
    # LEVIR's changed buildings are the objects: one line says how many there are to paste.
    found = re.search(r"^8 images from 4 pairs, (\d+) changed objects to paste$", lines[0])
    assert found and int(found.group(1)) > 10
    masks = [np.asarray(Image.open(p)) for p in sorted((tmp_path / "p" / "mask").glob("*.png"))]
    assert len(masks) == count and {m.shape for m in masks} == {(64, 64)}
    assert sum(int((m > 0).any()) for m in masks) >= count // 2


def test_pretraining_sources_refuse_what_they_cannot_use(tmp_path):
    from changeseg.training.pretraining import pairs_from_images

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "only.png")
    with pytest.raises(ValueError, match="at least 2 images, found 1"):
        pairs_from_images([tmp_path / "only.png"], tmp_path / "out")
