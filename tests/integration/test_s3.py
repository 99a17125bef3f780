"""Checkpoints and data on a real S3-protocol server on loopback."""

import numpy as np
import pytest
from mlflow import MlflowClient

from changeseg import storage
from changeseg.config import StorageSection, build_config
from changeseg.data.records import scan_folder
from changeseg.inference import Predictor
from changeseg.training.trainer import finetune


def test_storage_round_trip_on_s3(s3_endpoint, s3_bucket):
    opts = StorageSection(endpoint_url=s3_endpoint)
    uri = f"s3://{s3_bucket}/a/b.bin"
    storage.write_bytes(uri, b"payload", opts)
    assert storage.read_bytes(uri, opts) == b"payload"
    assert storage.exists(uri, opts) and storage.is_dir(f"s3://{s3_bucket}/a", opts)
    assert storage.list_files(f"s3://{s3_bucket}/a", opts) == [uri]
    with pytest.raises(FileNotFoundError, match="dataset folder not found"):
        scan_folder(f"s3://{s3_bucket}/missing", storage_options=opts)


@pytest.mark.slow
# Loose files on S3 are trained on in tests/test_stack.py; shards here.
@pytest.mark.parametrize("form", ["shards"])
def test_finetune_from_and_to_s3(ray_local, tmp_path, s3_endpoint, s3_bucket, tracking_uri, form):
    """Pairs read from s3:// (loose files, or packed shards), checkpoints written to s3://,
    model loaded back from there."""
    from changeseg.data.prepare import prepare_dataset
    from changeseg.data.synthetic import write_folder

    opts = StorageSection(endpoint_url=s3_endpoint)
    local = tmp_path / "pairs"
    write_folder(local, count=10, seed=3, size=48)
    for path in sorted(local.rglob("*.png")):
        storage.write_bytes(f"s3://{s3_bucket}/pairs/{path.relative_to(local).as_posix()}", path.read_bytes(), opts)
    train_path = f"s3://{s3_bucket}/pairs"
    if form == "shards":
        train_path = f"s3://{s3_bucket}/shards"
        packed = prepare_dataset(f"s3://{s3_bucket}/pairs", shards=train_path, pairs_per_shard=4, storage_options=opts)
        assert len(packed.shards) == 3 and packed.pairs == 10

    cfg = build_config(
        {
            "run": {"name": "s3run", "storage_path": f"s3://{s3_bucket}/runs"},
            "data": {"train_path": train_path, "val_fraction": 0.2},
            "model": {"msf_width": 16, "msf_scales": 2},
            "train": {"epochs": 1, "batch_size": 2, "num_workers": 2, "num_overlays": 1},
            "tracking": {"tracking_uri": tracking_uri},
            "storage": {"endpoint_url": s3_endpoint},
        }
    )
    result = finetune(cfg)
    assert result.train_pairs == 8 and result.val_pairs == 2 and result.skipped_pairs == []
    assert result.data_source == train_path
    assert result.checkpoint_path.startswith(f"s3://{s3_bucket}/runs/s3run/checkpoint_")
    assert storage.exists(result.checkpoint_path + "/model.safetensors", opts)

    from_s3 = Predictor.from_uri(result.checkpoint_path, storage_options=opts)
    from_registry = Predictor.from_uri("models:/changeseg/1", tracking_uri=tracking_uri)
    rng = np.random.default_rng(0)
    t0, t1 = (rng.integers(0, 256, (40, 40, 3), dtype=np.uint8) for _ in range(2))
    np.testing.assert_allclose(from_s3.predict_proba(t0, t1), from_registry.predict_proba(t0, t1), atol=1e-6)
    assert MlflowClient(tracking_uri, registry_uri=tracking_uri).get_run(result.mlflow_run_id).info.status == "FINISHED"
