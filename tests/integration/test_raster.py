"""GeoTIFF pairs: reading, bands and scaling, nodata, alignment, bad input, training windows, band-count models."""

from __future__ import annotations

import geo_scenes as g
import numpy as np
import pytest
import torch

from changeseg.data.pairs import load_pair
from changeseg.data.raster import RasterOptions

FOUR = {
    "bands": (1, 2, 3, 4),
    "scaling": "range",
    "value_range": (0, 10000),
    "percentiles": (2, 98),
    "align": "reproject",
}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    return {
        "same": g.scene_pair(root / "same"),
        "shifted": g.scene_pair(root / "shifted", shift=(3, 5)),
        "other_crs": g.scene_pair(root / "crs", t1_crs="EPSG:32634"),
        "three_bands": g.scene_pair(root / "three", bands=3, mask=False),
        "root": root,
    }


def test_reading_bands_scaling_and_nodata(scenes):
    row = scenes["same"]
    raw = g.texture(g.HEIGHT + 40, g.WIDTH + 40)[:, 20 : 20 + g.HEIGHT, 20 : 20 + g.WIDTH]
    s = load_pair(row, raster=FOUR)
    assert s["t0"].shape == (g.HEIGHT, g.WIDTH, 4) and s["t0"].dtype == np.uint8
    y, x = 100, 200
    assert s["t0"][y, x].tolist() == np.rint(raw[:, y, x] / 10000 * 255).astype(int).tolist()
    # dtype scaling divides by 65535; the default bands are the first three
    d = load_pair(row, raster={**FOUR, "bands": None, "scaling": "dtype"})
    assert (
        d["t0"].shape[-1] == 3 and d["t0"][y, x].tolist() == np.rint(raw[:3, y, x] / 65535 * 255).astype(int).tolist()
    )
    # percentile scaling stretches each band over its 2-98 % range
    p = load_pair(row, raster={**FOUR, "scaling": "percentile"})
    valid = p["mask"] != 255
    assert p["t0"][valid].min() == 0 and p["t0"][valid].max() == 255
    # band selection and order
    picked = load_pair(row, raster={**FOUR, "bands": (4, 1)})
    assert picked["t0"][y, x].tolist() == [s["t0"][y, x, 3], s["t0"][y, x, 0]]
    # nodata borders: zero in the images, ignored in the mask
    assert (s["mask"][: g.BORDER] == 255).all() and (s["mask"][:, : g.BORDER] == 255).all()
    assert (s["t0"][: g.BORDER] == 0).all() and (s["mask"][g.BORDER :, g.BORDER :] != 255).all()
    rows, cols = g.change_box(g.HEIGHT, g.WIDTH)
    assert s["mask"][rows, cols].min() == 1 and int((s["mask"] == 1).sum()) == (rows.stop - rows.start) * (
        cols.stop - cols.start
    )


def test_single_band_is_repeated(tmp_path):
    one = g.write(tmp_path / "t0" / "a.tif", g.texture(64, 80, bands=1))
    g.write(tmp_path / "t1" / "a.tif", g.texture(64, 80, bands=1))
    s = load_pair({"pair_id": "a", "t0": str(one), "t1": str(tmp_path / "t1" / "a.tif")}, raster={})
    assert s["t0"].shape == (64, 80, 3) and (s["t0"][..., 0] == s["t0"][..., 2]).all()


def test_reproject_aligns_a_shifted_t1(scenes):
    s = load_pair(scenes["shifted"], raster=FOUR)
    inner = (slice(30, 290), slice(30, 390))  # away from the nodata border and the change
    assert np.array_equal(s["t0"][inner], s["t1"][inner])
    rows, cols = g.change_box(g.HEIGHT, g.WIDTH)
    assert (s["t1"][rows, cols] == round(9000 / 10000 * 255)).all()  # the change lands on t0's grid


def test_reject_refuses_other_grids_with_the_reason(scenes):
    with pytest.raises(ValueError, match="not on t0's grid .*transform.*data.align is reject"):
        load_pair(scenes["shifted"], raster={**FOUR, "align": "reject"})
    with pytest.raises(ValueError, match="CRS EPSG:32634 vs t0's EPSG:32633"):
        load_pair(scenes["other_crs"], raster={**FOUR, "align": "reject"})


