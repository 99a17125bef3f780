"""Paired augmentation beyond crop and flip: alignment of t0, t1 and mask, hand-checked values."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from changeseg.config import ConfigError, build_config
from changeseg.data.pipeline import augment_options
from changeseg.data.transforms import augment_pair, jitter_colour, random_rotate90, rescale, swap_times


def _coded(h, w):
    """Images whose pixels encode their own coordinates; the mask is derived from t0."""
    yy, xx = np.mgrid[0:h, 0:w]
    code = (yy * w + xx).astype(np.int64)
    t0 = np.stack([code % 256, code // 256, np.full_like(code, 7)], -1).astype(np.uint8)
    return {"t0": t0, "t1": t0.copy(), "mask": (code % 251).astype(np.uint8)}


def _decode(img):
    return img[..., 0].astype(np.int64) + 256 * img[..., 1].astype(np.int64)


class _Fixed:
    """A generator stand-in returning chosen draws, to hand-check one transform."""

    def __init__(self, integers=0, uniform=None, random=0.0):
        self._i, self._u, self._r = integers, uniform, random

    def integers(self, *a, **k):
        return self._i

    def uniform(self, *a, size=None, **k):
        return np.array(self._u) if size else self._u

    def random(self):
        return self._r


def test_rotate90_is_the_same_rotation_for_all_three():
    s = _coded(4, 4)
    out = random_rotate90(s, _Fixed(integers=1))
    for key in ("t0", "t1", "mask"):
        assert np.array_equal(out[key], np.rot90(s[key], 1, axes=(0, 1)))
    assert out["t0"][0, 0, 0] == s["t0"][0, 3, 0]  # top-left now shows the old top-right


def test_rotate90_keeps_non_square_shapes():
    rng = np.random.default_rng(0)
    shapes = {random_rotate90(_coded(4, 6), rng)["t0"].shape for _ in range(20)}
    assert shapes == {(4, 6, 3)}


def test_rescale_bilinear_images_nearest_mask():
    s = {
        "t0": np.full((4, 6, 3), 100, np.uint8),
        "t1": np.full((4, 6, 3), 50, np.uint8),
        "mask": np.array([[0, 0, 0, 3, 3, 3]] * 4, np.uint8),
    }
    out = rescale(s, 0.5)
    assert out["t0"].shape == (2, 3, 3) and (out["t0"] == 100).all() and (out["t1"] == 50).all()
    assert set(np.unique(out["mask"])) <= {0, 3}  # nearest: no invented class ids
    assert rescale(s, 1.5)["mask"].shape == (6, 9)


def test_colour_jitter_values_by_hand():
    img = np.array([[[100, 50, 0], [200, 150, 100]]], np.uint8)
    out = jitter_colour(img, _Fixed(uniform=[1.1, 1.0, 1.0]), 0.2)  # brightness x1.1 only
    assert out.tolist() == [[[110, 55, 0], [220, 165, 110]]]
    grey = jitter_colour(img, _Fixed(uniform=[1.0, 1.0, 0.0]), 0.9)  # saturation 0 -> luma grey
    luma = img.astype(np.float64) @ [0.299, 0.587, 0.114]
    assert grey[..., 0].tolist() == grey[..., 2].tolist() == np.rint(luma).astype(int).tolist()


def test_photometric_jitter_is_independent_but_geometry_shared():
    # The same seed with and without jitter: geometry draws come first, so they match.
    rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
    geo = augment_pair(_coded(20, 20), rng_a, crop_size=12, hflip=True, vflip=True, rotate90=True)
    assert np.array_equal(_decode(geo["t0"]) % 251, geo["mask"])
    jit = augment_pair(_coded(20, 20), rng_b, crop_size=12, hflip=True, vflip=True, rotate90=True, color_jitter=0.3)
    assert np.array_equal(jit["mask"], geo["mask"])
    assert not np.array_equal(jit["t0"], jit["t1"])  # t0 and t1 got different illumination


def test_scale_jitter_keeps_mask_aligned():
    rng = np.random.default_rng(2)
    ramp = np.tile((np.arange(32) * 8).astype(np.uint8), (32, 1))  # red rises along x: 0 .. 248
    for _ in range(10):
        t0 = np.stack([ramp, ramp, ramp], -1)
        s = {"t0": t0, "t1": t0.copy(), "mask": (ramp >= 128).astype(np.uint8)}  # a mask derived from the image
        out = augment_pair(s, rng, crop_size=16, hflip=True, vflip=True, scale_jitter=(0.75, 1.5), rotate90=True)
        red = out["t0"][..., 0].astype(int)
        far = np.abs(red - 128) > 12  # bilinear image and nearest mask agree away from the edge
        assert far.sum() > 100 and np.array_equal(out["mask"][far], (red[far] >= 128).astype(np.uint8))


def test_swap_binary_mask_unchanged_and_class_permutation():
    s = {
        "t0": np.zeros((1, 3, 3), np.uint8),
        "t1": np.ones((1, 3, 3), np.uint8),
        "mask": np.array([[0, 1, 255]], np.uint8),
    }
    out = swap_times(s)
    assert (out["t0"] == 1).all() and (out["t1"] == 0).all() and out["mask"].tolist() == [[0, 1, 255]]
    # ChangeSim order: static, new, missing, rotated, replaced -> new <-> missing
    m = {"t0": s["t0"], "t1": s["t1"], "mask": np.array([[0, 1, 2, 3, 4, 255]], np.uint8)}
    assert swap_times(m, [0, 2, 1, 3, 4])["mask"].tolist() == [[0, 2, 1, 3, 4, 255]]
    always = augment_pair(
        m, _Fixed(random=0.0), crop_size=None, hflip=False, vflip=False, swap_prob=1.0, swap_class_map=[0, 2, 1, 3, 4]
    )
    assert always["mask"].tolist() == [[0, 2, 1, 3, 4, 255]] and (always["t0"] == 1).all()


def test_config_fields_off_by_default_and_checked():
    opts = augment_options(build_config({}))
    assert opts["rotate90"] is False and opts["scale_jitter"] is None and opts["color_jitter"] == 0.0
    assert opts["swap_prob"] == 0.0 and opts["hflip"] is True
    with pytest.raises(ConfigError, match="scale_jitter needs data.crop_size"):
        build_config({"data": {"scale_jitter": [0.8, 1.2]}})
    with pytest.raises(ConfigError, match="0 < low <= high"):
        build_config({"data": {"scale_jitter": [1.2, 0.8], "crop_size": 32}})


@pytest.mark.parametrize("name", ["vl_cmu_cd", "pcd", "changesim", "levir_cd"])
def test_dataset_recipes_load_with_the_papers_optimisation(name):
    from pathlib import Path

    from changeseg.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[2] / "jobs" / "configs" / f"{name}.yaml")
    assert cfg.train.lr == 1e-4 and cfg.train.epochs == 100
    assert cfg.train.batch_size * cfg.train.num_workers == 16
    from changeseg.models import resolve_model_args

    arch = resolve_model_args(**cfg.model.factory_kwargs())
    expected_mtf = {"vl_cmu_cd": "id"}.get(name, "iade")
    assert (arch["backbone"], arch["mtf"], arch["msf_scales"], arch["head"]) == (
        "resnet18",
        expected_mtf,
        4,
        "deeplabv3",
    )
    assert arch["num_classes"] == (5 if name == "changesim" else 2) and arch["weights"] == "imagenet"
    sizes = {"vl_cmu_cd": (512, 512), "pcd": (256, 1024), "changesim": (256, 256), "levir_cd": None}
    assert (tuple(cfg.data.resize) if cfg.data.resize else None) == sizes[name]
    assert cfg.data.crop_size == {"pcd": 256, "levir_cd": 256}.get(name)


def test_resize_when_read(tmp_path):
    from helpers import write_pair_folder

    from changeseg.data.pairs import load_pair

    arrays = write_pair_folder(tmp_path, ["a"], size=(8, 12))
    row = {
        "pair_id": "a",
        "t0": str(tmp_path / "t0" / "a.png"),
        "t1": str(tmp_path / "t1" / "a.png"),
        "mask": str(tmp_path / "mask" / "a.png"),
    }
    out = load_pair(row, resize=(16, 24))
    assert out["t0"].shape == (16, 24, 3) and out["mask"].shape == (16, 24)
    # nearest: each mask pixel doubled in both directions
    assert np.array_equal(out["mask"], np.repeat(np.repeat(arrays["a"]["mask"], 2, 0), 2, 1))


def test_resize_and_scale_jitter_keep_every_band_of_a_4_band_pair():
    from changeseg.data.transforms import resize_image

    ramp = np.tile((np.arange(16) * 4).astype(np.uint8), (8, 1))  # v = 4x along x
    bands = np.stack([ramp, ramp // 2, np.full_like(ramp, 30), np.zeros_like(ramp)], -1)  # band 4 = 0: not alpha
    s = {"t0": bands, "t1": bands[..., ::-1].copy(), "mask": (ramp > 30).astype(np.uint8)}
    out = rescale(s, 0.5)
    assert out["t0"].shape == (4, 8, 4) and out["t1"].shape == (4, 8, 4) and out["mask"].shape == (4, 8)
    # Halving a linear ramp: output x samples input x = 2x + 0.5, so v = 8x + 2 away from the edges
    # (the bilinear filter is symmetric there); the constant bands stay constant.
    expected = 8 * np.arange(8) + 2
    np.testing.assert_array_equal(out["t0"][0, 1:-1, 0], expected[1:-1])
    np.testing.assert_array_equal(out["t0"][0, 1:-1, 1], expected[1:-1] // 2)
    assert (out["t0"][..., 2] == 30).all() and (out["t0"][..., 3] == 0).all()
    np.testing.assert_array_equal(out["t1"], out["t0"][..., ::-1])  # every band alike, wherever it sits
    # three of the four bands resize exactly as Pillow resizes an RGB image
    rgb = np.asarray(Image.fromarray(np.ascontiguousarray(bands[..., :3])).resize((8, 4), Image.BILINEAR))
    np.testing.assert_array_equal(out["t0"][..., :3], rgb)
    assert resize_image(np.zeros((3, 5, 6), np.uint8), (10, 6)).shape == (6, 10, 6)  # six bands
    jittered = augment_pair(s, _Fixed(uniform=2.0), crop_size=None, hflip=False, vflip=False, scale_jitter=(2.0, 2.0))
    assert jittered["t0"].shape == (16, 32, 4) and (jittered["t0"][..., 3] == 0).all()
    assert set(np.unique(jittered["mask"])) <= {0, 1}


def test_resize_when_read_keeps_4_bands_of_a_raster_pair(tmp_path):
    import geo_scenes as g

    from changeseg.data.decode import load_pair

    row = g.scene_pair(tmp_path, size=(40, 60))
    raster = {"bands": (1, 2, 3, 4), "scaling": "range", "value_range": (0, 10000)}
    out = load_pair(row, resize=(20, 30), raster=raster)
    assert out["t0"].shape == (20, 30, 4) and out["t1"].shape == (20, 30, 4) and out["mask"].shape == (20, 30)
