import io

import numpy as np
import pytest
from helpers import write_pair_folder
from PIL import Image

from changeseg.data.decode import decode_image, decode_mask, encode_png
from changeseg.data.pairs import load_pair
from changeseg.data.records import scan_folder, split_records
from changeseg.data.transforms import augment_pair, random_crop, random_flip


def _png(array, mode=None):
    buf = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buf, format="PNG") if mode else Image.fromarray(array).save(
        buf, format="PNG"
    )
    return buf.getvalue()


def test_scan_folder_matches_pairs_by_stem(tmp_path):
    write_pair_folder(tmp_path, ["b", "a", "c"])
    records = scan_folder(str(tmp_path))
    assert [r.pair_id for r in records] == ["a", "b", "c"]
    assert records[0].t0.endswith("t0/a.png") and records[0].mask.endswith("mask/a.png")


def test_scan_folder_missing_path_is_named(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        scan_folder(str(missing))


def test_scan_folder_missing_subfolder(tmp_path):
    (tmp_path / "t0").mkdir()
    with pytest.raises(FileNotFoundError, match="'t1/'"):
        scan_folder(str(tmp_path))


def test_scan_folder_reports_incomplete_pairs(tmp_path):
    write_pair_folder(tmp_path, ["a", "b"])
    (tmp_path / "t1" / "b.png").unlink()
    with pytest.raises(ValueError, match=r"1 pair\(s\) lack a t1 image or a mask: b"):
        scan_folder(str(tmp_path))


def test_scan_folder_without_masks_when_allowed(tmp_path):
    write_pair_folder(tmp_path, ["a"])
    for f in (tmp_path / "mask").iterdir():
        f.unlink()
    (tmp_path / "mask").rmdir()
    assert scan_folder(str(tmp_path), require_masks=False)[0].mask is None


def test_split_is_deterministic_and_disjoint(tmp_path):
    write_pair_folder(tmp_path, [f"p{i}" for i in range(10)], size=(8, 8))
    records = scan_folder(str(tmp_path))
    train, val = split_records(records, val_fraction=0.2, seed=3)
    again, val_again = split_records(records, val_fraction=0.2, seed=3)
    assert [r.pair_id for r in val] == [r.pair_id for r in val_again] and len(val) == 2
    assert not {r.pair_id for r in train} & {r.pair_id for r in val}
    assert len(train) + len(val) == 10
    with pytest.raises(ValueError, match="at least 2 pairs"):
        split_records(records[:1], val_fraction=0.2, seed=0)


def test_decode_mask_binary_conventions():
    zero_255 = np.array([[0, 255], [255, 0]], dtype=np.uint8)
    assert decode_mask(_png(zero_255)).tolist() == [[0, 1], [1, 0]]
    zero_one = np.array([[0, 1], [1, 1]], dtype=np.uint8)
    assert decode_mask(_png(zero_one)).tolist() == [[0, 1], [1, 1]]
    # Stray grey pixels (as in AirChange) are binarised at 127.
    grey = np.array([[0, 100], [200, 255]], dtype=np.uint8)
    assert decode_mask(_png(grey)).tolist() == [[0, 0], [1, 1]]


def test_decode_mask_index_keeps_class_ids():
    ids = np.array([[0, 1], [4, 255]], dtype=np.uint8)
    assert decode_mask(_png(ids), mask_values="index").tolist() == [[0, 1], [4, 255]]


def test_decode_image_converts_to_rgb():
    grey = np.full((3, 4), 7, dtype=np.uint8)
    rgb = decode_image(_png(grey))
    assert rgb.shape == (3, 4, 3) and rgb.dtype == np.uint8 and (rgb == 7).all()


def test_load_pair_round_trip_and_size_mismatch(tmp_path):
    arrays = write_pair_folder(tmp_path, ["x"], size=(6, 9))
    record = scan_folder(str(tmp_path))[0].to_row()
    sample = load_pair(record)
    assert np.array_equal(sample["t0"], arrays["x"]["t0"]) and np.array_equal(sample["mask"], arrays["x"]["mask"])
    (tmp_path / "t1" / "x.png").write_bytes(encode_png(np.zeros((5, 9, 3), dtype=np.uint8)))
    with pytest.raises(ValueError, match=r"pair x: t0 is \(6, 9\) but t1 is \(5, 9\)"):
        load_pair(record)


def _coordinate_sample(h, w):
    """t0/t1/mask whose values encode their own coordinates, to check alignment."""
    yy, xx = np.mgrid[0:h, 0:w]
    code = (yy * w + xx).astype(np.int64)
    t0 = np.stack([code % 256, code // 256, np.zeros_like(code)], -1).astype(np.uint8)
    return {"t0": t0, "t1": t0.copy(), "mask": (code % 251).astype(np.uint8)}


def test_crop_and_flip_keep_t0_t1_mask_aligned():
    rng = np.random.default_rng(0)
    for _ in range(20):
        sample = augment_pair(_coordinate_sample(20, 30), rng, crop_size=12, hflip=True, vflip=True)
        assert sample["t0"].shape == (12, 12, 3) and sample["mask"].shape == (12, 12)
        code = sample["t0"][..., 0].astype(np.int64) + 256 * sample["t0"][..., 1].astype(np.int64)
        assert np.array_equal(sample["t0"], sample["t1"])
        assert np.array_equal(code % 251, sample["mask"])


def test_crop_pads_small_images_with_ignore_index():
    sample = _coordinate_sample(5, 5)
    out = random_crop(sample, 8, np.random.default_rng(0), ignore_index=255)
    assert out["t0"].shape == (8, 8, 3)
    assert (out["mask"][5:, :] == 255).all() and (out["mask"][:, 5:] == 255).all()
    assert (out["t0"][5:, :] == 0).all()


def test_flip_is_a_real_flip():
    sample = _coordinate_sample(4, 6)

    class Always:
        def random(self):
            return 0.0

    out = random_flip(sample, Always(), horizontal=True, vertical=False)
    assert np.array_equal(out["t0"], sample["t0"][:, ::-1]) and np.array_equal(out["mask"], sample["mask"][:, ::-1])


def test_load_pair_keeps_its_former_import_path():
    from changeseg.data import decode, pairs

    assert decode.load_pair is pairs.load_pair
