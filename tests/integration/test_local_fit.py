"""Small-data fine-tuning: optimiser groups, frozen backbone BatchNorm, the in-process trainer, the recipe."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import write_pair_folder
from torch import nn

from changeseg.config import build_config, load_config
from changeseg.data.records import scan_folder
from changeseg.models import create_model, resolve_model_args
from changeseg.training.engine import build_optimizer, set_train_mode
from changeseg.training.local import fit_local

ROOT = Path(__file__).resolve().parents[2]
TINY = {"backbone": "resnet18", "msf_width": 16, "msf_scales": 2}


def _cfg(**sections):
    data = {"model": dict(TINY), "train": {"epochs": 2, "batch_size": 2, "num_workers": 1}, "data": {"crop_size": 32}}
    for key, value in sections.items():
        data.setdefault(key, {}).update(value)
    return build_config(data)


def _bn_stats(module: nn.Module) -> list[torch.Tensor]:
    return [m.running_mean.clone() for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def test_optimizer_groups_split_backbone_from_the_rest():
    cfg = _cfg(train={"lr": 1e-3, "backbone_lr": 1e-5})
    model = create_model("c3po", **TINY)
    opt = build_optimizer(model, cfg)
    rest, backbone = opt.param_groups
    assert rest["lr"] == 1e-3 and backbone["lr"] == 1e-5
    assert {id(p) for p in backbone["params"]} == {id(p) for p in model.backbone.parameters()}
    everything = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(everything) == sorted(id(p) for p in model.parameters())  # each once
    # Without backbone_lr both groups use lr; a model without a backbone has one group.
    assert [g["lr"] for g in build_optimizer(model, _cfg(train={"lr": 2e-4})).param_groups] == [2e-4, 2e-4]
    assert len(build_optimizer(create_model("fc_siam_diff"), cfg).param_groups) == 1


def test_frozen_backbone_batchnorm_keeps_its_statistics():
    model = create_model("c3po", **TINY)
    set_train_mode(model, _cfg(train={"freeze_backbone_bn": True}))
    backbone_bn = [m for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    assert backbone_bn and not any(m.training for m in backbone_bn)
    assert model.training and model.head.training and model.msf.training
    before = _bn_stats(model.backbone)
    x = torch.rand(2, 3, 32, 32)
    model(x, x.flip(-1))
    assert all(torch.equal(a, b) for a, b in zip(before, _bn_stats(model.backbone)))
    set_train_mode(model, _cfg())
    assert all(m.training for m in backbone_bn)
    model(x, x.flip(-1))
    assert not all(torch.equal(a, b) for a, b in zip(before, _bn_stats(model.backbone)))


def test_fit_local_trains_the_recipe_steps(tmp_path):
    write_pair_folder(tmp_path, [f"p{i}" for i in range(3)], size=(40, 40))
    records = scan_folder(str(tmp_path))
    cfg = _cfg(data={"repeat": 3}, train={"epochs": 3, "freeze_backbone_bn": True, "lr": 1e-3})
    model = create_model("c3po", **TINY)
    before = _bn_stats(model.backbone)
    lines: list[str] = []
    fit = fit_local(cfg, records, model=model, progress=lines.append, progress_seconds=0)
    # 3 pairs x repeat 3 = 9 samples per epoch -> 4 batches of 2; 3 epochs.
    assert fit.steps == 12 and len(fit.losses) == 3
    assert fit.losses[-1] < fit.losses[0]
    assert not fit.model.training
    assert all(torch.equal(a, b) for a, b in zip(before, _bn_stats(model.backbone)))
    assert lines[-1].startswith("trained 12 steps")
    assert len(fit.class_weights) == 2 and fit.class_weights[1] > fit.class_weights[0]


def test_fit_local_errors(tmp_path):
    with pytest.raises(ValueError, match="at least one training pair"):
        fit_local(_cfg(), [])
    write_pair_folder(tmp_path, ["only"], size=(40, 40))
    with pytest.raises(ValueError, match="cannot fill one batch of 2: raise data.repeat"):
        fit_local(_cfg(), scan_folder(str(tmp_path)), progress=None)
    with pytest.raises(ValueError, match="class_weights has 3 values but model.num_classes is 2"):
        fit_local(
            _cfg(data={"repeat": 2}, train={"class_weights": [1.0, 2.0, 3.0]}),
            scan_folder(str(tmp_path)),
            progress=None,
        )


def test_real_pairs_recipe():
    cfg = load_config(ROOT / "jobs" / "configs" / "real_pairs.yaml")
    arch = resolve_model_args(**cfg.model.factory_kwargs())
    assert arch["backbone"] == "efficientnet_lite0" and arch["weights"] == "imagenet"
    assert cfg.train.freeze_backbone_bn and cfg.train.backbone_lr < cfg.train.lr
    assert cfg.data.crop_size == 256 and cfg.data.repeat > 1
    assert arch["input_scale"] == 2  # small objects get twice the feature cells
