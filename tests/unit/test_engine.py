"""The training engine without Ray: skipped steps, precision, resume, DDP collectives."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from changeseg.config import build_config
from changeseg.training.engine import (
    build_engine,
    restore_checkpoint,
    save_training_checkpoint,
    train_one_epoch,
    validate,
)
from changeseg.training.losses import ChangeLoss

TINY = {"backbone": "resnet18", "msf_width": 16, "msf_scales": 2, "head": "fcn"}
PACKAGE = Path(__file__).resolve().parents[2] / "platform" / "changeseg"


def _cfg(**train):
    return build_config({"model": TINY, "train": {"epochs": 2, "batch_size": 2, "lr": 1e-3, **train}})


def _batch(rng, *, n=2, size=32, ignore=False):
    mask = (rng.random((n, size, size)) < 0.3).astype(np.uint8)
    if ignore:
        mask[:] = 255
    return {
        "t0": rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
        "t1": rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
        "mask": mask,
    }


def _params(engine):
    return [p.detach().clone() for p in engine.bare_model.parameters()]


def test_all_ignored_loss_is_zero_with_zero_gradient():
    logits = torch.randn(2, 2, 4, 4, requires_grad=True)
    target = torch.full((2, 4, 4), 255)
    loss = ChangeLoss(weight=torch.tensor([0.2, 0.8]))(logits, target)
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(logits.grad) == 0
    # Partly ignored: torch's weighted mean over the valid pixels, unchanged.
    target[0, 0, :2] = torch.tensor([0, 1])
    expected = torch.nn.functional.cross_entropy(logits, target, weight=torch.tensor([0.2, 0.8]), ignore_index=255)
    torch.testing.assert_close(ChangeLoss(weight=torch.tensor([0.2, 0.8]))(logits, target), expected)


def test_all_ignored_batch_is_skipped_and_counted():
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    engine = build_engine(_cfg(), steps_per_epoch=1, class_weights=[0.3, 0.7], device=torch.device("cpu"))
    before = _params(engine)
    stats = train_one_epoch(engine, [_batch(rng, ignore=True)])
    assert stats.skipped_steps == 1 and stats.samples == 0
    assert all(torch.equal(a, b) for a, b in zip(before, _params(engine)))
    assert all(math.isfinite(p.sum().item()) for p in engine.bare_model.parameters())
    # A labelled batch is applied.
    stats = train_one_epoch(engine, [_batch(rng)])
    assert stats.skipped_steps == 0 and stats.samples == 2 and math.isfinite(stats.loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, _params(engine)))


def test_non_finite_loss_changes_no_weight():
    rng = np.random.default_rng(1)
    engine = build_engine(_cfg(), steps_per_epoch=1, class_weights=None, device=torch.device("cpu"))
    before = _params(engine)
    batch = _batch(rng)
    with torch.no_grad():  # a head that outputs NaN: the loss is NaN
        engine.bare_model.head[-1].bias.fill_(float("nan"))
    before = _params(engine)
    stats = train_one_epoch(engine, [batch])
    assert stats.skipped_steps == 1
    after = _params(engine)
    assert all(torch.equal(a, b) or (torch.isnan(a).any() and torch.isnan(b).any()) for a, b in zip(before, after))
    backbone = list(engine.bare_model.backbone.parameters())
    assert all(torch.isfinite(p).all() for p in backbone)


def test_bf16_autocast_on_cpu_trains_and_fp16_needs_cuda():
    rng = np.random.default_rng(2)
    engine = build_engine(
        _cfg(precision="bf16", channels_last=True), steps_per_epoch=2, class_weights=None, device=torch.device("cpu")
    )
    assert engine.precision == "bf16"
    stats = train_one_epoch(engine, [_batch(rng), _batch(rng)])
    assert stats.steps == 2 and stats.skipped_steps == 0 and math.isfinite(stats.loss)
    metrics, loss, count = validate(engine, [{k: v[0] for k, v in _batch(rng).items()}])
    assert count == 1 and math.isfinite(loss) and metrics.compute()["overall_accuracy"] >= 0
    assert build_engine(_cfg(), steps_per_epoch=1, class_weights=None, device=torch.device("cpu")).precision == "fp32"
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        build_engine(_cfg(precision="fp16"), steps_per_epoch=1, class_weights=None, device=torch.device("cpu"))


def test_resume_restores_optimizer_schedule_and_weights_on_the_device(tmp_path):
    rng = np.random.default_rng(3)
    cfg = _cfg(warmup_steps=3)
    engine = build_engine(cfg, steps_per_epoch=2, class_weights=[0.4, 0.6], device=torch.device("cpu"))
    train_one_epoch(engine, [_batch(rng), _batch(rng)])
    save_training_checkpoint(engine, tmp_path, epoch=0, metrics={"train_loss": 1.0}, config=cfg.model_dump(mode="json"))
    resumed = build_engine(cfg, steps_per_epoch=2, class_weights=[0.4, 0.6], device=torch.device("cpu"))
    assert restore_checkpoint(resumed, tmp_path) == 1
    assert resumed.scheduler.last_epoch == engine.scheduler.last_epoch == 2
    for a, b in zip(engine.bare_model.state_dict().values(), resumed.bare_model.state_dict().values()):
        torch.testing.assert_close(a, b)
    params = {id(p): p for g in resumed.optimizer.param_groups for p in g["params"]}
    states = [(params[id(p)], s) for p, s in resumed.optimizer.state.items()]
    assert states, "Adam state restored"
    for param, state in states:
        assert state["exp_avg"].device == param.device
    original = [engine.optimizer.state[p]["exp_avg"] for g in engine.optimizer.param_groups for p in g["params"]]
    restored = [resumed.optimizer.state[p]["exp_avg"] for g in resumed.optimizer.param_groups for p in g["params"]]
    for a, b in zip(original, restored):
        torch.testing.assert_close(a, b)


def test_warmup_is_the_longer_of_epochs_and_steps():
    from changeseg.training.engine import warmup_steps_for

    assert warmup_steps_for(_cfg(warmup_epochs=5, warmup_steps=1000), 10) == 1000
    assert warmup_steps_for(_cfg(warmup_epochs=5, warmup_steps=1000), 400) == 2000
    assert warmup_steps_for(_cfg(), 10) == 0


def test_every_collective_goes_through_the_device_helper():
    """NCCL only reduces CUDA tensors: no module but changeseg.devices calls a collective."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "devices.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in {"all_reduce", "all_gather", "broadcast", "reduce"}:
                base = ast.unparse(node.value)
                if base in {"dist", "torch.distributed"}:
                    offenders.append(f"{path.relative_to(PACKAGE)}: {base}.{node.attr}")
    assert offenders == []


