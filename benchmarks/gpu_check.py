"""End-to-end check of the training engine and the predictor on one device, without Ray.

    python benchmarks/gpu_check.py --device cuda      # on a GPU machine
    python benchmarks/gpu_check.py --device cpu       # anywhere (run by the test suite)

Inside a real ``torch.distributed`` process group of world size 1 (NCCL on CUDA, gloo
on the CPU), so DDP and every collective take the same path as a Ray Train worker, it
builds a small C-3PO and:

- trains a few steps in each precision (fp32, bf16, and fp16 with a gradient scaler on
  CUDA), timing images/s after a warm-up step;
- checks that an all-ignored batch is skipped and leaves the weights unchanged;
- validates, reducing the metrics through the process group;
- saves a training checkpoint, resumes it onto the device and checks that Adam's state
  lives on the device, then trains one more step;
- predicts with the shared predictor in each precision and compares with fp32.

Prints one JSON line: what passed, images/s per precision and the bf16/fp32 ratio.
Exits 1 when a check fails. Needs torch, pydantic, PyYAML, Pillow, NumPy and
safetensors only (``PYTHONPATH=platform`` without installing the package).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

from changeseg.config import build_config  # noqa: E402
from changeseg.devices import resolve_device  # noqa: E402
from changeseg.inference import Predictor  # noqa: E402
from changeseg.training.engine import (  # noqa: E402
    build_engine,
    restore_checkpoint,
    save_training_checkpoint,
    train_one_epoch,
    validate,
)


def _batch(rng: np.random.Generator, *, n: int, size: int, ignore: bool = False) -> dict[str, np.ndarray]:
    t0 = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    t1 = t0.copy()
    mask = np.zeros((n, size, size), dtype=np.uint8)
    for i in range(n):  # a bright square appears in t1: a learnable change
        y, x = rng.integers(0, size // 2, 2)
        t1[i, y : y + size // 4, x : x + size // 4] = 255
        mask[i, y : y + size // 4, x : x + size // 4] = 1
    if ignore:
        mask[:] = 255
    return {"t0": t0, "t1": t1, "mask": mask}


def _config(args, precision: str):
    return build_config(
        {
            "model": {"backbone": args.backbone, "msf_width": args.msf_width, "head": "fcn", "weights": "none"},
            "train": {
                "epochs": 1,
                "batch_size": args.batch,
                "lr": 1e-3,
                "precision": precision,
                "channels_last": args.channels_last,
            },
        }
    )


def _train(args, precision: str, device: torch.device, rng) -> tuple[dict, object]:
    engine = build_engine(
        _config(args, precision), steps_per_epoch=args.steps + 1, class_weights=[0.2, 0.8], device=device
    )
    batches = [_batch(rng, n=args.batch, size=args.size) for _ in range(args.steps + 1)]
    train_one_epoch(engine, batches[:1])  # warm-up: kernels, cuDNN autotuning, allocator
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    engine.steps_per_epoch = args.steps
    stats = train_one_epoch(engine, batches[1:])
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    result = {
        "loss_finite": math.isfinite(stats.loss),
        "steps": stats.steps == args.steps and stats.skipped_steps == 0,
        "images_per_s": round(args.steps * args.batch / seconds, 2),
    }
    return result, engine


def _skip_check(engine, rng, args) -> bool:
    before = [p.detach().clone() for p in engine.bare_model.parameters()]
    engine.steps_per_epoch = 1
    stats = train_one_epoch(engine, [_batch(rng, n=args.batch, size=args.size, ignore=True)])
    unchanged = all(torch.equal(a, b) for a, b in zip(before, engine.bare_model.parameters()))
    return stats.skipped_steps == 1 and unchanged


def _resume_check(engine, args, precision: str, device: torch.device, rng) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = engine.cfg
        save_training_checkpoint(engine, tmp, epoch=0, metrics={}, config=cfg.model_dump(mode="json"))
        resumed = build_engine(_config(args, precision), steps_per_epoch=1, class_weights=[0.2, 0.8], device=device)
        epoch = restore_checkpoint(resumed, tmp)
    states = [s["exp_avg"] for s in resumed.optimizer.state.values()]
    on_device = bool(states) and all(t.device.type == device.type for t in states)
    same = all(
        torch.equal(a.cpu(), b.cpu())
        for a, b in zip(engine.bare_model.state_dict().values(), resumed.bare_model.state_dict().values())
    )
    stats = train_one_epoch(resumed, [_batch(rng, n=args.batch, size=args.size)])
    return {
        "resume_epoch": epoch == 1,
        "optimizer_state_on_device": on_device,
        "weights_restored": same,
        "step_after_resume": stats.steps == 1 and math.isfinite(stats.loss),
    }


def _predict_check(model, device: torch.device, precisions: list[str], rng, size: int) -> dict:
    pair = _batch(rng, n=2, size=size)
    reference = None
    out: dict = {}
    for precision in precisions:
        predictor = Predictor(model, device=device, precision=precision)
        proba = predictor.predict_proba(pair["t0"], pair["t1"])
        ok = proba.shape == (2, 2, size, size) and proba.dtype == np.float32 and np.allclose(proba.sum(1), 1, atol=1e-4)
        if reference is None:
            reference = proba
        out[f"predict_{precision}"] = bool(ok)
        out[f"predict_{precision}_max_abs_diff_vs_fp32"] = round(float(np.abs(proba - reference).max()), 5)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto", help="cuda, cpu or auto")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per precision")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--msf-width", type=int, default=128)
    parser.add_argument("--channels-last", action="store_true")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    precisions = ["fp32", "bf16", "fp16"] if device.type == "cuda" else ["fp32", "bf16"]
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo", init_method=f"file://{tmp}/rendezvous", rank=0, world_size=1
        )
        try:
            report = _run(args, device, precisions, rng)
        finally:
            dist.destroy_process_group()
    print(json.dumps(report))
    return 0 if report["ok"] else 1


def _run(args, device: torch.device, precisions: list[str], rng) -> dict:
    checks: dict = {"process_group": dist.get_backend()}
    speed: dict = {}
    engine = None
    for precision in precisions:
        result, trained = _train(args, precision, device, rng)
        speed[precision] = result.pop("images_per_s")
        checks.update({f"train_{precision}_{k}": v for k, v in result.items()})
        if precision == "fp32":
            engine = trained
    checks["all_ignored_step_skipped"] = _skip_check(engine, rng, args)
    metrics, loss, count = validate(engine, [{k: v[0] for k, v in _batch(rng, n=1, size=args.size).items()}])
    checks["validate"] = count == 1 and math.isfinite(loss) and 0 <= metrics.compute()["overall_accuracy"] <= 1
    checks.update(_resume_check(engine, args, "fp32", device, rng))
    checks.update(_predict_check(engine.bare_model, device, precisions, rng, args.size))
    passed = [v for k, v in checks.items() if isinstance(v, bool)]
    return {
        "ok": all(passed),
        "device": str(device),
        "card": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "model": f"c3po {args.backbone} fcn msf_width={args.msf_width}",
        "size": args.size,
        "batch": args.batch,
        "channels_last": args.channels_last,
        "train_images_per_s": speed,
        "bf16_over_fp32": round(speed["bf16"] / speed["fp32"], 3) if speed.get("fp32") else None,
        "checks": checks,
    }


if __name__ == "__main__":
    sys.exit(main())
