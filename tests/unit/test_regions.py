"""Connected-region summaries against masks whose regions are counted by hand."""

import numpy as np
import pytest

from changeseg.inference.regions import label_components, summarize_mask

# Two blobs that touch only at a corner (one region with 8 neighbours, two with 4),
# a U shape whose arms join below (one region however the rows are scanned), and a
# pixel of class 2 beside the U.
MASK = np.array(
    [
        [1, 1, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 1, 0, 1, 0],
        [0, 0, 1, 0, 1, 0, 1, 2],
        [0, 0, 1, 0, 1, 1, 1, 0],
        [0, 0, 0, 0, 0, 0, 0, 0],
        [255, 255, 0, 0, 0, 0, 0, 0],
    ],
    dtype=np.uint8,
)


def test_summary_of_a_hand_counted_mask():
    summary = summarize_mask(MASK)
    assert summary["height"] == 6 and summary["width"] == 8
    # 6 (blobs) + 7 (U) + 1 (class 2) changed pixels; the two ignore pixels are not counted.
    assert summary["changed_pixels"] == 14
    assert summary["changed_fraction"] == pytest.approx(14 / 46)
    assert summary["regions_total"] == 3
    assert summary["regions"] == [
        {"class": 1, "bbox": [4, 1, 7, 4], "area": 7},
        {"class": 1, "bbox": [0, 0, 3, 4], "area": 6},
        {"class": 2, "bbox": [7, 2, 8, 3], "area": 1},
    ]


def test_four_connectivity_splits_diagonal_neighbours():
    summary = summarize_mask(MASK, connectivity=4)
    assert [(r["class"], r["bbox"], r["area"]) for r in summary["regions"]] == [
        (1, [4, 1, 7, 4], 7),
        (1, [0, 0, 2, 2], 4),
        (1, [2, 2, 3, 4], 2),
        (2, [7, 2, 8, 3], 1),
    ]


def test_min_area_and_max_regions_cut_the_list_not_the_fraction():
    summary = summarize_mask(MASK, min_area=2, max_regions=1)
    assert summary["changed_pixels"] == 14
    assert summary["regions_total"] == 2
    assert summary["regions"] == [{"class": 1, "bbox": [4, 1, 7, 4], "area": 7}]


def test_empty_and_full_masks():
    empty = summarize_mask(np.zeros((3, 5), np.uint8))
    assert empty["changed_fraction"] == 0.0 and empty["regions"] == [] and empty["regions_total"] == 0
    full = summarize_mask(np.ones((3, 5), np.uint8))
    assert full["changed_fraction"] == 1.0
    assert full["regions"] == [{"class": 1, "bbox": [0, 0, 5, 3], "area": 15}]


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="2-D"):
        summarize_mask(np.zeros((2, 3, 3), np.uint8))
    with pytest.raises(ValueError, match="connectivity"):
        label_components(np.zeros((2, 2), bool), connectivity=6)