def _ddp_worker(rank: int, world: int, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{out}/rendezvous", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        rng = np.random.default_rng(rank)
        engine = build_engine(_cfg(), steps_per_epoch=1, class_weights=None, device=torch.device("cpu"))
        # One labelled batch on rank 0 and an all-ignored one on rank 1: both ranks apply the step.
        stats = train_one_epoch(engine, [_batch(rng, ignore=rank == 1)])
        # One validation pair for two ranks: rank 1 has none and must still join every collective.
        val_rng = np.random.default_rng(99)
        pairs = [{k: v[0] for k, v in _batch(val_rng).items()}] if rank == 0 else []
        metrics, loss, count = validate(engine, pairs)
        torch.save(
            {
                "count": count,
                "loss": loss,
                "state": metrics.state(),
                "skipped": stats.skipped_steps,
                "samples": stats.samples,
                "weights": engine.bare_model.head[-1].weight.detach().clone(),
            },
            f"{out}/{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def test_ddp_ranks_agree_with_fewer_validation_pairs_than_ranks(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_ddp_worker, args=(r, 2, str(tmp_path))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    hung = [p.pid for p in procs if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
    assert not hung, "a rank hung in a collective"
    assert [p.exitcode for p in procs] == [0, 0]
    results = [torch.load(tmp_path / f"{r}.pt", weights_only=True) for r in range(2)]
    assert [r["count"] for r in results] == [1, 1]  # both ranks see the global count
    torch.testing.assert_close(results[0]["state"], results[1]["state"])
    # The step is applied on both ranks (rank 0 had labels); samples are counted over both.
    assert [r["skipped"] for r in results] == [0, 0] and [r["samples"] for r in results] == [4, 4]
    torch.testing.assert_close(results[0]["weights"], results[1]["weights"])  # DDP kept the replicas equal


def test_validation_tiles_large_pairs_and_counts_every_pixel():
    """A pair larger than train.val_tile_size is validated window by window; every pixel
    is counted once, and no forward pass sees more than a tile."""
    rng = np.random.default_rng(4)
    engine = build_engine(_cfg(val_tile_size=64), steps_per_epoch=1, class_weights=None, device=torch.device("cpu"))
    sizes = []
    handle = engine.bare_model.register_forward_hook(lambda m, i, o: sizes.append(tuple(i[0].shape[-2:])))
    pair = {k: v[0] for k, v in _batch(rng, n=1, size=150).items()}
    metrics, loss, count = validate(engine, [pair])
    handle.remove()
    assert count == 1 and math.isfinite(loss)
    assert metrics.compute()["num_pixels"] == 150 * 150
    assert len(sizes) > 1 and max(max(s) for s in sizes) <= 64
    # A pair within the tile size is one forward pass over the whole pair.
    sizes.clear()
    handle = engine.bare_model.register_forward_hook(lambda m, i, o: sizes.append(tuple(i[0].shape[-2:])))
    validate(engine, [{k: v[0] for k, v in _batch(rng, n=1, size=48).items()}])
    handle.remove()
    assert sizes == [(48, 48)]
