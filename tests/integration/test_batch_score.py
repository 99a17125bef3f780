"""Batch scoring with Ray Data on a real local Ray: one row per pair, errors, tiling, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from helpers import write_pair_folder
from PIL import Image

from changeseg.config import build_config
from changeseg.inference.predictor import Predictor
from changeseg.inference.score import batch_score
from changeseg.models import create_model
from changeseg.models.weights import save_checkpoint

ROOT = Path(__file__).resolve().parents[2]


def _checkpoint(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = create_model(msf_width=16, msf_scales=2, head="fcn")
    # A non-trivial change head: bias the classifier so both classes occur.
    with torch.no_grad():
        model.head[-1].bias.copy_(torch.tensor([0.0, 0.02]))
    return save_checkpoint(tmp_path / "model", model.eval())


def _results(output: Path):
    return pq.read_table(output / "results").to_pylist()


def _archive(tmp_path: Path) -> tuple[Path, dict]:
    root = tmp_path / "archive"
    pairs = write_pair_folder(root, ["a", "b", "c", "d", "e"], size=(40, 48), seed=3)
    # A large pair (tiled at 64 px) without a mask, a pair whose sizes differ, an unreadable one.
    rng = np.random.default_rng(4)
    big = {k: rng.integers(0, 256, (70, 90, 3), dtype=np.uint8) for k in ("t0", "t1")}
    for k, v in big.items():
        Image.fromarray(v).save(root / k / "big.png")
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(root / "t0" / "sizes.png")
    Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(root / "t1" / "sizes.png")
    Image.fromarray(np.zeros((40, 48), np.uint8)).save(root / "mask" / "sizes.png")
    (root / "t0" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(root / "t1" / "broken.png")
    Image.fromarray(np.zeros((40, 48), np.uint8)).save(root / "mask" / "broken.png")
    return root, {**pairs, "big": big}


def _cfg(*extra: str):
    return build_config(
        overrides=[
            "score.tile_size=64",
            "score.tile_overlap=8",
            "score.batch_size=3",
            "score.max_actors=1",
            "score.flush_rows=2",
            "score.write_probabilities=true",
            *extra,
        ]
    )


def test_batch_score_one_row_per_pair_with_errors_tiling_and_metrics(ray_local, tmp_path):
    model_dir = _checkpoint(tmp_path)
    archive, pairs = _archive(tmp_path)
    output = tmp_path / "out"
    summary = batch_score(_cfg(), model_uri=str(model_dir), input_uri=str(archive), output_uri=str(output))

    rows = {r["pair_id"]: r for r in _results(output)}
    assert sorted(rows) == ["a", "b", "big", "broken", "c", "d", "e", "sizes"]
    assert summary.pairs_total == 8 and summary.ok == 6 and summary.errors == 2 and summary.already_done == 0
    assert rows["sizes"]["status"] == "error" and "(40, 48)" in rows["sizes"]["error"]
    assert rows["broken"]["status"] == "error" and rows["broken"]["error"]
    assert len(list((output / "results").glob("*.parquet"))) >= 3  # flush_rows=2: several whole files

    predictor = Predictor.from_uri(str(model_dir))
    for pid in ("a", "big"):
        row = rows[pid]
        assert row["status"] == "ok" and row["model_version"] == ""
        mask = np.asarray(Image.open(row["mask_uri"]))
        assert mask.shape == pairs[pid]["t0"].shape[:2]
        expected = predictor.predict(pairs[pid]["t0"], pairs[pid]["t1"])[0]
        if pid == "a":  # untiled: the Predictor's own answer
            np.testing.assert_array_equal(mask // 255, expected)
        assert row["changed_fraction"] == pytest.approx((mask > 0).mean())
        regions = json.loads(row["regions"])
        assert sum(r["area"] for r in regions) <= row["changed_pixels"]
        assert Path(row["probability_uri"]).is_file()
    assert rows["big"]["tiles"] == 4 and rows["a"]["tiles"] == 1  # 70x90 at 64 px / overlap 8: 2x2 windows
    assert rows["big"]["has_truth"] is False and rows["a"]["has_truth"] is True

    # Evaluation for free: metrics over the pairs with masks, from hand-counted confusion.
    tp = fp = fn = 0
    for pid in "abcde":
        pred = np.asarray(Image.open(rows[pid]["mask_uri"])) > 0
        truth = pairs[pid]["mask"] > 0
        tp += int((pred & truth).sum())
        fp += int((pred & ~truth).sum())
        fn += int((~pred & truth).sum())
    assert summary.metrics["global_f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert summary.metrics["num_images"] == 5
    written = json.loads((output / "summary.json").read_text())
    assert written["ok"] == 6 and written["errors"] == 2

    # Started again on the same output: nothing left to do, nothing duplicated.
    again = batch_score(_cfg(), model_uri=str(model_dir), input_uri=str(archive), output_uri=str(output))
    assert again.already_done == 8 and again.scored_now == 0
    assert len(_results(output)) == 8


def test_batch_score_resumes_only_missing_pairs(ray_local, tmp_path):
    model_dir = _checkpoint(tmp_path)
    archive = tmp_path / "archive"
    write_pair_folder(archive, [f"p{i}" for i in range(6)], size=(32, 32), seed=5)
    output = tmp_path / "out"
    batch_score(_cfg(), model_uri=str(model_dir), input_uri=str(archive), output_uri=str(output))
    # Lose some results, as a killed job would (whole files only).
    files = sorted((output / "results").glob("*.parquet"))
    lost = {r["pair_id"] for f in files[:2] for r in pq.read_table(f).to_pylist()}
    for f in files[:2]:
        f.unlink()
    summary = batch_score(_cfg(), model_uri=str(model_dir), input_uri=str(archive), output_uri=str(output))
    assert summary.scored_now == len(lost) and summary.already_done == 6 - len(lost)
    ids = [r["pair_id"] for r in _results(output)]
    assert sorted(ids) == [f"p{i}" for i in range(6)]


def test_batch_score_bad_arguments(ray_local, tmp_path):
    model_dir = _checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError):
        batch_score(
            _cfg(), model_uri=str(model_dir), input_uri=str(tmp_path / "nowhere"), output_uri=str(tmp_path / "o")
        )
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        batch_score(
            _cfg(), model_uri=str(tmp_path / "nomodel"), input_uri=str(tmp_path), output_uri=str(tmp_path / "o")
        )


@pytest.mark.slow
def test_killed_scoring_job_resumes_without_duplicates_or_gaps(tmp_path):
    """Kill a real batch-scoring job (its whole process group) mid-way, run it again."""
    model_dir = _checkpoint(tmp_path)
    archive = tmp_path / "archive"
    ids = [f"p{i:02d}" for i in range(40)]
    write_pair_folder(archive, ids, size=(96, 96), seed=6)
    output = tmp_path / "out"
    command = [
        sys.executable,
        str(ROOT / "jobs" / "score.py"),
        "--model",
        str(model_dir),
        "--input",
        str(archive),
        "--output",
        str(output),
        "score.flush_rows=2",
        "score.batch_size=2",
        "score.max_actors=1",
        "ray.num_cpus=4",
        "score.progress_seconds=1",
    ]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if len(list((output / "results").glob("*.parquet"))) >= 3:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the job finished before it could be killed:\n" + proc.stdout.read()
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    partial = len(pq.read_table(output / "results").to_pylist())
    assert 0 < partial < len(ids)

    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads((output / "summary.json").read_text())
    assert summary["already_done"] == partial and summary["scored_now"] == len(ids) - partial
    rows = _results(output)
    assert sorted(r["pair_id"] for r in rows) == ids  # no duplicates, no gaps
    assert all(r["status"] == "ok" for r in rows)


def test_hostile_ids_leftover_temp_files_pixel_cap_and_retry(ray_local, tmp_path):
    """Pair ids that would escape the output get error rows; `.tmp-*` leftovers of an
    interrupted flush are not results; a pair over score.max_pixels gets an error row from
    its header; --retry-errors scores error pairs again, still one row per pair."""
    from changeseg.data.manifest import write_manifest
    from changeseg.data.records import PairRecord

    model_dir = _checkpoint(tmp_path)
    files = tmp_path / "files"
    pairs = write_pair_folder(files, ["a", "b"], size=(32, 32), seed=7)
    rng = np.random.default_rng(8)
    for k in ("t0", "t1"):  # 64x64 = 4096 pixels: over a cap of 2048
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(files / k / "huge.png")
    (files / "t1" / "late.png").write_bytes(b"not yet")  # a transient failure: fixed before the retry
    Image.fromarray(pairs["a"]["t0"]).save(files / "t0" / "late.png")

    def rec(pid, name):
        return PairRecord(
            pair_id=pid, t0=str(files / "t0" / f"{name}.png"), t1=str(files / "t1" / f"{name}.png"), split="test"
        )

    records = [
        rec("a", "a"),
        rec("../../escaped", "b"),
        rec(str(tmp_path / "abs"), "b"),
        rec("sub/b", "b"),
        rec("huge", "huge"),
        rec("late", "late"),
    ]
    manifest = write_manifest(records, str(tmp_path / "manifest.parquet"))
    output = tmp_path / "deep" / "out"
    cfg = _cfg("score.max_pixels=2048", "score.min_actors=1", "score.max_actors=2", "score.batch_size=1")
    summary = batch_score(cfg, model_uri=str(model_dir), input_uri=manifest, output_uri=str(output))

    rows = {r["pair_id"]: r for r in _results(output)}
    assert len(rows) == 6 and summary.pairs_total == 6
    assert rows["a"]["status"] == "ok" and rows["sub/b"]["status"] == "ok"
    assert (output / "masks" / "sub" / "b.png").is_file()
    for bad in ("../../escaped", str(tmp_path / "abs")):
        assert rows[bad]["status"] == "error" and bad in rows[bad]["error"]
    assert not (tmp_path / "escaped.png").exists() and not (tmp_path / "abs.png").exists()
    assert not list(tmp_path.glob("deep/*.png")) and not (tmp_path / "deep" / "escaped.png").exists()
    assert rows["huge"]["status"] == "error" and "ImageTooLarge" in rows["huge"]["error"]
    assert rows["late"]["status"] == "error"

    # An interrupted flush: a zero-byte and a half-written temporary file.
    whole = next((output / "results").glob("part-*.parquet")).read_bytes()
    (output / "results" / ".tmp-zero.parquet").write_bytes(b"")
    (output / "results" / ".tmp-half.parquet").write_bytes(whole[: len(whole) // 2])
    again = batch_score(cfg, model_uri=str(model_dir), input_uri=manifest, output_uri=str(output))
    assert again.already_done == 6 and again.scored_now == 0

    Image.fromarray(pairs["a"]["t1"]).save(files / "t1" / "late.png")
    retried = batch_score(cfg, model_uri=str(model_dir), input_uri=manifest, output_uri=str(output), retry_errors=True)
    rows = _results(output)
    assert sorted(r["pair_id"] for r in rows) == sorted(r.pair_id for r in records)  # still one row per pair
    by_id = {r["pair_id"]: r for r in rows}
    assert by_id["late"]["status"] == "ok" and by_id["huge"]["status"] == "error"
    assert retried.ok == 3 and retried.errors == 3


def test_actors_started_later_still_get_the_weights(ray_local, tmp_path):
    """The pool grows from one actor to three while the job runs; every pair is scored."""
    model_dir = _checkpoint(tmp_path)
    archive = tmp_path / "archive"
    ids = [f"p{i:02d}" for i in range(24)]
    write_pair_folder(archive, ids, size=(32, 32), seed=9)
    cfg = _cfg("score.min_actors=1", "score.max_actors=3", "score.batch_size=1", "score.cpus_per_actor=0.5")
    summary = batch_score(cfg, model_uri=str(model_dir), input_uri=str(archive), output_uri=str(tmp_path / "out"))
    assert summary.ok == len(ids) and summary.errors == 0, summary.error_examples
