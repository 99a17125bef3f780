"""Manifests, packed shards, bad pairs, the prepare job; locally and on loopback S3."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import write_pair_folder

from changeseg import storage
from changeseg.cli import prepare_main
from changeseg.config import StorageSection, build_config
from changeseg.data.decode import encode_png
from changeseg.data.layouts import scan_dataset
from changeseg.data.manifest import read_manifest, write_manifest
from changeseg.data.packing import pack_shards
from changeseg.data.pairs import load_pair
from changeseg.data.pipeline import pair_dataset, plan_datasets, records_to_rows, screen_plan
from changeseg.data.prepare import prepare_dataset
from changeseg.data.records import PairRecord
from changeseg.data.shards import read_shard_records


def _spoil(root):
    """Four bad pairs beside the good ones: one per kind of fault."""
    write_pair_folder(root, ["bad_decode", "bad_size", "bad_values", "bad_missing"], size=(12, 16), seed=9)
    (root / "t1" / "bad_decode.png").write_bytes(b"not an image")
    (root / "mask" / "bad_size.png").write_bytes(encode_png(np.zeros((10, 16), np.uint8)))
    (root / "mask" / "bad_values.png").write_bytes(encode_png(np.tile(np.arange(16, dtype=np.uint8) * 9, (12, 1))))
    (root / "t0" / "bad_missing.png").unlink()


def test_manifest_round_trip_and_relative_paths(tmp_path):
    records = [
        PairRecord("a", "/x/t0/a.png", "/x/t1/a.png", "/x/m/a.png", "train", {"site": "s1"}, "binary-inverted"),
        PairRecord("b", "s3://bkt/t0/b.png", "s3://bkt/t1/b.png", None, "test"),
    ]
    uri = write_manifest(records, str(tmp_path / "m.parquet"))
    assert read_manifest(uri) == records
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(
        pa.table({"pair_id": ["c"], "t0": ["imgs/c0.png"], "t1": ["imgs/c1.png"]}), tmp_path / "hand.parquet"
    )
    (hand,) = read_manifest(str(tmp_path / "hand.parquet"))
    assert hand.t0 == str(tmp_path / "imgs" / "c0.png") and hand.split == "train" and hand.mask is None
    pq.write_table(pa.table({"pair_id": ["c", "c"], "t0": ["a", "b"], "t1": ["a", "b"]}), tmp_path / "dup.parquet")
    with pytest.raises(ValueError, match="duplicate pair ids: c"):
        read_manifest(str(tmp_path / "dup.parquet"))
    with pytest.raises(ValueError, match="lacks column"):
        pq.write_table(pa.table({"pair_id": ["c"]}), tmp_path / "bad.parquet")
        read_manifest(str(tmp_path / "bad.parquet"))


def test_shards_hold_the_bytes_and_leave_out_bad_pairs(tmp_path):
    arrays = write_pair_folder(tmp_path / "d", [f"p{i}" for i in range(5)], size=(12, 16))
    _spoil(tmp_path / "d")
    scan = scan_dataset(str(tmp_path / "d"))
    assert scan.problems == [("bad_missing", "no t0 image (t0/bad_missing.*)")]
    packed = pack_shards(scan.records, str(tmp_path / "shards"), pairs_per_shard=3, validate={"num_classes": 2})
    reasons = dict(packed.bad)
    assert sorted(reasons) == ["bad_decode", "bad_size", "bad_values"]
    assert "UnidentifiedImageError" in reasons["bad_decode"]
    assert "mask is (10, 16) but images are (12, 16)" in reasons["bad_size"]
    assert "mask is not binary" in reasons["bad_values"]
    assert packed.pairs == 5 and [p.rsplit("/", 1)[1] for p in packed.shards] == [
        "part-00000.parquet",
        "part-00001.parquet",
    ]

    records = read_shard_records(str(tmp_path / "shards"))
    assert [r.pair_id for r in records] == [f"p{i}" for i in range(5)]
    assert records[4].shard.endswith("part-00001.parquet") and records[4].shard_row == 1
    for row in records_to_rows(records):
        sample = load_pair(row)
        assert np.array_equal(sample["t1"], arrays[row["pair_id"]]["t1"])
        assert np.array_equal(sample["mask"], arrays[row["pair_id"]]["mask"])
    assert scan_dataset(str(tmp_path / "shards")).layout == "shards"
    assert scan_dataset(packed.shards[0]).records[0].pair_id == "p0"


def test_prepare_command_writes_manifest_and_shards(tmp_path, capsys):
    write_pair_folder(tmp_path / "d", ["a", "b", "c"], size=(8, 8))
    _spoil(tmp_path / "d")
    code = prepare_main(
        [
            str(tmp_path / "d"),
            "--manifest",
            str(tmp_path / "out" / "manifest.parquet"),
            "--shards",
            str(tmp_path / "out" / "shards"),
            "--summary",
            str(tmp_path / "summary.json"),
        ]
    )
    assert code == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["pairs"] == 3 and summary["skipped_count"] == 4 and summary["layout"] == "folder"
    assert {pid for pid, _ in summary["skipped"]} == {"bad_decode", "bad_size", "bad_values", "bad_missing"}
    assert [r.pair_id for r in read_manifest(str(tmp_path / "out" / "manifest.parquet"))] == ["a", "b", "c"]
    assert prepare_main([str(tmp_path / "d"), "--manifest", str(tmp_path / "m2.parquet"), "--strict"]) == 1
    assert "bad_missing: no t0 image" in capsys.readouterr().err


def test_plan_reads_manifest_and_shards_alike(tmp_path):
    write_pair_folder(tmp_path / "d", [f"p{i}" for i in range(6)], size=(8, 8))
    summary = prepare_dataset(str(tmp_path / "d"), manifest=str(tmp_path / "m.parquet"), shards=str(tmp_path / "s"))
    plans = [
        plan_datasets(build_config({"data": {"train_path": path}}))
        for path in (str(tmp_path / "d"), str(tmp_path / "m.parquet"), str(tmp_path / "s"))
    ]
    assert [p.layout for p in plans] == ["folder", "manifest", "shards"]
    assert len({tuple(r.pair_id for r in p.val) for p in plans}) == 1  # same hold-out everywhere
    assert summary.splits == {"train": 6}


def test_ray_pipeline_streams_shards_and_screens_bad_pairs(ray_local, tmp_path):
    arrays = write_pair_folder(tmp_path / "d", [f"p{i}" for i in range(4)], size=(12, 16))
    _spoil(tmp_path / "d")
    (tmp_path / "d" / "t0" / "bad_missing.png").write_bytes(encode_png(np.zeros((12, 16, 3), np.uint8)))
    scan = scan_dataset(str(tmp_path / "d"))
    pack_shards(scan.records, str(tmp_path / "s"), pairs_per_shard=3, validate=None)  # bad bytes packed as is
    cfg = build_config({"data": {"train_path": str(tmp_path / "s")}})
    records = read_shard_records(str(tmp_path / "s"))
    good = {r["pair_id"]: r for r in pair_dataset(records, cfg, augment=False).take_all()}
    assert sorted(good) == ["bad_missing", "p0", "p1", "p2", "p3"]  # undecodable ones dropped in the map
    assert np.array_equal(good["p2"]["mask"], arrays["p2"]["mask"])

    plan = plan_datasets(cfg)
    screened = screen_plan(plan, cfg)
    assert {pid for pid, _ in screened.skipped} == {"bad_decode", "bad_size", "bad_values"}
    assert len(screened.train) + len(screened.val) == 5
    changed = sum(int(arrays[r.pair_id]["mask"].sum()) for r in screened.train if r.pair_id in arrays)
    assert screened.train_pixels[0] == changed
    strict = build_config({"data": {"train_path": str(tmp_path / "s"), "strict": True}})
    with pytest.raises(ValueError, match=r"3 bad pair\(s\).*bad_decode: UnidentifiedImageError"):
        screen_plan(plan, strict)


def test_manifest_and_shards_on_s3(ray_local, tmp_path, s3_endpoint, s3_bucket):
    opts = StorageSection(endpoint_url=s3_endpoint)
    arrays = write_pair_folder(tmp_path / "d", [f"p{i}" for i in range(5)], size=(8, 12))
    for path in sorted((tmp_path / "d").rglob("*.png")):
        storage.write_bytes(
            f"s3://{s3_bucket}/raw/{path.relative_to(tmp_path / 'd').as_posix()}", path.read_bytes(), opts
        )
    summary = prepare_dataset(
        f"s3://{s3_bucket}/raw",
        manifest=f"s3://{s3_bucket}/m/manifest.parquet",
        shards=f"s3://{s3_bucket}/shards",
        pairs_per_shard=2,
        storage_options=opts,
    )
    assert summary.pairs == 5 and len(summary.shards) == 3 and not summary.skipped
    manifest = read_manifest(f"s3://{s3_bucket}/m/manifest.parquet", storage_options=opts)
    assert manifest[0].t0 == f"s3://{s3_bucket}/raw/t0/p0.png"
    cfg = build_config({"data": {"train_path": f"s3://{s3_bucket}/shards"}, "storage": {"endpoint_url": s3_endpoint}})
    plan = plan_datasets(cfg)
    assert plan.layout == "shards" and plan.train[0].shard.startswith(f"s3://{s3_bucket}/shards/part-")
    rows = {r["pair_id"]: r for r in pair_dataset(plan.train + plan.val, cfg, augment=False).take_all()}
    assert len(rows) == 5 and np.array_equal(rows["p4"]["t0"], arrays["p4"]["t0"])
    val_sample = load_pair(records_to_rows(plan.val)[0], storage_options=opts)  # one row group, as validation reads
    assert np.array_equal(val_sample["mask"], arrays[plan.val[0].pair_id]["mask"])


def test_unreadable_shard_reports_its_pairs(tmp_path):
    from changeseg.data.pipeline import _ShardRows

    write_pair_folder(tmp_path / "d", ["a", "b"], size=(8, 8))
    packed = pack_shards(scan_dataset(str(tmp_path / "d")).records, str(tmp_path / "s"))
    read = _ShardRows(storage_options=None)
    rows = read({"shard": packed.shards[0], "ids": ["b", "zz"]})
    assert [(r["pair_id"], r["error"]) for r in rows] == [("b", ""), ("zz", f"not in shard {packed.shards[0]}")]
    (tmp_path / "s" / "part-00000.parquet").write_bytes(b"truncated")
    (bad,) = read({"shard": packed.shards[0], "ids": ["a"]})
    assert bad["pair_id"] == "a" and bad["error"].startswith(f"shard {packed.shards[0]} unreadable")
