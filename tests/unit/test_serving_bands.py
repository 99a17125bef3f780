"""Serving GeoTIFF pairs: multi-band 16-bit payloads read by the scene rules, fed to a
4-channel model; band counts the model cannot take are 4xx answers."""

from __future__ import annotations

import asyncio

import geo_scenes as g
import numpy as np
import pytest
import torch

from changeseg.serving.inputs import BandMismatch, RequestError, decode_request_image, match_sizes

RASTER = {"bands": [1, 2, 3, 4], "scaling": "range", "value_range": [0, 10000]}


def _api(data: dict | None = None):
    """ChangeAPI's own class outside Serve (its handler methods, no replica)."""
    from changeseg.serving.app import ChangeAPI

    cls = ChangeAPI.func_or_class.__mro__[1]
    api = cls.__new__(cls)
    cls.__init__(api, None, {"tracking": {"tracking_uri": "sqlite:///unused.db"}, "data": data or {}})
    return api


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    row = g.scene_pair(tmp_path_factory.mktemp("scene"), size=(40, 56), mask=False)
    return row, open(row["t0"], "rb").read(), open(row["t1"], "rb").read()


def _predictor(channels: int):
    from changeseg.inference.predictor import Predictor
    from changeseg.models import create_model

    torch.manual_seed(0)
    return Predictor(create_model(backbone="resnet18", msf_width=16, msf_scales=2, head="fcn", in_channels=channels))


def test_geotiff_payloads_are_read_like_scene_files_and_served_by_a_4_band_model(scene):
    from changeseg.data.raster import load_raster_pair
    from changeseg.serving.api import _Fields
    from changeseg.serving.model import _Item, _run_batch

    row, b0, b1 = scene
    api = _api(RASTER)
    t0, t1 = api._decode(_Fields(b0, b1, None, True, True))
    files = load_raster_pair(row, raster=RASTER)  # the training and batch-scoring path
    assert t0.shape == (40, 56, 4) and t0.dtype == np.uint8
    np.testing.assert_array_equal(t0, files["t0"])
    np.testing.assert_array_equal(t1, files["t1"])
    assert (t0[: g.BORDER] == 0).all() and t0[30, 30, 0] == round(g.texture(80, 96)[0, 50, 50] / 10000 * 255)

    predictor = _predictor(4)
    [result] = _run_batch([_Item(predictor, t0, t1, True)])
    np.testing.assert_array_equal(result["mask"], predictor.predict_pairs([t0], [t1])[0].mask)
    payload = api._postprocess(t0, t1, result, _Fields(b0, b1, None, True, True))
    assert payload["overlay_png"] and payload["change_probability_png"]


def test_band_counts_the_model_cannot_take_are_422(scene):
    from changeseg.serving.model import _Item, _run_batch

    _, b0, _ = scene
    four = decode_request_image(b0, field="t0", max_pixels=10_000, raster=RASTER)
    three = decode_request_image(b0, field="t0", max_pixels=10_000, raster={**RASTER, "bands": None})  # the first three
    assert four.shape[-1] == 4 and three.shape[-1] == 3
    np.testing.assert_array_equal(three, four[..., :3])
    ok, wrong = _run_batch([_Item(_predictor(3), three, three, False), _Item(_predictor(3), four, four, False)])
    assert ok["mask"].shape == (40, 56) and isinstance(wrong, BandMismatch) and "takes 3" in str(wrong)

    class _Handle:  # the model deployment answering with the replica's error
        def options(self, **_):
            return self

        class predict:  # noqa: N801 - mirrors handle.predict.remote
            @staticmethod
            def remote(*_):
                async def fail():
                    raise wrong

                return asyncio.ensure_future(fail())

    api = _api(RASTER)
    api.model = _Handle()
    with pytest.raises(RequestError) as err:
        asyncio.run(api._call_model(1, four, four, False))
    assert (err.value.status, err.value.code) == (422, "band_mismatch") and "takes 3" in err.value.message
    with pytest.raises(RequestError) as err:
        decode_request_image(b0, field="t0", max_pixels=10_000, raster={**RASTER, "bands": [1, 5]})
    assert (err.value.status, err.value.code) == (422, "bad_bands") and "band 5" in err.value.message
    with pytest.raises(RequestError) as err:
        match_sizes(four, three, policy="resize")
    assert err.value.code == "band_mismatch"
    with pytest.raises(RequestError) as err:
        decode_request_image(b0, field="t0", max_pixels=1000, raster=RASTER)
    assert err.value.status == 413


def test_a_4_band_pair_of_other_sizes_is_resized_band_by_band():
    t0, t1 = np.zeros((20, 30, 4), np.uint8), np.full((10, 15, 4), 200, np.uint8)
    t1[..., 3] = 0  # a 4th band is a band, not alpha
    out = match_sizes(t0, t1, policy="resize")
    assert out.shape == (20, 30, 4) and (out[..., :3] == 200).all() and (out[..., 3] == 0).all()
