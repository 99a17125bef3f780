"""Tests for changeseg.models: MTF formulas, MSF, heads, C3PO and the factory."""

from __future__ import annotations

import json
import urllib.error

import pytest
import torch
import torchvision
from torch import nn
from torch.nn import functional as F

from changeseg.models import (
    C3PO,
    MSF,
    MTF,
    MTF_MODES,
    create_backbone,
    create_model,
    list_models,
    model_from_config,
)

torch.set_num_threads(2)

AUTHOR_MODES = ("i", "a", "d", "e", "ia", "id", "ie", "iae", "ide", "iad", "iade", "i2ade", "iad2e", "i2ad2e", "i2d")


def _set_identity(conv: nn.Conv2d, scale: float = 1.0) -> None:
    """3x3 kernel whose centre tap is scale * I: conv(x) == scale * x."""
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[:, :, 1, 1] = scale * torch.eye(conv.in_channels)


def _identity_mtf(mode: str, channels: int = 4) -> MTF:
    mtf = MTF(channels, mode)
    for module in mtf.modules():
        if isinstance(module, nn.Conv2d):
            _set_identity(module)
    return mtf


@pytest.fixture
def pair() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 4, 5, 7, generator=g), torch.randn(2, 4, 5, 7, generator=g)


# --- MTF -------------------------------------------------------------------

# With identity convs each branch is its pairwise feature:
# info f0 + f1, appear ReLU(f1 - f0), disappear ReLU(f0 - f1), exchange |f0 - f1|.
EXPECTED = {
    "i": lambda a, b: F.relu(a + b),
    "a": lambda a, b: F.relu(b - a),
    "d": lambda a, b: F.relu(a - b),
    "e": lambda a, b: (a - b).abs(),
    "ia": lambda a, b: F.relu(a + b + 2 * F.relu(b - a)),
    "id": lambda a, b: F.relu(a + b + 2 * F.relu(a - b)),
    "ie": lambda a, b: F.relu(a + b + 2 * (a - b).abs()),
    "i2d": lambda a, b: F.relu(a + b + 2 * F.relu(a - b)),
    "iad": lambda a, b: F.relu(a + b + F.relu(b - a) + F.relu(a - b)),
    "iae": lambda a, b: F.relu(a + b + F.relu(b - a) + (a - b).abs()),
    "ide": lambda a, b: F.relu(a + b + F.relu(a - b) + (a - b).abs()),
    "iade": lambda a, b: F.relu(a + b + F.relu(b - a) + F.relu(a - b) + (a - b).abs()),
    "i2ad2e": lambda a, b: F.relu(a + b + F.relu(b - a) + F.relu(a - b) + (a - b).abs()),
}


@pytest.mark.parametrize("mode", sorted(EXPECTED))
def test_mtf_matches_formula_with_identity_convs(mode, pair):
    f0, f1 = pair
    out = _identity_mtf(mode)(f0, f1)
    torch.testing.assert_close(out, EXPECTED[mode](f0, f1))


def test_mtf_branches_are_pre_combination_maps(pair):
    f0, f1 = pair
    fused, branches = _identity_mtf("iade")(f0, f1, return_branches=True)
    assert list(branches) == ["info", "appear", "disappear", "exchange"]
    torch.testing.assert_close(branches["info"], f0 + f1)
    torch.testing.assert_close(branches["appear"], F.relu(f1 - f0))
    torch.testing.assert_close(branches["disappear"], F.relu(f0 - f1))
    torch.testing.assert_close(branches["exchange"], (f0 - f1).abs())
    torch.testing.assert_close(fused, EXPECTED["iade"](f0, f1))
    _, only = _identity_mtf("id")(f0, f1, return_branches=True)
    assert list(only) == ["info", "disappear"]


def test_mtf_shared_info_conv_is_conv_of_each_summed(pair):
    """Random weights: I = conv_i(f0) + conv_i(f1), the same conv on both."""
    f0, f1 = pair
    mtf = MTF(4, "i")
    w = mtf.conv_i.weight
    expected = F.relu(F.conv2d(f0, w, padding=1) + F.conv2d(f1, w, padding=1))
    torch.testing.assert_close(mtf(f0, f1), expected)


