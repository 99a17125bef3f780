"""benchmarks/gpu_check.py on the CPU: the engine and predictor in a gloo process group."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_passes_on_the_cpu():
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "gpu_check.py"),
            "--device",
            "cpu",
            "--steps",
            "2",
            "--batch",
            "2",
            "--size",
            "64",
            "--msf-width",
            "16",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["ok"] and report["checks"]["process_group"] == "gloo"
    for key in (
        "all_ignored_step_skipped",
        "validate",
        "optimizer_state_on_device",
        "weights_restored",
        "predict_fp32",
        "predict_bf16",
        "train_bf16_loss_finite",
    ):
        assert report["checks"][key] is True, key
    assert set(report["train_images_per_s"]) == {"fp32", "bf16"}
    assert report["checks"]["predict_fp32_max_abs_diff_vs_fp32"] == 0.0
