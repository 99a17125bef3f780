"""Dataset layout readers: the real sample files in shared/data, and tiny folders written
here in the exact layouts of PCD, VL-CMU-CD and ChangeSim."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SHARED_DATA
from PIL import Image

from changeseg.config import build_config
from changeseg.data.decode import CHANGESIM_COLOURS
from changeseg.data.layouts import scan_dataset
from changeseg.data.pairs import load_pair
from changeseg.data.pipeline import plan_datasets, records_to_rows

needs_shared = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="shared/data not present")


def _save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _rgb(rng, h=8, w=8):
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


@needs_shared
def test_levir_samples_split_by_file_prefix():
    scan = scan_dataset(str(SHARED_DATA / "levir-cd-samples"))
    assert scan.layout == "levir" and not scan.problems
    splits = {s: sorted(r.pair_id for r in scan.records if r.split == s) for s in ("train", "val", "test")}
    assert [len(splits[s]) for s in ("train", "val", "test")] == [3, 1, 7]
    assert splits["val"] == ["val_27_0000_0256"]
    rec = next(r for r in scan.records if r.pair_id == "train_386_0512_0768")
    assert rec.t0.endswith("A/train_386_0512_0768.png") and rec.mask.endswith("label/train_386_0512_0768.png")
    sample = load_pair(rec.to_row(), num_classes=2)
    assert sample["t0"].shape == (256, 256, 3) and sample["mask"].max() == 0  # the pair without change
    with_change = load_pair(next(r for r in scan.records if r.split == "test").to_row(), num_classes=2)
    assert set(np.unique(with_change["mask"])) == {0, 1}


@needs_shared
def test_dsifn_samples_and_plan_holds_out_validation():
    scan = scan_dataset(str(SHARED_DATA / "dsifn-samples"), layout="dsifn")
    assert scan.layout == "dsifn" and len(scan.records) == 10 and {r.split for r in scan.records} == {"train"}
    fractions = [load_pair(r.to_row())["mask"].mean() for r in scan.records]
    assert 0.09 <= min(fractions) and max(fractions) <= 0.66  # README: 9-65 % of pixels change
    cfg = build_config({"data": {"train_path": str(SHARED_DATA / "dsifn-samples"), "val_fraction": 0.2}})
    plan = plan_datasets(cfg)
    assert len(plan.train) == 8 and len(plan.val) == 2 and plan.layout == "levir"


@needs_shared
def test_levir_plan_uses_its_val_split():
    cfg = build_config({"data": {"train_path": str(SHARED_DATA / "levir-cd-samples")}})
    plan = plan_datasets(cfg)
    assert [r.pair_id for r in plan.val] == ["val_27_0000_0256"]
    assert sorted(r.pair_id for r in plan.train) == ["train_36_0512_0512", "train_386_0512_0768", "train_412_0512_0768"]
    cfg = build_config({"data": {"train_path": str(SHARED_DATA / "levir-cd-samples"), "val_split": "test"}})
    assert len(plan_datasets(cfg).val) == 7


@needs_shared
def test_airchange_case_insensitive_names_and_binarised_gt():
    scan = scan_dataset(str(SHARED_DATA / "airchange"))
    assert scan.layout == "airchange" and len(scan.records) == 13 and not scan.problems
    ids = {r.pair_id: r for r in scan.records}
    assert (
        "Archieve" in ids and ids["Szada_5"].t1.endswith("Szada/5/im2.BMP") and ids["Szada_6"].mask.endswith("gt.BMP")
    )
    sample = load_pair(ids["Tiszadob_4"].to_row(), num_classes=2)
    raw = np.asarray(Image.open(ids["Tiszadob_4"].mask).convert("L"))
    assert ((raw != 0) & (raw != 255)).any()  # stray grey pixels exist ...
    assert np.array_equal(sample["mask"], (raw > 127).astype(np.uint8))  # ... and are binarised at 127
    assert sample["t0"].shape == (640, 952, 3) and load_pair(ids["Archieve"].to_row())["t0"].shape == (724, 1048, 3)


def test_generic_folder_reports_incomplete_pairs_and_strict(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(3):
        _save(tmp_path / "t0" / f"p{i}.png", _rgb(rng))
        _save(tmp_path / "mask" / f"p{i}.png", np.zeros((8, 8), np.uint8))
    for i in (0, 1):
        _save(tmp_path / "t1" / f"p{i}.png", _rgb(rng))
    _save(tmp_path / "t1" / "orphan.png", _rgb(rng))
    scan = scan_dataset(str(tmp_path))
    assert scan.layout == "folder" and [r.pair_id for r in scan.records] == ["p0", "p1"]
    assert scan.problems == [("orphan", "no t0 image (t0/orphan.*)"), ("p2", "no t1 image (t1/p2.*)")]
    cfg = build_config({"data": {"train_path": str(tmp_path), "strict": True}})
    with pytest.raises(ValueError, match=r"2 bad pair\(s\) .*data.strict.*orphan: no t0 image"):
        plan_datasets(cfg)


def _write_pcd(root, subset, indices, rng):
    for i in indices:
        _save(root / subset / "t0" / f"{i:08d}.jpg", _rgb(rng, 8, 16))
        _save(root / subset / "t1" / f"{i:08d}.jpg", _rgb(rng, 8, 16))
        mask = np.full((8, 16), 255, np.uint8)
        mask[:, :4] = 0  # black = change
        _save(root / subset / "mask" / f"{i:08d}.png", mask)


def test_pcd_black_is_change_and_five_fold_split(tmp_path):
    rng = np.random.default_rng(1)
    _write_pcd(tmp_path, "TSUNAMI", range(10), rng)
    _write_pcd(tmp_path, "GSV", range(3), rng)
    scan = scan_dataset(str(tmp_path), fold=1)
    assert scan.layout == "pcd" and len(scan.records) == 13
    test_ids = sorted(r.pair_id for r in scan.records if r.split == "test")
    # fold k holds out indices with (i % 10) // 2 == k
    assert test_ids == ["GSV_00000002", "TSUNAMI_00000002", "TSUNAMI_00000003"]
    rec = next(r for r in scan.records if r.pair_id == "TSUNAMI_00000007")
    assert rec.metadata == {"subset": "TSUNAMI", "fold": "3"} and rec.mask_encoding == "binary-inverted"
    mask = load_pair(rec.to_row(), num_classes=2)["mask"]
    assert mask[:, :4].all() and not mask[:, 4:].any()
    cfg = build_config({"data": {"train_path": str(tmp_path), "val_split": "test", "fold": 4}})
    plan = plan_datasets(cfg)
    assert {r.pair_id for r in plan.val} == {"TSUNAMI_00000008", "TSUNAMI_00000009"}
    assert len(plan.train) == 11 and {r.split for r in plan.train} == {"train"}


def test_vl_cmu_cd_train_test_folders(tmp_path):
    rng = np.random.default_rng(2)
    for split, names in (("train", ["000_1_00", "000_1_01"]), ("test", ["000_1_00"])):
        for n in names:
            for sub in ("t0", "t1"):
                _save(tmp_path / split / sub / f"{n}.png", _rgb(rng))
            _save(tmp_path / split / "mask" / f"{n}.png", np.eye(8, dtype=np.uint8) * 255)
    scan = scan_dataset(str(tmp_path), layout="vl_cmu_cd")
    assert sorted((r.split, r.pair_id) for r in scan.records) == [
        ("test", "test_000_1_00"),
        ("train", "train_000_1_00"),
        ("train", "train_000_1_01"),
    ]
    assert np.array_equal(load_pair(scan.records[0].to_row())["mask"], np.eye(8, dtype=np.uint8))
    assert scan_dataset(str(tmp_path)).layout == "folder"  # auto: the same generic layout


def test_changesim_colour_map_binary_and_five_classes(tmp_path):
    rng = np.random.default_rng(3)
    colours = {cls: rgb for rgb, cls in CHANGESIM_COLOURS.items()}
    classes = np.array([[0, 1, 2, 3], [4, 255, 0, 1]], dtype=np.uint8)
    colour_mask = np.zeros((2, 4, 3), np.uint8)
    for cls, rgb in colours.items():
        colour_mask[classes == cls] = rgb
    for set_name, world in (("Train", "Warehouse_0"), ("Test", "Warehouse_6")):
        seq = tmp_path / "Query" / f"Query_Seq_{set_name}" / world / "Seq_0"
        _save(seq / "rgb" / "0.png", _rgb(rng, 2, 4))
        _save(seq / "t0" / "rgb" / "0.png", _rgb(rng, 2, 4))
        _save(seq / "change_segmentation" / "0.png", colour_mask)
    _save(tmp_path / "Query" / "Query_Seq_Train" / "Warehouse_1" / "Seq_1" / "rgb" / "5.png", _rgb(rng, 2, 4))

    multi = scan_dataset(str(tmp_path), num_classes=5)
    assert multi.layout == "changesim"
    assert sorted((r.split, r.pair_id) for r in multi.records) == [
        ("test", "Warehouse_6_Seq_0_0"),
        ("train", "Warehouse_0_Seq_0_0"),
    ]
    assert multi.problems[0][0] == "Warehouse_1_Seq_1_5" and "no reference frame" in multi.problems[0][1]
    rec = multi.records[0]
    assert rec.mask_encoding == "colormap:changesim" and rec.t0.endswith("Seq_0/t0/rgb/0.png")
    assert np.array_equal(load_pair(rec.to_row(), num_classes=5)["mask"], classes)
    binary = scan_dataset(str(tmp_path), num_classes=2).records[0]
    expected = np.where(classes == 255, 255, classes > 0).astype(np.uint8)
    assert np.array_equal(load_pair(binary.to_row(), num_classes=2)["mask"], expected)


def test_unknown_layout_is_named(tmp_path):
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "a.txt").write_text("x")
    with pytest.raises(ValueError, match="cannot tell the layout"):
        scan_dataset(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="dataset folder not found"):
        scan_dataset(str(tmp_path / "nope"))


def test_rows_carry_the_mask_encoding(tmp_path):
    rng = np.random.default_rng(4)
    _write_pcd(tmp_path, "GSV", [0], rng)
    rows = records_to_rows(scan_dataset(str(tmp_path)).records)
    assert rows[0]["mask_encoding"] == "binary-inverted" and rows[0]["shard"] == "" and rows[0]["shard_row"] == -1
