"""MLflow tracking and registry against a real SQLite-backed MLflow."""

import mlflow
import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from changeseg import tracking
from changeseg.config import build_config
from changeseg.inference import Predictor
from changeseg.models import create_model
from changeseg.models.weights import load_checkpoint, save_checkpoint

TINY = {"msf_width": 8, "msf_scales": 2, "head": "fcn"}


def _cfg(tracking_uri, name="r1"):
    return build_config({"run": {"name": name}, "tracking": {"tracking_uri": tracking_uri}, "model": TINY})


def _checkpoint(tmp_path, seed):
    torch.manual_seed(seed)
    model = create_model(**TINY).eval()
    return model, save_checkpoint(tmp_path / f"ckpt{seed}", model, metadata={"epoch": 0})


def test_checkpoint_round_trip_is_exact(tmp_path):
    model, directory = _checkpoint(tmp_path, 0)
    loaded, meta = load_checkpoint(directory)
    x0, x1 = torch.rand(1, 3, 40, 48), torch.rand(1, 3, 40, 48)
    assert meta == {"epoch": 0}
    assert torch.equal(model(x0, x1), loaded.eval()(x0, x1))


def test_resume_reuses_the_run_with_the_same_name(tracking_uri):
    first = tracking.start_or_resume_run(_cfg(tracking_uri))
    again = tracking.start_or_resume_run(_cfg(tracking_uri))
    other = tracking.start_or_resume_run(_cfg(tracking_uri, name="r2"))
    assert first.run_id == again.run_id != other.run_id


def test_params_are_logged_once_and_config_saved(tracking_uri):
    cfg = _cfg(tracking_uri)
    run = tracking.start_or_resume_run(cfg)
    tracking.log_run_inputs(cfg, run_id=run.run_id, train_pairs=10, val_pairs=2, class_weights=[0.1, 0.9])
    tracking.log_run_inputs(cfg, run_id=run.run_id, train_pairs=10, val_pairs=2, class_weights=[0.1, 0.9])
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    params = client.get_run(run.run_id).data.params
    assert params["model.mtf"] == "iade" and params["data.train_pairs"] == "10"
    assert params["train.class_weights_used"] == "[0.1, 0.9]"
    assert "config/resolved.yaml" in [a.path for a in client.list_artifacts(run.run_id, "config")]


def test_champion_alias_follows_the_better_metric(tmp_path, tracking_uri):
    cfg = _cfg(tracking_uri)
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    results = []
    for seed, f1 in [(1, 0.5), (2, 0.4), (3, 0.7)]:
        run = tracking.start_or_resume_run(_cfg(tracking_uri, name=f"run{seed}"))
        _, directory = _checkpoint(tmp_path, seed)
        results.append(
            tracking.log_and_register_model(
                cfg, run_id=run.run_id, checkpoint_dir=directory, metrics={"val_global_f1": f1}
            )
        )
    assert [r["version"] for r in results] == [1, 2, 3]
    assert [r["champion"] for r in results] == [True, False, True]
    assert results[1]["champion_version"] == 1 and results[1]["previous_champion_score"] == 0.5
    assert int(client.get_model_version_by_alias("changeseg", "champion").version) == 3


def test_registered_model_loads_back_identically(tmp_path, tracking_uri):
    cfg = _cfg(tracking_uri)
    run = tracking.start_or_resume_run(cfg)
    model, directory = _checkpoint(tmp_path, 5)
    tracking.log_and_register_model(cfg, run_id=run.run_id, checkpoint_dir=directory, metrics={"val_global_f1": 0.3})
    rng = np.random.default_rng(0)
    t0 = rng.integers(0, 256, (36, 44, 3), dtype=np.uint8)
    t1 = rng.integers(0, 256, (36, 44, 3), dtype=np.uint8)
    expected = model(Predictor.to_tensor(t0), Predictor.to_tensor(t1)).softmax(1).detach().numpy()

    for uri in ("models:/changeseg@champion", "models:/changeseg/1", str(directory)):
        predictor = Predictor.from_uri(uri, tracking_uri=tracking_uri)
        np.testing.assert_allclose(predictor.predict_proba(t0, t1), expected, atol=1e-6)
    assert Predictor.from_uri("models:/changeseg/1", tracking_uri=tracking_uri).info["version"] == 1

    # The pyfunc flavour (logged as code, weights as safetensors) gives the same probabilities.
    pyfunc = mlflow.pyfunc.load_model("models:/changeseg/1")
    inputs = {"t0": Predictor.to_tensor(t0).numpy(), "t1": Predictor.to_tensor(t1).numpy()}
    np.testing.assert_allclose(pyfunc.predict(inputs), expected, atol=1e-6)
    signature = pyfunc.metadata.signature
    assert signature.inputs.input_names() == ["t0", "t1"]


def test_unknown_registry_version_is_a_clear_error(tracking_uri):
    with pytest.raises(LookupError, match="models:/changeseg/9"):
        Predictor.from_uri("models:/changeseg/9", tracking_uri=tracking_uri)
    with pytest.raises(FileNotFoundError, match="no-such-dir"):
        Predictor.from_uri("/tmp/no-such-dir")


def test_artifacts_live_beside_the_sqlite_store(tmp_path, tracking_uri, monkeypatch):
    monkeypatch.chdir(tmp_path / "..")  # a different working folder must not matter
    run = tracking.start_or_resume_run(_cfg(tracking_uri))
    assert run.artifact_uri.startswith((tmp_path / "mlartifacts" / "changeseg").as_uri())


def test_registry_lookup_ignores_the_process_wide_registry(tmp_path, tracking_uri):
    cfg = _cfg(tracking_uri)
    run = tracking.start_or_resume_run(cfg)
    _, directory = _checkpoint(tmp_path, 7)
    tracking.log_and_register_model(cfg, run_id=run.run_id, checkpoint_dir=directory, metrics={"val_global_f1": 0.2})
    mlflow.set_registry_uri(f"sqlite:///{tmp_path / 'elsewhere.db'}")
    try:
        predictor = Predictor.from_uri("models:/changeseg@champion", tracking_uri=tracking_uri)
    finally:
        mlflow.set_registry_uri(tracking_uri)
    assert predictor.info["version"] == 1