def test_non_overlapping_footprints_are_a_bad_pair(tmp_path):
    from rasterio.transform import from_origin

    t0 = g.write(tmp_path / "a.tif", g.texture(64, 64))
    far = g.write(tmp_path / "b.tif", g.texture(64, 64), transform=from_origin(600_000, 4_000_000, 10, 10))
    with pytest.raises(ValueError, match="pair p: t1's footprint does not overlap t0's"):
        load_pair({"pair_id": "p", "t0": str(t0), "t1": str(far)}, raster=FOUR)


def test_bad_input_gives_clear_messages(scenes, tmp_path):
    corrupt = tmp_path / "corrupt.tif"
    corrupt.write_bytes(b"II*\x00" + b"\x00" * 64)
    row = scenes["same"]
    with pytest.raises(ValueError, match="t1 is not a readable raster"):
        load_pair({**row, "t1": str(corrupt)}, raster=FOUR)
    with pytest.raises(ValueError, match="t0 has 4 band\\(s\\) but t1 has 3"):
        load_pair({**row, "t1": scenes["three_bands"]["t1"], "mask": None}, raster={**FOUR, "bands": None})
    with pytest.raises(ValueError, match="t0 has 4 band\\(s\\); data.bands asks for band 5"):
        load_pair(row, raster={**FOUR, "bands": (1, 2, 5)})


def test_training_reads_random_windows_only(scenes, monkeypatch):
    from changeseg.config import build_config
    from changeseg.data import raster
    from changeseg.data.pipeline import _LoadPair, augment_options, load_options

    seen = []
    real = raster.read_scaled
    monkeypatch.setattr(
        raster,
        "read_scaled",
        lambda ds, bands, ranges, window=None: seen.append(window) or real(ds, bands, ranges, window),
    )
    cfg = build_config(
        {"data": {"bands": [1, 2, 3, 4], "crop_size": 64, "scaling": "range", "value_range": [0, 10000]}}
    )
    loader = _LoadPair(load=load_options(cfg), augment=augment_options(cfg))
    out = loader(dict(scenes["shifted"], mask_encoding="", shard="", shard_row=-1))
    assert len(out) == 1 and out[0]["t0"].shape == (64, 64, 4) and out[0]["mask"].shape == (64, 64)
    assert seen and all(w is not None and (w.width, w.height) == (64, 64) for w in seen)


def test_config_links_bands_roles_and_channels():
    from changeseg.config import ConfigError, build_config

    cfg = build_config({"data": {"bands": [1, 2, 3, 4], "band_roles": ["blue", "green", "red", "nir"]}})
    assert cfg.model.in_channels == 4 and cfg.model.rgb_channels == [2, 1, 0]
    with pytest.raises(ConfigError, match="value_range"):
        build_config({"data": {"scaling": "range"}})
    with pytest.raises(ConfigError, match="in_channels=5 but data.bands picks 4"):
        build_config({"data": {"bands": [1, 2, 3, 4]}, "model": {"in_channels": 5}})
    assert RasterOptions().scaling == "dtype"


def test_four_band_model_keeps_rgb_filters_and_exports(tmp_path):
    import torchvision

    from changeseg.models import create_model
    from changeseg.models.weights import load_checkpoint, save_checkpoint

    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pth")
    source = torch.load(tmp_path / "r18.pth")["conv1.weight"]
    model = create_model(
        backbone="resnet18",
        msf_width=16,
        msf_scales=2,
        head="fcn",
        in_channels=4,
        rgb_channels=[2, 1, 0],
        weights="imagenet",
        weights_file=str(tmp_path / "r18.pth"),
    )
    conv = model.backbone.stem[0].weight
    assert conv.shape[1] == 4
    assert torch.allclose(conv[:, 2] * 4 / 3, source[:, 0]) and torch.allclose(conv[:, 0] * 4 / 3, source[:, 2])
    assert torch.allclose(conv[:, 3] * 4 / 3, source.mean(1))
    assert model.mean.flatten().tolist() == pytest.approx([0.406, 0.456, 0.485, 0.45])
    save_checkpoint(tmp_path / "ck", model)
    again, _ = load_checkpoint(tmp_path / "ck")
    assert again.config["in_channels"] == 4 and torch.equal(again.backbone.stem[0].weight, conv)
    x = torch.rand(1, 4, 64, 64)
    assert model.eval()(x, x).shape == (1, 2, 64, 64)
    with pytest.raises(ValueError, match=r"\(N, 4, H, W\)"):
        model(torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64))
    pytest.importorskip("onnxruntime")
    from changeseg.export import check_onnx_parity, export_onnx

    assert check_onnx_parity(again, export_onnx(again, tmp_path / "m.onnx", height=64, width=64)) < 1e-3