def test_mtf_separate_convs_go_to_their_inputs(pair):
    f0, f1 = pair
    mtf = _identity_mtf("i2ad2e")
    _set_identity(mtf.conv_i1, 3.0)  # f1's info conv
    _set_identity(mtf.conv_d, -2.0)  # disappear's own conv
    _, br = mtf(f0, f1, return_branches=True)
    torch.testing.assert_close(br["info"], f0 + 3 * f1)
    torch.testing.assert_close(br["appear"], F.relu(f1 - f0))
    torch.testing.assert_close(br["disappear"], -2 * F.relu(f0 - f1))


def test_mtf_appear_and_disappear_share_conv_by_default(pair):
    f0, f1 = pair
    mtf = MTF(4, "iad")
    w = mtf.conv_r.weight
    _, br = mtf(f0, f1, return_branches=True)
    torch.testing.assert_close(br["appear"], F.conv2d(F.relu(f1 - f0), w, padding=1))
    torch.testing.assert_close(br["disappear"], F.conv2d(F.relu(f0 - f1), w, padding=1))


@pytest.mark.parametrize(
    ("mode", "n_convs"),
    [
        ("i", 1),
        ("i2", 2),
        ("a", 1),
        ("ia", 2),
        ("iad", 2),
        ("iad2", 3),
        ("iade", 3),
        ("i2ade", 4),
        ("iad2e", 4),
        ("i2ad2e", 5),
        ("i2d", 3),
    ],
)
def test_mtf_parameter_count_reflects_shared_and_separate_convs(mode, n_convs):
    mtf = MTF(4, mode)
    assert sum(p.numel() for p in mtf.parameters()) == n_convs * 4 * 4 * 9  # 3x3, no bias


def test_mtf_modes_include_every_author_mode():
    assert set(AUTHOR_MODES) <= set(MTF_MODES)
    assert len(set(MTF_MODES)) == len(MTF_MODES)


@pytest.mark.parametrize("mode", MTF_MODES)
def test_mtf_every_mode_backpropagates(mode, pair):
    f0, f1 = (t.clone().requires_grad_() for t in pair)
    mtf = MTF(4, mode)
    out = mtf(f0, f1)
    assert out.shape == f0.shape and (out >= 0).all()
    out.square().sum().backward()
    for name, p in mtf.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    assert f0.grad is not None and f1.grad is not None


@pytest.mark.parametrize("bad", ["", "x", "ad", "ae", "d2", "id2", "ai", "i3", "iadee", "IADE", "2"])
def test_mtf_invalid_mode(bad):
    with pytest.raises(ValueError, match=f"invalid MTF mode '{bad}'.*iade"):
        MTF(4, bad)


# --- MSF -------------------------------------------------------------------


def _feats(channels=(4, 8, 16, 32), sizes=((17, 24), (9, 12), (5, 6), (3, 3)), n=2):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(n, c, *s, generator=g) for c, s in zip(channels, sizes)]


@pytest.mark.parametrize("num_scales", [1, 2, 3, 4])
def test_msf_output_at_finest_scale_passed_in(num_scales):
    feats = _feats()
    msf = MSF([4, 8, 16, 32], num_scales=num_scales, width=8)
    assert msf.out_channels == 8
    assert msf(feats).shape == (2, 8, 17, 24)
    # Only the used scales, with the target size given explicitly.
    assert msf(feats[-num_scales:], size=(17, 24)).shape == (2, 8, 17, 24)


def test_msf_top_down_formula():
    feats = _feats()
    msf = MSF([4, 8, 16, 32], num_scales=2, width=8).eval()
    c2, c3 = feats[2], feats[3]
    last3 = msf.inner[1](c3)
    out3 = msf.layer[1](last3)
    last2 = msf.inner[0](c2) + F.interpolate(last3, size=c2.shape[-2:], mode="nearest")
    out2 = msf.layer[0](last2)
    up = [F.interpolate(o, size=(17, 24), mode="bilinear", align_corners=False) for o in (out2, out3)]
    expected = msf.reduce(torch.cat(up, 1))
    torch.testing.assert_close(msf(feats), expected)
    convs = [m for m in msf.modules() if isinstance(m, nn.Conv2d)]
    assert [c.kernel_size for c in convs] == [(1, 1)] * 2 + [(3, 3)] * 3
    assert convs[-1].in_channels == 16 and convs[-1].bias is None


