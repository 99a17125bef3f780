"""Synthetic change pairs: determinism, mask semantics, nuisances, folder layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from changeseg.data.synthetic import SyntheticPair, make_pair, pair_seed, write_folder

CLEAN = {"gain_deviation": (0.0, 0.0), "offset": 0.0, "shading": 0.0, "shadows": (0, 0), "noise_std": (0.0, 0.0)}


def _diff(pair: SyntheticPair) -> np.ndarray:
    return np.abs(pair.t1.astype(np.int16) - pair.t0.astype(np.int16))


def test_same_seed_same_pair_and_different_seed_differs() -> None:
    a, b, c = make_pair(seed=3), make_pair(seed=3), make_pair(seed=4)
    for name in ("t0", "t1", "mask"):
        assert np.array_equal(getattr(a, name), getattr(b, name))
    assert a.events == b.events and a.shift == b.shift
    assert not np.array_equal(a.t0, c.t0)


def test_shapes_dtypes_and_mask_values() -> None:
    pair = make_pair(seed=0, size=(96, 128))
    assert pair.t0.shape == pair.t1.shape == (96, 128, 3)
    assert pair.mask.shape == (96, 128)
    assert pair.t0.dtype == pair.t1.dtype == pair.mask.dtype == np.uint8
    assert set(np.unique(pair.mask)) <= {0, 1}
    assert 3 <= len(pair.events) <= 7
    assert set(pair.events) <= {"static", "appear", "disappear", "exchange"}


def test_mask_empty_exactly_when_every_object_is_static() -> None:
    pairs = [make_pair(seed=s, no_change_fraction=0.3) for s in range(30)]
    changed = [any(e != "static" for e in p.events) for p in pairs]
    assert 0 < sum(changed) < len(pairs)  # both kinds occur, so the check below means something
    for pair, has_change in zip(pairs, changed):
        assert (pair.mask.sum() > 0) == has_change, pair.events
    assert {e for p in pairs for e in p.events} == {"static", "appear", "disappear", "exchange"}

    assert all(e == "static" for e in make_pair(seed=1, no_change_fraction=1.0).events)
    assert any(e != "static" for e in make_pair(seed=1, no_change_fraction=0.0, change_probability=0.0).events)


def test_without_nuisances_images_differ_exactly_on_the_mask() -> None:
    for seed in range(5):
        pair = make_pair(seed=seed, max_shift=0, no_change_fraction=0.0, **CLEAN)
        changed_pixels = _diff(pair).max(axis=2)
        on = pair.mask.astype(bool)
        assert on.any()
        assert changed_pixels[~on].max() == 0  # nothing outside the mask changed
        assert (changed_pixels[on] > 0).mean() > 0.95  # and nearly everything inside did


def test_illumination_changes_unchanged_pixels_but_not_the_mask() -> None:
    for seed in range(10):
        # All objects static: the mask is empty, yet t1 differs from t0 everywhere.
        pair = make_pair(seed=seed, no_change_fraction=1.0, max_shift=0, noise_std=(0.0, 0.0))
        assert pair.mask.sum() == 0
        diff = _diff(pair)
        assert diff.mean() > 4.0, (seed, pair.gain, pair.offset)
        assert (diff.max(axis=2) > 12).mean() > 0.3  # a differencing threshold fires widely
        deviation = np.abs(np.array(pair.gain) - 1.0)
        assert np.all((deviation >= 0.08 - 1e-9) & (deviation <= 0.25 + 1e-9))


def test_misregistration_shifts_all_of_t1() -> None:
    shifts = set()
    for seed in range(12):
        pair = make_pair(seed=seed, **CLEAN)
        dy, dx = pair.shift
        assert abs(dy) <= 2 and abs(dx) <= 2
        shifts.add((dy, dx))
        h, w = pair.mask.shape
        # t1[y, x] shows the scene point of t0[y + dy, x + dx]; compare where it is unchanged.
        ys, xs = slice(max(0, -dy), min(h, h - dy)), slice(max(0, -dx), min(w, w - dx))
        ys0, xs0 = slice(ys.start + dy, ys.stop + dy), slice(xs.start + dx, xs.stop + dx)
        unchanged = pair.mask[ys0, xs0] == 0
        assert np.array_equal(pair.t1[ys, xs][unchanged], pair.t0[ys0, xs0][unchanged])
        if (dy, dx) != (0, 0):  # the shift is real: unaligned, the grain no longer matches
            assert _diff(pair)[pair.mask == 0].mean() > 3
    assert len(shifts) > 3


def test_plain_differencing_does_not_solve_the_task() -> None:
    pairs = [make_pair(seed=pair_seed(7, i)) for i in range(40)]
    diff = np.concatenate([_diff(p).max(axis=2).ravel() for p in pairs])
    truth = np.concatenate([p.mask.ravel() for p in pairs]).astype(bool)
    best = 0.0
    for threshold in range(0, 256, 4):  # the best global threshold, chosen with the answers
        pred = diff > threshold
        tp, fp, fn = (pred & truth).sum(), (pred & ~truth).sum(), (~pred & truth).sum()
        best = max(best, 2 * tp / (2 * tp + fp + fn))
    assert best < 0.78  # ~0.76 on these pairs; the demo asks >= 0.8 of the trained model


def test_pair_seeds_do_not_overlap_between_nearby_folder_seeds() -> None:
    seeds_a = {pair_seed(0, i) for i in range(100)}
    seeds_b = {pair_seed(1, i) for i in range(100)}
    assert len(seeds_a) == 100 and not seeds_a & seeds_b


def test_write_folder_layout(tmp_path: Path) -> None:
    ids = write_folder(tmp_path / "syn", count=3, seed=5, size=64, start_index=10)
    assert ids == ["synthetic_000010", "synthetic_000011", "synthetic_000012"]
    for index, pair_id in zip(range(10, 13), ids):
        pair = make_pair(seed=pair_seed(5, index), size=64)
        t0 = np.asarray(Image.open(tmp_path / "syn" / "t0" / f"{pair_id}.png"))
        t1 = np.asarray(Image.open(tmp_path / "syn" / "t1" / f"{pair_id}.png"))
        mask = np.asarray(Image.open(tmp_path / "syn" / "mask" / f"{pair_id}.png"))
        assert np.array_equal(t0, pair.t0) and np.array_equal(t1, pair.t1)
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
        assert np.array_equal(mask == 255, pair.mask == 1)
    assert sorted(p.name for p in (tmp_path / "syn").iterdir()) == ["mask", "t0", "t1"]


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        make_pair(seed=0, num_objects=(5, 2))
    with pytest.raises(ValueError):
        make_pair(seed=0, max_shift=-1)
