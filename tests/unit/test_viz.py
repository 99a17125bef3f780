"""Tests for changeseg.viz: MTF branch-map panels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from changeseg.models import create_model
from changeseg.viz import (
    CHANGE_COLOUR,
    HEAT_ANCHORS,
    LABEL_HEIGHT,
    blend,
    branch_map,
    branch_panel,
    branch_panel_for,
    heat_colours,
)

torch.set_num_threads(2)
H, W, GUTTER = 40, 56, 4


def _images(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (H, W, 3), dtype=np.uint8), rng.integers(0, 256, (H, W, 3), dtype=np.uint8)


def test_heat_colours_anchor_points_and_midpoint():
    out = heat_colours(np.array([0.0, 1.0, 0.125, -3.0, 7.0, np.nan]))
    assert out.dtype == np.uint8
    assert out[0].tolist() == [0, 0, 0]  # zero response is black
    assert out[1].tolist() == HEAT_ANCHORS[-1].tolist()
    assert out[2].tolist() == [24, 9, 55]  # halfway from (0,0,0) to (48,18,110)
    assert out[3].tolist() == [0, 0, 0] and out[4].tolist() == out[1].tolist() and out[5].tolist() == [0, 0, 0]


def test_branch_map_reductions_by_hand():
    act = torch.tensor([[[1.0, -3.0], [0.0, 2.0]], [[1.0, 1.0], [0.0, -2.0]]])
    np.testing.assert_allclose(branch_map(act, (2, 2)), [[0.5, 1.0], [0.0, 1.0]])
    l2 = np.array([[2**0.5, 10**0.5], [0.0, 8**0.5]]) / 10**0.5
    np.testing.assert_allclose(branch_map(act.numpy(), (2, 2), reduce="l2"), l2, rtol=1e-6)
    up = branch_map(act, (4, 6))
    assert up.shape == (4, 6) and up.max() == pytest.approx(1.0) and up.min() >= 0
    assert not branch_map(torch.zeros(3, 2, 2), (5, 5)).any()
    with pytest.raises(ValueError, match="mean_abs, l2"):
        branch_map(act, (2, 2), reduce="max")
    with pytest.raises(ValueError, match=r"\(C, h, w\)"):
        branch_map(act[0], (2, 2))


def test_zero_map_renders_as_the_colormaps_zero_colour():
    t0, t1 = _images()
    g = torch.Generator().manual_seed(0)
    scale = {
        "info": torch.rand(1, 4, 10, 14, generator=g),
        "appear": torch.zeros(1, 4, 10, 14),
        "exchange": torch.rand(1, 4, 10, 14, generator=g),
    }
    pred = np.zeros((H, W), np.uint8)
    pred[5:15, 10:30] = 1
    panel = branch_panel(t0, t1, pred, [scale], labels=False, gutter=GUTTER)
    assert panel.shape == (2 * H + GUTTER, 3 * W + 2 * GUTTER, 3)

    def tile(row: int, col: int) -> np.ndarray:
        y, x = row * (H + GUTTER), col * (W + GUTTER)
        return panel[y : y + H, x : x + W]

    assert np.array_equal(tile(0, 0), t0) and np.array_equal(tile(0, 1), t1)
    assert np.array_equal(tile(0, 2), blend(t1, pred != 0, CHANGE_COLOUR))
    # Branch order: info, appear, exchange; appear is all zero -> black everywhere.
    assert (tile(1, 1) == np.array([0, 0, 0], np.uint8)).all()
    for col in (0, 2):  # normalised per map: each non-zero map reaches the top colour
        assert (tile(1, col) == HEAT_ANCHORS[-1].astype(np.uint8)).all(axis=-1).any()
    assert (panel[H : H + GUTTER] == 255).all()


@pytest.mark.parametrize(
    ("mtf", "msf_scales", "names"),
    [
        ("iade", 4, ["info", "appear", "disappear", "exchange"]),
        ("id", 2, ["info", "disappear"]),
        ("e", 1, ["exchange"]),
    ],
)
def test_panel_layout_for_mtf_modes(mtf, msf_scales, names):
    model = create_model(mtf=mtf, msf_scales=msf_scales, msf_width=16).eval()
    t0, t1 = _images()
    model.train()
    panel = branch_panel_for(model, t0, t1, reduce="l2")
    assert model.training  # mode restored
    rows, cols = 1 + msf_scales, max(3, len(names))
    assert panel.dtype == np.uint8
    assert panel.shape == (rows * (H + LABEL_HEIGHT) + (rows - 1) * GUTTER, cols * W + (cols - 1) * GUTTER, 3)
    # Labels are drawn: dark text in every used label strip, none in the filler's.
    for r in range(rows):
        y = r * (H + LABEL_HEIGHT + GUTTER)
        used = 3 if r == 0 else len(names)
        for c in range(cols):
            x = c * (W + GUTTER)
            strip = panel[y : y + LABEL_HEIGHT, x : x + W]
            assert (strip < 128).any() == (c < used), (r, c)

    with torch.no_grad():
        from changeseg.data.decode import to_model_input

        _, branches = model.eval().forward_with_branches(
            to_model_input(torch.from_numpy(t0)[None]), to_model_input(torch.from_numpy(t1)[None])
        )
    assert [list(b) for b in branches] == [names] * msf_scales
    unlabeled = branch_panel(t0, t1, np.zeros((H, W)), branches, labels=False)
    assert unlabeled.shape == (rows * H + (rows - 1) * GUTTER, panel.shape[1], 3)


def test_branch_panel_for_model_without_branches():
    with pytest.raises(TypeError, match="FCEF has no MTF branches"):
        branch_panel_for(create_model(name="fc_ef"), *_images())


def test_branch_panel_checks_shapes():
    t0, t1 = _images()
    with pytest.raises(ValueError, match="prediction must be"):
        branch_panel(t0, t1, np.zeros((H, W + 1)), [])
    with pytest.raises(ValueError, match="one shape"):
        branch_panel(t0, t1[:-1], np.zeros((H, W)), [])
