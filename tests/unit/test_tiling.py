"""Sliding-window inference: window placement and seamless stitching."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from changeseg.inference.tiling import predict_tiled, tile_starts


class LocalModel(nn.Module):
    """Two 3x3 convs: every output pixel sees 2 pixels around it, no more."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 2, 3, padding=1))

    def forward(self, t0, t1):
        return self.net(torch.cat([t0, t1], 1))


def test_tile_starts_cover_the_edge_with_the_requested_overlap():
    assert tile_starts(100, 32, 8) == [0, 24, 48, 68]
    assert tile_starts(32, 32, 8) == [0]
    assert tile_starts(20, 32, 8) == [0]
    assert tile_starts(33, 32, 0) == [0, 1]
    with pytest.raises(ValueError, match="overlap < tile"):
        tile_starts(100, 32, 32)


@pytest.mark.parametrize(("height", "width", "batch_size"), [(70, 100, 4), (64, 33, 1), (31, 150, 3)])
def test_tiling_reproduces_the_untiled_prediction(height, width, batch_size):
    model = LocalModel().eval()
    g = torch.Generator().manual_seed(1)
    t0, t1 = torch.rand(2, 3, height, width, generator=g), torch.rand(2, 3, height, width, generator=g)
    with torch.no_grad():
        full = model(t0, t1)
        # overlap // 2 = 4 > the model's reach of 2 pixels: identical wherever the context is.
        tiled = predict_tiled(model, t0, t1, tile=32, overlap=8, batch_size=batch_size)
    torch.testing.assert_close(tiled, full, atol=1e-6, rtol=0)


def test_without_overlap_the_seams_show():
    model = LocalModel().eval()
    t0, t1 = torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        full = model(t0, t1)
        tiled = predict_tiled(model, t0, t1, tile=32, overlap=0)
    diff = (tiled - full).abs().amax(dim=(0, 1))
    assert diff[31:33, :].max() > 1e-3 and diff[:, 31:33].max() > 1e-3  # at the tile borders
    assert diff[8:24, 8:24].max() < 1e-6  # inside a tile


def test_small_inputs_go_through_in_one_call():
    calls = []

    def forward(a, b):
        calls.append(tuple(a.shape))
        return torch.zeros(a.shape[0], 2, *a.shape[-2:])

    predict_tiled(forward, torch.rand(3, 3, 20, 30), torch.rand(3, 3, 20, 30), tile=32, overlap=8)
    assert calls == [(3, 3, 20, 30)]
    with pytest.raises(ValueError, match="differ"):
        predict_tiled(forward, torch.rand(1, 3, 20, 30), torch.rand(1, 3, 20, 31), tile=32, overlap=8)
