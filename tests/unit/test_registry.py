"""The one model table: every name builds, rebuilds from its config, and knows its family."""

from __future__ import annotations

import json

import pytest
import torch

from changeseg.models import create_model, list_models, model_from_config
from changeseg.models.baselines import BASELINES
from changeseg.models.contract import ChangeModel
from changeseg.models.presets import PRESETS
from changeseg.models.registry import (
    BASELINE,
    C3PO,
    FAMILIES,
    architecture_keys,
    builder_for,
    model_entry,
    register_model,
)

# Small C-3PO widths keep every build in the fast tier; the baselines take no such argument.
SMALL = {C3PO: {"msf_width": 16}, BASELINE: {}}


def test_the_table_holds_c3po_the_presets_and_the_baselines():
    assert set(list_models()) == {"c3po", *PRESETS, *BASELINES}
    assert list_models(family=BASELINE) == sorted(BASELINES)
    assert list_models(family=C3PO) == sorted(["c3po", *PRESETS])
    assert all(model_entry(name).default_weights.kind == "imagenet" for name in PRESETS)
    assert model_entry("c3po").default_weights is None and model_entry("fc_ef").default_weights is None


@pytest.mark.parametrize("name", list_models())
def test_every_name_builds_and_rebuilds_from_its_config(name):
    family = model_entry(name).family.name
    torch.manual_seed(0)
    model = create_model(name, weights="none", **SMALL[family])
    assert isinstance(model, ChangeModel)
    config = json.loads(json.dumps(model.config))  # JSON-safe, as a checkpoint's model.json
    assert set(config) <= architecture_keys(name)
    rebuilt = model_from_config(config)
    assert type(rebuilt) is type(model) and rebuilt.config == model.config
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()} == shapes
    rebuilt.load_state_dict(model.state_dict())
    t0, t1 = torch.rand(1, 3, 40, 56), torch.rand(1, 3, 40, 56)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(t0, t1), model.eval()(t0, t1))


def test_presets_fix_their_arguments_and_callers_override_them():
    model = create_model("c3po_changesim_multi", weights="none", msf_width=16, mtf="id")
    assert (model.num_classes, model.config["mtf"], model.config["head"]) == (5, "id", "deeplabv3")
    assert model_entry("c3po_changesim_multi").num_classes == 5 and model_entry("fc_ef").num_classes == 2


def test_every_family_has_a_builder():
    for family in FAMILIES.values():
        assert callable(builder_for(family))


def test_a_family_rejects_arguments_it_does_not_take():
    with pytest.raises(ValueError, match="'fc_siam_diff' takes only num_classes, in_channels; got backbone, mtf"):
        create_model("fc_siam_diff", backbone="resnet18", mtf="id")
    with pytest.raises(ValueError, match="RGB images.*in_channels=4"):
        create_model("fc_ef", in_channels=4)


def test_unknown_names_and_duplicates_are_refused():
    with pytest.raises(ValueError, match="unknown model 'unet'; known models: c3po, .*fc_ef"):
        create_model("unet")
    with pytest.raises(ValueError, match="already registered"):
        register_model("fc_ef", family=BASELINE)
    with pytest.raises(ValueError, match="backbone are not arguments of family 'baseline'"):
        register_model("fc_new", family=BASELINE, fixed={"backbone": "resnet18"})
    assert "fc_new" not in list_models()


def test_a_checkpoint_config_holds_architecture_keys_only():
    with pytest.raises(ValueError, match="not architecture arguments: weights"):
        model_from_config({"name": "c3po", "weights": "imagenet"})
    with pytest.raises(ValueError, match="not architecture arguments: msf_width"):
        model_from_config({"name": "fc_ef", "num_classes": 2, "msf_width": 16})
