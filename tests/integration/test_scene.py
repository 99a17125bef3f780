"""Scoring georeferenced scenes: COG outputs on t0's grid, polygons on the changed pixels, bounded memory, result rows."""

from __future__ import annotations

import json
import tracemalloc

import geo_scenes as g
import numpy as np
import pytest
import torch

from changeseg.inference.scene import SceneOptions, score_scene

RASTER = {
    "bands": (1, 2, 3, 4),
    "scaling": "range",
    "value_range": (0, 10000),
    "percentiles": (2, 98),
    "align": "reproject",
}


@pytest.fixture(scope="module")
def predictor():
    from changeseg.inference.predictor import Predictor
    from changeseg.models import create_model

    torch.manual_seed(0)
    model = create_model(backbone="resnet18", msf_width=16, msf_scales=2, head="fcn", in_channels=4)
    return Predictor(model, tile_size=96, tile_overlap=16, batch_size=4)


def test_scene_outputs_are_cogs_on_t0s_grid(tmp_path, predictor):
    import rasterio
    from rio_cogeo.cogeo import cog_validate

    row = g.scene_pair(tmp_path / "in", shift=(3, 5), size=(160, 200))
    opts = SceneOptions(raster=RASTER, write_probabilities=True, regions_crs="EPSG:4326")
    out = score_scene(predictor, row, output_uri=str(tmp_path / "out"), opts=opts)
    assert out["tiles"] > 1 and out["crs"] == "EPSG:32633" and out["metrics_state"] is not None
    with (
        rasterio.open(row["t0"]) as t0,
        rasterio.open(out["mask_uri"]) as mask,
        rasterio.open(out["probability_uri"]) as prob,
    ):
        assert mask.crs == t0.crs and mask.transform == t0.transform and mask.shape == t0.shape
        assert mask.nodata == 255 and prob.crs == t0.crs and prob.dtypes[0] == "uint8"
        m = mask.read(1)
        assert (m[: g.BORDER] == 255).all() and (m[g.BORDER :, g.BORDER :] != 255).all()  # nodata marked
        assert (prob.read_masks(1)[: g.BORDER] == 0).all()
        assert out["bounds"] == [t0.bounds.left, t0.bounds.bottom, t0.bounds.right, t0.bounds.top]
    for uri in (out["mask_uri"], out["probability_uri"]):
        valid, errors, _ = cog_validate(uri)
        assert valid, errors
    regions = json.loads(open(out["regions_uri"]).read())
    assert "crs" not in regions and len(regions["features"]) == out["regions_total"]
    for feature in regions["features"]:  # EPSG:4326: lon/lat near UTM 33N's origin
        lon, lat = feature["geometry"]["coordinates"][0][0]
        assert 14 < lon < 16 and 35 < lat < 37


def test_streamed_windows_match_the_whole_pair_through_the_inference_core(tmp_path, predictor):
    import rasterio

    from changeseg.data.raster import load_raster_pair

    row = g.scene_pair(tmp_path / "in", shift=(3, 5), size=(230, 250))
    out = score_scene(predictor, row, output_uri=str(tmp_path / "out"), opts=SceneOptions(raster=RASTER))
    whole = load_raster_pair(row, raster=RASTER)
    expected = predictor.predict_pairs([whole["t0"]], [whole["t1"]])[0].mask
    valid = whole["t0"].any(-1) | whole["t1"].any(-1)  # what the reader keeps: both valid
    with rasterio.open(out["mask_uri"]) as mask:
        streamed = mask.read(1)
    assert out["tiles"] == 9 and (streamed[~valid] == 255).all()
    np.testing.assert_array_equal(streamed[valid], expected[valid])