def test_fine_tune_four_bands_from_imagenet_weights(tmp_path):
    import torchvision

    from changeseg.config import build_config
    from changeseg.data.records import PairRecord
    from changeseg.training.local import fit_local

    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pth")
    row = g.scene_pair(tmp_path / "s", size=(160, 200))
    cfg = build_config(
        {
            "data": {
                "bands": [1, 2, 3, 4],
                "band_roles": ["blue", "green", "red", "nir"],
                "crop_size": 64,
                "scaling": "range",
                "value_range": [0, 10000],
                "repeat": 4,
            },
            "model": {
                "backbone": "resnet18",
                "msf_width": 16,
                "msf_scales": 2,
                "head": "fcn",
                "weights": "imagenet",
                "weights_file": str(tmp_path / "r18.pth"),
            },
            "train": {"epochs": 1, "batch_size": 2, "num_workers": 1, "class_weights": "none"},
        }
    )
    record = PairRecord(row["pair_id"], row["t0"], row["t1"], row["mask"])
    fit = fit_local(cfg, [record], device="cpu", progress=None)
    assert fit.steps == 2 and all(np.isfinite(fit.losses))
    assert fit.model.backbone.stem[0].weight.shape[1] == 4


def test_s3_scenes_are_read_in_place_window_by_window(tmp_path, s3_endpoint, s3_bucket, monkeypatch, scenes):
    import rasterio

    from changeseg import storage
    from changeseg.config import StorageSection
    from changeseg.data.raster import load_raster_pair
    from changeseg.inference.predictor import Predictor
    from changeseg.inference.scene import SceneOptions, score_scene
    from changeseg.models import create_model

    opts = StorageSection(endpoint_url=s3_endpoint)
    local = scenes["shifted"]  # t1 on another grid: its WarpedVRT reads /vsis3/ too
    remote = {"pair_id": "scene"}
    for key in ("t0", "t1", "mask"):
        remote[key] = f"s3://{s3_bucket}/scenes/{key}/scene.tif"
        storage.write_bytes(remote[key], open(local[key], "rb").read(), opts)

    def no_download(*_a, **_k):
        raise AssertionError("a remote raster was downloaded whole")

    monkeypatch.setattr(storage, "read_bytes", no_download)  # the only way to a whole copy
    window = load_raster_pair(remote, raster=FOUR, storage_options=opts, crop=(64, np.random.default_rng(5)))
    expected = load_raster_pair(local, raster=FOUR, crop=(64, np.random.default_rng(5)))
    assert window["t0"].shape == (64, 64, 4)
    for key in ("t0", "t1", "mask"):
        np.testing.assert_array_equal(window[key], expected[key])

    torch.manual_seed(0)
    model = create_model(backbone="resnet18", msf_width=16, msf_scales=2, head="fcn", in_channels=4)
    predictor = Predictor(model, tile_size=256, tile_overlap=32, batch_size=2)
    outs = [
        score_scene(
            predictor, row, output_uri=str(tmp_path / name), opts=SceneOptions(raster=FOUR), storage_options=opts
        )
        for name, row in (("s3", remote), ("local", local))
    ]
    assert outs[0]["tiles"] > 1 and outs[0]["metrics_state"] == outs[1]["metrics_state"]
    with rasterio.open(outs[0]["mask_uri"]) as a, rasterio.open(outs[1]["mask_uri"]) as b:
        np.testing.assert_array_equal(a.read(1), b.read(1))
