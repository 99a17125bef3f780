"""model.input_scale: C-3PO resamples both images before its backbone, logits come back at the input size."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch.nn import functional as F

from changeseg.config import Config
from changeseg.inference.predictor import Predictor
from changeseg.models import create_model, model_from_config

SMALL = {"backbone": "resnet18", "msf_width": 16, "msf_scales": 2}


def _pair(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.rand(1, 3, height, width, generator=generator), torch.rand(1, 3, height, width, generator=generator)


@pytest.mark.parametrize(("scale", "size"), [(2.0, (40, 56)), (1.5, (37, 53)), (0.5, (64, 48))])
def test_the_model_equals_the_plain_model_on_resampled_images(scale, size):
    plain = create_model(**SMALL).eval()
    scaled = create_model(**SMALL, input_scale=scale).eval()
    scaled.load_state_dict(plain.state_dict())  # no parameter depends on the scale
    t0, t1 = _pair(*size)
    up0, up1 = (F.interpolate(t, scale_factor=scale, mode="bilinear", align_corners=False) for t in (t0, t1))
    with torch.no_grad():
        expected = F.interpolate(plain(up0, up1), size=size, mode="bilinear", align_corners=False)
        got = scaled(t0, t1)
    assert got.shape == (1, 2, *size)
    # The scaled model resamples its head's logits once, straight to the input size; the
    # reference goes through the resampled size first, hence the small tolerance.
    torch.testing.assert_close(got, expected, atol=2e-3, rtol=1e-2)
    assert not torch.allclose(got, plain(t0, t1).detach())  # the scale changes what the model sees


def test_the_scale_is_recorded_only_when_used_and_rebuilds():
    assert "input_scale" not in create_model(**SMALL).config  # older checkpoints stay as they were
    model = create_model(**SMALL, input_scale=2)
    assert model.config["input_scale"] == 2.0
    assert model_from_config(model.config).input_scale == 2.0


@pytest.mark.parametrize("bad", [0, 0.1, 5, True, "2"])
def test_out_of_range_scales_are_refused(bad):
    with pytest.raises(ValueError, match="input_scale must be a number from 0.25 to 4"):
        create_model(**SMALL, input_scale=bad)


def test_the_config_field_reaches_the_factory_and_is_checked():
    cfg = Config.model_validate({"model": {"name": "c3po", "input_scale": 2}})
    assert cfg.model.factory_kwargs()["input_scale"] == 2.0
    assert "input_scale" not in Config().model.factory_kwargs()
    with pytest.raises(ValidationError, match="input_scale"):
        Config.model_validate({"model": {"name": "c3po", "input_scale": 8}})
    with pytest.raises(ValidationError, match="model.input_scale: C-3PO option"):
        Config.model_validate({"model": {"name": "fc_siam_diff", "input_scale": 2}})


def test_the_predictors_pixel_budget_counts_the_pixels_the_model_processes():
    rng = np.random.default_rng(0)
    pairs = [rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8) for _ in range(4)]
    t0, t1 = [p[0] for p in pairs], [p[1] for p in pairs]
    budget = 4 * 32 * 32  # four 32x32 pairs per pass, as given
    plain = Predictor(create_model(**SMALL), batch_size=8, max_batch_pixels=budget).predict_pairs(t0, t1)
    scaled = Predictor(create_model(**SMALL, input_scale=2), batch_size=8, max_batch_pixels=budget).predict_pairs(
        t0, t1
    )
    assert [r.batch_size for r in plain] == [4] * 4
    assert [r.batch_size for r in scaled] == [1] * 4  # each is 64x64 inside the model