@pytest.mark.parametrize("num_scales", [0, 5])
def test_msf_num_scales_validated(num_scales):
    with pytest.raises(ValueError, match=str(num_scales)):
        MSF([4, 8, 16, 32], num_scales=num_scales, width=8)


# --- backbone --------------------------------------------------------------


def test_resnet18_backbone_scales():
    bb = create_backbone(name="resnet18")
    assert bb.channels == (64, 128, 256, 512) and bb.strides == (4, 8, 16, 32)
    assert not hasattr(bb, "fc") and not hasattr(bb, "avgpool")
    feats = bb.eval()(torch.rand(1, 3, 64, 96))
    assert [tuple(f.shape[1:]) for f in feats] == [(64, 16, 24), (128, 8, 12), (256, 4, 6), (512, 2, 3)]


def test_pretrained_backbone_loads_from_offline_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    reference = torchvision.models.resnet18(weights=None).state_dict()
    cached = cache / url.rsplit("/", 1)[-1]
    torch.save(reference, cached)
    # Not torchvision's file (its SHA-256 does not start with the prefix in the name): refused.
    with pytest.raises(RuntimeError, match="hash prefix"):
        create_backbone(name="resnet18", pretrained=True)
    # The same tensors given explicitly as weights_file load (tensors only).
    from changeseg.models.pretrained import load_imagenet_weights

    bb = create_backbone(name="resnet18")
    load_imagenet_weights(bb, weights_file=str(cached))
    assert torch.equal(bb.stem[0].weight, reference["conv1.weight"])
    assert torch.equal(bb.layer4[1].bn2.running_var, reference["layer4.1.bn2.running_var"])


def test_pretrained_backbone_without_network_names_url_and_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError("network unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    with pytest.raises(RuntimeError) as info:
        create_backbone(name="resnet18", pretrained=True)
    message = str(info.value)
    assert url in message
    assert str(tmp_path / "hub" / "checkpoints") in message


def test_unknown_backbone():
    with pytest.raises(ValueError, match="resnet9.*resnet18"):
        create_backbone(name="resnet9")


# --- full model ------------------------------------------------------------


@pytest.mark.parametrize("head", ["fcn", "deeplabv3"])
@pytest.mark.parametrize("msf_scales", [1, 2, 3, 4])
def test_c3po_odd_size_logits(head, msf_scales):
    num_classes = 2 if msf_scales % 2 else 5
    model = create_model(head=head, msf_scales=msf_scales, msf_width=16, num_classes=num_classes, mtf="id")
    assert len(model.mtf) == msf_scales
    assert [m.channels for m in model.mtf] == [64, 128, 256, 512][-msf_scales:]
    g = torch.Generator().manual_seed(2)
    t0, t1 = torch.rand(2, 3, 67, 93, generator=g), torch.rand(2, 3, 67, 93, generator=g)
    # Train mode with batch 2: DeepLabHead's pooled BatchNorm needs > 1 sample.
    logits, branches = model.train().forward_with_branches(t0, t1)
    assert logits.shape == (2, num_classes, 67, 93)
    assert len(branches) == msf_scales and set(branches[0]) == {"info", "disappear"}
    with torch.no_grad():
        assert model.eval()(t0[:1], t1[:1]).shape == (1, num_classes, 67, 93)


@pytest.mark.parametrize("mode", ["iade", "i2ad2e"])
def test_c3po_backpropagates(mode):
    model = create_model(mtf=mode, msf_width=32, msf_scales=4).train()
    t0, t1 = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    F.cross_entropy(model(t0, t1), torch.randint(0, 2, (2, 64, 64))).backward()
    for name, p in model.mtf.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert model.backbone.stem[0].weight.grad is not None


def test_c3po_normalises_inputs_internally():
    model = create_model(msf_width=16, msf_scales=1).eval()
    seen = []
    model.backbone.stem.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    mean_image = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1).expand(1, 3, 32, 32)
    white = torch.ones(1, 3, 32, 32)
    with torch.no_grad():
        model(mean_image, white)
    torch.testing.assert_close(seen[0], torch.zeros(1, 3, 32, 32))
    torch.testing.assert_close(seen[1][0, :, 0, 0], torch.tensor([2.2489, 2.4286, 2.6400]), atol=1e-3, rtol=0)
    assert "mean" not in model.state_dict() and "std" not in model.state_dict()


