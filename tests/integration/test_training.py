"""Fine-tuning on a real local Ray instance, tracked in a real MLflow."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import write_pair_folder
from mlflow import MlflowClient

from changeseg.cli import finetune_main, pretrain_main
from changeseg.config import build_config
from changeseg.data.pipeline import count_change_pixels, pair_dataset, plan_datasets
from changeseg.data.records import scan_folder
from changeseg.training.engine import cosine_with_warmup
from changeseg.training.trainer import check_feasible, finetune

ROOT = Path(__file__).resolve().parents[2]
TINY_MODEL = {"msf_width": 16, "msf_scales": 2}


def _cfg(tmp_path, tracking_uri, **sections):
    data = {
        "run": {"name": "t", "storage_path": str(tmp_path / "runs")},
        "model": TINY_MODEL,
        "train": {"epochs": 2, "batch_size": 2, "num_workers": 2, "num_overlays": 2},
        "tracking": {"tracking_uri": tracking_uri},
        "data": {"synthetic": {"train_pairs": 8, "val_pairs": 3, "size": 48, "output_dir": str(tmp_path / "syn")}},
    }
    for key, value in sections.items():
        data.setdefault(key, {}).update(value)
    return build_config(data)


def test_cosine_schedule_values():
    f = cosine_with_warmup(total_steps=10, warmup_steps=2)
    assert f(0) == pytest.approx(0.5) and f(1) == pytest.approx(1.0)
    assert f(2) == pytest.approx(1.0)
    assert f(6) == pytest.approx(0.5 * (1 + math.cos(math.pi * 4 / 8)))
    assert f(10) == pytest.approx(0.0)


def test_too_little_data_for_a_batch_is_an_error(tmp_path, tracking_uri):
    cfg = _cfg(tmp_path, tracking_uri, train={"batch_size": 8})
    with pytest.raises(ValueError, match="cannot fill one batch of 8 per worker"):
        check_feasible(cfg, train_pairs=10)


def test_missing_data_path_fails_with_the_path(tmp_path, tracking_uri, capsys):
    missing = tmp_path / "no-data-here"
    code = finetune_main([f"data.train_path={missing}", f"tracking.tracking_uri={tracking_uri}"])
    assert code == 1
    assert str(missing) in capsys.readouterr().err


def test_empty_dataset_is_an_error(tmp_path, tracking_uri):
    for name in ("t0", "t1", "mask"):
        (tmp_path / "empty" / name).mkdir(parents=True)
    cfg = _cfg(tmp_path, tracking_uri, data={"train_path": str(tmp_path / "empty")})
    with pytest.raises(ValueError, match="dataset is empty"):
        plan_datasets(cfg)


def test_bad_config_fails_before_ray_starts(tmp_path):
    # A fresh process, so "Ray never started" is observable.
    done = subprocess.run(
        [sys.executable, str(ROOT / "jobs" / "finetune.py"), "train.epochz=3", "train.batch_size=big"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert (
        "unknown key 'train.epochz'" in done.stderr and "'train.batch_size'" in done.stderr and "integer" in done.stderr
    )
    assert "Started a local Ray instance" not in done.stdout + done.stderr
    assert not (tmp_path / "mlflow.db").exists()


def test_pipeline_decodes_and_counts_pixels(ray_local, tmp_path, tracking_uri):
    arrays = write_pair_folder(tmp_path / "d", [f"p{i}" for i in range(5)], size=(20, 24))
    cfg = _cfg(tmp_path, tracking_uri, data={"train_path": str(tmp_path / "d"), "crop_size": 16})
    records = scan_folder(str(tmp_path / "d"))
    rows = {r["pair_id"]: r for r in pair_dataset(records, cfg, augment=False).take_all()}
    assert np.array_equal(rows["p3"]["t1"], arrays["p3"]["t1"]) and np.array_equal(
        rows["p3"]["mask"], arrays["p3"]["mask"]
    )
    augmented = pair_dataset(records, cfg, augment=True).take_all()
    assert {r["t0"].shape for r in augmented} == {(16, 16, 3)}
    changed, unchanged = count_change_pixels(records, cfg)
    expected = sum(int(a["mask"].sum()) for a in arrays.values())
    assert changed == expected and changed + unchanged == 5 * 20 * 24


def test_finetune_tracks_registers_and_crowns(ray_local, tmp_path, tracking_uri):
    # The small-data options of the real-pairs recipe run in the distributed loop too.
    cfg = _cfg(tmp_path, tracking_uri, data={"repeat": 2}, train={"backbone_lr": 5e-5, "freeze_backbone_bn": True})
    result = finetune(cfg)
    assert result.epochs == 2 and result.start_epoch == 0
    assert result.train_pairs == 8 and result.val_pairs == 3
    w = result.class_weights
    assert len(w) == 2 and w[0] + w[1] == pytest.approx(1.0) and w[1] > w[0]  # change is the rare class

    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    run = client.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["model.msf_width"] == "16"
    assert run.data.params["train.freeze_backbone_bn"] == "True" and run.data.params["data.repeat"] == "2"
    assert run.data.metrics["data_skipped_pairs"] == 0 and result.skipped_pairs == []
    for key in ("train_loss", "val_loss", "val_global_f1", "val_per_image_f1_mean", "val_kappa"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [0, 1], key
    overlays = [a.path for a in client.list_artifacts(run.info.run_id, "overlays")]
    assert len(overlays) == 2
    version = client.get_model_version_by_alias("changeseg", "champion")
    assert int(version.version) == result.registered["version"] == 1
    assert version.run_id == result.mlflow_run_id


def _epoch_ids(dataset, *, world: int, epochs: int, batch_size: int) -> list[list[list[str]]]:
    """Pair ids each of ``world`` consumers of a streaming split sees, epoch by epoch (as
    Ray Train hands shards to its workers, consumed concurrently)."""
    from concurrent.futures import ThreadPoolExecutor

    from changeseg.training.loop import shard_batches

    shards = dataset.streaming_split(world, equal=True)

    def consume(shard) -> list[list[str]]:
        seen: list[list[str]] = []
        for _ in range(epochs):
            ids: list[str] = []
            for _batch in shard_batches(shard, batch_size=batch_size, seen_ids=ids):
                pass
            seen.append(ids)
        return seen

    with ThreadPoolExecutor(world) as pool:
        return list(pool.map(consume, shards))


def test_training_data_is_reshuffled_every_epoch_and_split_disjointly(ray_local, tmp_path, tracking_uri):
    ids = [f"p{i:02d}" for i in range(16)]
    write_pair_folder(tmp_path / "d", ids, size=(16, 16))
    cfg = _cfg(tmp_path, tracking_uri, data={"train_path": str(tmp_path / "d")})
    records = scan_folder(str(tmp_path / "d"))
    dataset = pair_dataset(records * 2, cfg, augment=True, shuffle_seed=7)  # data.repeat = 2
    per_rank = _epoch_ids(dataset, world=2, epochs=2, batch_size=2)
    for epoch in range(2):
        seen = per_rank[0][epoch] + per_rank[1][epoch]
        assert sorted(seen) == sorted(ids * 2)  # every copy of every pair once per epoch
    assert per_rank[0][0] != per_rank[0][1]  # a fresh order each epoch
    # Not the sorted order of the records: batches are not runs of neighbouring pairs.
    assert per_rank[0][0] != sorted(per_rank[0][0])


def test_pretrain_command_needs_two_images_and_one_source(tmp_path, capsys):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(b"")
    overrides = [f"run.storage_path={tmp_path / 'runs'}"]
    assert pretrain_main(["--images", str(tmp_path / "img"), *overrides]) == 2
    assert "at least 2 images, found 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        pretrain_main(["--images", str(tmp_path / "img"), "--pairs", str(tmp_path)])


def test_pretrain_on_labelled_pairs_gives_a_checkpoint_and_no_registry_version(
    ray_local, tmp_path, tracking_uri, capsys
):
    write_pair_folder(tmp_path / "d", [f"p{i}" for i in range(4)], size=(48, 48))
    code = pretrain_main(
        [
            "--pairs",
            str(tmp_path / "d"),
            "--pairs-per-image",
            "2",
            "--size",
            "32",
            f"run.storage_path={tmp_path / 'runs'}",
            "run.name=pre",
            f"tracking.tracking_uri={tracking_uri}",
            "model.msf_width=16",
            "model.msf_scales=2",
            "train.epochs=1",
            "train.batch_size=2",
            "train.num_workers=1",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "16 synthetic pairs in" in out  # 4 pairs x (t0 + t1) x 2
    found = re.search(r"pretrained checkpoint: (\S+)", out)
    assert found and (Path(found.group(1).removeprefix("file://")) / "model.json").is_file()
    # A starting point, not a version: nothing registered, so no champion alias can move.
    assert MlflowClient(tracking_uri, registry_uri=tracking_uri).search_registered_models() == []