def test_polygons_land_on_the_changed_pixels(tmp_path):
    import rasterio
    from rasterio.transform import from_origin

    from changeseg.inference.geo_outputs import write_regions

    mask = np.zeros((1, 150, 170), np.uint8)
    mask[0, 40:90, 50:130] = 1  # spans the inner borders of 64-px blocks
    mask[0, 10:14, 10:13] = 2
    mask[0, 0:5, 160:170] = 255  # nodata is not a region
    path = g.write(tmp_path / "m.tif", mask, nodata=255)
    writer = write_regions(path, tmp_path / "r.geojson", block=64, min_area=1)
    data = json.loads((tmp_path / "r.geojson").read_text())
    assert data["crs"]["properties"]["name"].endswith("32633") and writer.count == 2
    big = max(data["features"], key=lambda f: f["properties"]["pixels"])
    props = big["properties"]
    x0, y0 = g.ORIGIN[0] + 50 * g.PIXEL, g.ORIGIN[1] - 90 * g.PIXEL
    assert props["class"] == 1 and props["pixels"] == 50 * 80 and props["area_m2"] == pytest.approx(50 * 80 * 100)
    assert props["bounds"] == pytest.approx([x0, y0, x0 + 80 * g.PIXEL, y0 + 50 * g.PIXEL])
    assert writer.top()[0] == {"class": 1, "bbox": [50, 40, 130, 90], "area": 4000}
    # geographic CRS: geodesic areas in square metres
    geo = g.write(
        tmp_path / "geo.tif", mask, nodata=255, crs="EPSG:4326", transform=from_origin(15.0, 36.0, 1e-4, 1e-4)
    )
    write_regions(geo, tmp_path / "g.geojson", block=64)
    area = max(f["properties"]["area_m2"] for f in json.loads((tmp_path / "g.geojson").read_text())["features"])
    assert 4000 * 9.0 * 11.1 * 0.9 < area < 4000 * 9.0 * 11.1 * 1.1  # ~9.0 m x 11.1 m per pixel at 36 degrees N
    with rasterio.open(path) as ds:
        assert ds.crs.to_epsg() == 32633


def _peak(predictor, row, out) -> int:
    tracemalloc.start()
    score_scene(predictor, row, output_uri=str(out), opts=SceneOptions(raster=RASTER, write_probabilities=True))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def test_peak_memory_does_not_grow_with_the_scene(tmp_path, predictor, monkeypatch):
    import functools

    from changeseg.inference import scene
    from changeseg.inference.geo_outputs import write_regions
    from changeseg.inference.predictor import Predictor

    # Every bound must be reached by both scenes: more batches than the read-ahead and
    # write-behind queues hold, and polygons in blocks smaller than the small scene (4096 px
    # by default). A random model marks the whole scene changed, one polygon that grows
    # with the scene: a cut no pixel reaches keeps the measurement on the stream.
    monkeypatch.setattr(scene, "write_regions", functools.partial(write_regions, block=128))
    predictor = Predictor(predictor.model, tile_size=96, tile_overlap=16, batch_size=4, threshold=1.0)
    small = g.scene_pair(tmp_path / "small", size=(384, 384))
    large = g.scene_pair(tmp_path / "large", size=(1152, 1152))  # 9x the pixels
    _peak(predictor, small, tmp_path / "warm")
    ratio = _peak(predictor, large, tmp_path / "o2") / _peak(predictor, small, tmp_path / "o1")
    assert ratio < 1.5, ratio


def test_batch_stages_give_scene_rows_and_error_rows(tmp_path, predictor):
    from changeseg.config import build_config
    from changeseg.data.pipeline import load_options
    from changeseg.inference.score_actor import Decode as _Decode
    from changeseg.inference.score_actor import Scorer as _Scorer
    from changeseg.inference.score_results import RESULT_SCHEMA

    cfg = build_config(
        {"data": {"bands": [1, 2, 3, 4], "scaling": "range", "value_range": [0, 10000], "align": "reject"}}
    )
    good = g.scene_pair(tmp_path / "a", pid="good", size=(120, 140))
    moved = g.scene_pair(tmp_path / "b", pid="moved", shift=(2, 2), size=(120, 140))
    corrupt = tmp_path / "bad.tif"
    corrupt.write_bytes(b"II*\x00not a tiff")
    rows = [good, moved, {"pair_id": "corrupt", "t0": str(corrupt), "t1": good["t1"]}]
    decode = _Decode(load_options(cfg))
    decoded = [decode(dict(r, mask=r.get("mask", ""))) for r in rows]
    assert decoded[0]["scene"] and "not a readable raster" in decoded[2]["error"]
    scorer = _Scorer.__new__(_Scorer)
    scorer.cfg, scorer.output, scorer.info, scorer.predictor = cfg, str(tmp_path / "out"), {"name": "m"}, predictor
    scorer.num_classes = 2
    batch = {k: np.array([d[k] for d in decoded], dtype=object) for k in decoded[0]}
    table = scorer(batch).to_pylist()
    assert set(RESULT_SCHEMA.names) >= {"crs", "bounds", "regions_uri"}
    by_id = {r["pair_id"]: r for r in table}
    assert (
        by_id["good"]["status"] == "ok"
        and by_id["good"]["crs"] == "EPSG:32633"
        and by_id["good"]["mask_uri"].endswith("good.tif")
    )
    assert by_id["moved"]["status"] == "error" and "data.align is reject" in by_id["moved"]["error"]
    assert by_id["corrupt"]["status"] == "error" and "corrupt" in by_id