def test_mismatched_or_malformed_inputs():
    model = create_model(msf_width=16, msf_scales=1)
    a = torch.rand(1, 3, 32, 32)
    with pytest.raises(ValueError, match=r"\(1, 3, 32, 48\)"):
        model(a, torch.rand(1, 3, 32, 48))
    with pytest.raises(ValueError, match=r"t1 .*\(1, 4, 32, 32\)"):
        model(a, torch.rand(1, 4, 32, 32))
    with pytest.raises(ValueError, match=r"t0 .*\(3, 32, 32\)"):
        model(a[0], a[0])


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"mtf": "iadx"}, "iadx"),
        ({"backbone": "resnet9"}, "resnet9"),
        ({"head": "unet"}, "unet"),
        ({"num_classes": 1}, "num_classes.*got 1"),
        ({"name": "c4po"}, "c4po"),
        ({"msf_scales": 5}, "got 5"),
        ({"msf_scales": 0}, "got 0"),
        ({"msf_width": 0}, "msf_width.*got 0"),
    ],
)
def test_create_model_rejects_bad_arguments(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        create_model(**{"msf_width": 16, **kwargs})


def test_c3po_direct_construction_checks_num_classes():
    with pytest.raises(ValueError, match="got 1"):
        C3PO(backbone=create_backbone(name="resnet18"), mtf="id", msf_scales=1, head="fcn", num_classes=1)


def test_config_round_trip_reproduces_outputs():
    model = create_model(mtf="i2ad2e", msf_scales=3, head="deeplabv3", num_classes=3, msf_width=16)
    assert {"c3po", "c3po_vl_cmu_cd", "c3po_changesim_multi"} <= set(list_models())
    t0, t1 = torch.rand(2, 3, 48, 40), torch.rand(2, 3, 48, 40)
    with torch.no_grad():
        model.train()(t0, t1)  # move BN running stats away from their defaults
    config = json.loads(json.dumps(model.config))
    assert config == {
        "name": "c3po",
        "backbone": "resnet18",
        "mtf": "i2ad2e",
        "msf_scales": 3,
        "head": "deeplabv3",
        "num_classes": 3,
        "msf_width": 16,
    }
    rebuilt = model_from_config(config).eval()
    model.eval()
    with torch.no_grad():
        expected = model(t0, t1)
        assert not torch.allclose(rebuilt(t0, t1), expected)  # fresh weights differ
        rebuilt.load_state_dict(model.state_dict())
        assert torch.equal(rebuilt(t0, t1), expected)


def test_msf_head_runs_at_the_finest_fused_scale():
    """MSF-k feeds the head at the finest of the k fused scales (ResNet: 1/32 ... 1/4)."""
    seen = {}
    for scales, stride in ((1, 32), (2, 16), (3, 8), (4, 4)):
        model = create_model(msf_width=8, msf_scales=scales, head="fcn").eval()
        handle = model.head.register_forward_hook(lambda m, i, o, s=scales: seen.__setitem__(s, i[0].shape[-2:]))
        with torch.no_grad():
            out = model(torch.rand(1, 3, 64, 96), torch.rand(1, 3, 64, 96))
        handle.remove()
        assert seen[scales] == (64 // stride, 96 // stride), scales
        assert out.shape == (1, 2, 64, 96)


def test_mobilenet_v2_ends_with_its_1280_channel_conv():
    from changeseg.models import create_backbone

    backbone = create_backbone(name="mobilenet_v2")
    assert backbone.channels[-1] == 1280 and backbone.strides == (4, 8, 16, 32)
