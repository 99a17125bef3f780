"""The ChangeModel contract: normalisation from the backbone's weights, branches, helpers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from changeseg.models import create_model, model_from_config
from changeseg.models.channels import DEFAULT_EXTRA_MEAN, DEFAULT_EXTRA_STD, IMAGENET_MEAN, IMAGENET_STD
from changeseg.models.contract import ChangeModel, backbone_of, input_channels, supports_branches


def _stats(model: ChangeModel) -> list[float]:
    """Mean then std, one flat list (what pytest.approx compares)."""
    return model.mean.flatten().tolist() + model.std.flatten().tolist()


@pytest.mark.parametrize("backbone", ["resnet18", "mobilenet_v2", "efficientnet_lite0"])
def test_torchvision_and_lite0_backbones_normalise_with_imagenet_statistics(backbone):
    model = create_model(backbone=backbone, msf_width=16, msf_scales=2)
    assert (model.backbone.rgb_mean, model.backbone.rgb_std) == (IMAGENET_MEAN, IMAGENET_STD)
    assert _stats(model) == pytest.approx([*IMAGENET_MEAN, *IMAGENET_STD])


def test_a_timm_backbone_normalises_as_its_pretrained_cfg_says():
    timm = pytest.importorskip("timm")
    cfg = timm.create_model("mobilevit_xxs", pretrained=False).pretrained_cfg  # reads the cfg, downloads nothing
    assert tuple(cfg["mean"]) != IMAGENET_MEAN  # else this test could not tell the two apart
    model = create_model(backbone="timm:mobilevit_xxs", msf_width=16, msf_scales=2)
    assert _stats(model) == pytest.approx([*cfg["mean"], *cfg["std"]])
    # Recorded in the config, so a checkpoint keeps them even if timm's defaults move.
    assert model.config["channel_mean"] == pytest.approx(list(cfg["mean"]))
    assert _stats(model_from_config(model.config)) == pytest.approx(_stats(model))
    assert "channel_mean" not in create_model(msf_width=16, msf_scales=2).config  # ImageNet: as before
    # Extra bands keep their per-channel defaults; R, G, B take the cfg's values where they sit.
    bands = create_model(
        backbone="timm:mobilevit_xxs", msf_width=16, msf_scales=2, in_channels=4, rgb_channels=[2, 1, 0]
    )
    mean, std = cfg["mean"], cfg["std"]
    assert _stats(bands) == pytest.approx(
        [mean[2], mean[1], mean[0], DEFAULT_EXTRA_MEAN, std[2], std[1], std[0], DEFAULT_EXTRA_STD]
    )


def test_explicit_channel_statistics_win():
    model = create_model(msf_width=16, msf_scales=1, in_channels=2, channel_mean=[0.1, 0.2], channel_std=[0.3, 0.4])
    assert _stats(model) == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert input_channels(model) == 2 and model.config["channel_mean"] == [0.1, 0.2]


def test_c3po_has_branches_and_a_backbone_the_baselines_do_not():
    c3po = create_model(msf_width=16, msf_scales=2).eval()
    baseline = create_model("fc_siam_diff").eval()
    assert supports_branches(c3po) and backbone_of(c3po) is c3po.backbone
    logits, branches = c3po.forward_with_branches(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32))
    assert logits.shape == (1, 2, 32, 32) and len(branches) == 2
    assert not supports_branches(baseline) and backbone_of(baseline) is None
    with pytest.raises(TypeError, match="FCSiamDiff has no MTF branches"):
        baseline.forward_with_branches(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32))
    assert c3po.describe() == "C-3PO resnet18 MTF iade x2 fcn" and baseline.describe() == "fc-siam-diff"


def test_stand_in_modules_get_the_plain_answers():
    plain = nn.Conv2d(6, 2, 1)
    assert not supports_branches(plain) and backbone_of(plain) is None and input_channels(plain) == 3


def test_the_contract_checks_its_arguments():
    with pytest.raises(ValueError, match="got 1"):
        ChangeModel(num_classes=1, in_channels=3, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    with pytest.raises(ValueError, match="need 4 values, got 3 and 3"):
        ChangeModel(num_classes=2, in_channels=4, mean=IMAGENET_MEAN, std=IMAGENET_STD)
