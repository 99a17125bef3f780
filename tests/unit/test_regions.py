"""Connected-region summaries against masks whose regions are counted by hand."""

import numpy as np
import pytest

from changeseg.inference.regions import label_components, summarize_mask

BACKENDS = [pytest.param(False, id="numpy"), pytest.param(True, id="scipy")]

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


@pytest.mark.parametrize("use_scipy", BACKENDS)
def test_summary_of_a_hand_counted_mask(use_scipy):
    summary = summarize_mask(MASK, use_scipy=use_scipy)
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


@pytest.mark.parametrize("use_scipy", BACKENDS)
def test_four_connectivity_splits_diagonal_neighbours(use_scipy):
    summary = summarize_mask(MASK, connectivity=4, use_scipy=use_scipy)
    assert [(r["class"], r["bbox"], r["area"]) for r in summary["regions"]] == [
        (1, [4, 1, 7, 4], 7),
        (1, [0, 0, 2, 2], 4),
        (1, [2, 2, 3, 4], 2),
        (2, [7, 2, 8, 3], 1),
    ]


@pytest.mark.parametrize("use_scipy", BACKENDS)
def test_min_area_and_max_regions_cut_the_list_not_the_fraction(use_scipy):
    summary = summarize_mask(MASK, min_area=2, max_regions=1, use_scipy=use_scipy)
    assert summary["changed_pixels"] == 14
    assert summary["regions_total"] == 2
    assert summary["regions"] == [{"class": 1, "bbox": [4, 1, 7, 4], "area": 7}]


@pytest.mark.parametrize("use_scipy", BACKENDS)
def test_empty_and_full_masks(use_scipy):
    empty = summarize_mask(np.zeros((3, 5), np.uint8), use_scipy=use_scipy)
    assert empty["changed_fraction"] == 0.0 and empty["regions"] == [] and empty["regions_total"] == 0
    full = summarize_mask(np.ones((3, 5), np.uint8), use_scipy=use_scipy)
    assert full["changed_fraction"] == 1.0
    assert full["regions"] == [{"class": 1, "bbox": [0, 0, 5, 3], "area": 15}]


@pytest.mark.parametrize("connectivity", [4, 8])
def test_numpy_labelling_matches_scipy_on_random_masks(connectivity):
    rng = np.random.default_rng(0)
    for _ in range(20):
        binary = rng.random((23, 31)) < 0.45
        ours, n_ours = label_components(binary, connectivity=connectivity, use_scipy=False)
        ref, n_ref = label_components(binary, connectivity=connectivity, use_scipy=True)
        assert n_ours == n_ref
        np.testing.assert_array_equal(ours, ref)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="2-D"):
        summarize_mask(np.zeros((2, 3, 3), np.uint8))
    with pytest.raises(ValueError, match="connectivity"):
        label_components(np.zeros((2, 2), bool), connectivity=6)
