"""The weights grammar, parsed once into a WeightsSpec, and the defaults each name resolves to."""

from __future__ import annotations

import pytest

from changeseg.models.registry import resolve_weights
from changeseg.models.weights_spec import SEGMENTATION_SOURCES, WeightsSpec, parse_weights


@pytest.mark.parametrize(
    ("text", "kind", "source"),
    [
        ("none", "none", None),
        ("imagenet", "imagenet", None),
        ("torchvision:deeplabv3_resnet50", "torchvision", "deeplabv3_resnet50"),
        ("runs/exp/checkpoint_000003", "checkpoint", "runs/exp/checkpoint_000003"),
        ("/abs/ckpt", "checkpoint", "/abs/ckpt"),
        ("file:///abs/ckpt", "checkpoint", "file:///abs/ckpt"),
        ("s3://bucket/run/checkpoint", "checkpoint", "s3://bucket/run/checkpoint"),
        ("models:/changeseg/3", "checkpoint", "models:/changeseg/3"),
        ("models:/changeseg@champion", "checkpoint", "models:/changeseg@champion"),
    ],
)
def test_each_grammar_parses_and_writes_back(text, kind, source):
    spec = parse_weights(text, file="w.pth")
    assert (spec.kind, spec.source, spec.file) == (kind, source, "w.pth")
    assert spec.text == str(spec) == text
    assert parse_weights(spec) is spec  # parsed once: a spec passes through


def test_null_stays_unset():
    assert parse_weights(None) is None


def test_a_torchvision_source_says_what_it_fixes():
    spec = parse_weights("torchvision:deeplabv3_mobilenet_v3_large")
    assert spec.segmentation == SEGMENTATION_SOURCES["deeplabv3_mobilenet_v3_large"]
    assert spec.segmentation.head_channels == 960 and parse_weights("imagenet").segmentation is None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            "timm:resnet18",
            r"unknown weights 'timm:resnet18': expected none, imagenet, torchvision:<segmentation model>",
        ),
        ("torchvision:unet", r"unknown segmentation model 'unet'.*known: torchvision:deeplabv3_mobilenet_v3_large"),
        ("torchvision:", r"unknown segmentation model ''"),
        ("", "non-empty string"),
        (3, "non-empty string, got 3"),
    ],
)
def test_bad_weights_name_the_grammar(value, message):
    with pytest.raises(ValueError, match=message):
        parse_weights(value)


def test_the_spec_checks_its_own_fields():
    with pytest.raises(ValueError, match="unknown weights kind 'hub'"):
        WeightsSpec("hub")
    with pytest.raises(ValueError, match="'checkpoint' needs source"):
        WeightsSpec("checkpoint")
    with pytest.raises(ValueError, match="'imagenet' takes no source"):
        WeightsSpec("imagenet", "resnet18")


def test_defaults_per_name_and_the_pretrained_backbone_flag():
    assert resolve_weights("c3po") is None
    assert resolve_weights("c3po_vl_cmu_cd") == WeightsSpec("imagenet")
    assert resolve_weights("c3po_vl_cmu_cd", "none") == WeightsSpec("none")
    assert resolve_weights("c3po_vl_cmu_cd", file="r18.pth") == WeightsSpec("imagenet", None, "r18.pth")
    assert resolve_weights("c3po", pretrained_backbone=True) == WeightsSpec("imagenet")
    assert resolve_weights("fc_ef", "models:/fc@champion").kind == "checkpoint"
    with pytest.raises(ValueError, match="pretrained_backbone=True conflicts with weights='torchvision:fcn_resnet50'"):
        resolve_weights("c3po", "torchvision:fcn_resnet50", pretrained_backbone=True)
    with pytest.raises(ValueError, match="'fc_ef' has no pretrained backbone; weights='imagenet'"):
        resolve_weights("fc_ef", "imagenet")
