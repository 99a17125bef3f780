from pathlib import Path

import pytest

from changeseg.config import Config, ConfigError, apply_overrides, build_config, load_config

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_follow_the_paper_recipe():
    cfg = Config()
    assert cfg.train.lr == 1e-4 and cfg.train.weight_decay == 0.0
    from changeseg.models import create_model

    built = create_model(**cfg.model.factory_kwargs()).config  # unset fields: the factory's defaults
    assert built["mtf"] == "iade" and built["msf_scales"] == 4 and built["msf_width"] == 512
    assert cfg.tracking.registered_model == "changeseg" and cfg.tracking.alias == "champion"


def test_overrides_are_dotted_and_yaml_typed():
    cfg = build_config(
        {"train": {"epochs": 5}}, ["train.epochs=3", "model.mtf=id", "data.train_path=null", "train.lr=0.001"]
    )
    assert cfg.train.epochs == 3 and isinstance(cfg.train.epochs, int)
    assert cfg.model.mtf == "id"
    assert cfg.data.train_path is None
    assert cfg.train.lr == pytest.approx(1e-3)


def test_overrides_do_not_mutate_the_input():
    data = {"train": {"epochs": 5}}
    build_config(data, ["train.epochs=7"])
    assert data == {"train": {"epochs": 5}}


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"unknown key 'train\.epoch'"):
        build_config({"train": {"epoch": 3}})


def test_wrong_type_names_key_and_expected_type():
    with pytest.raises(ConfigError) as err:
        build_config({}, ["train.batch_size=lots"])
    message = str(err.value)
    assert "'train.batch_size'" in message and "integer" in message and "'lots'" in message


def test_out_of_range_values_are_rejected():
    with pytest.raises(ConfigError, match="model.num_classes"):
        build_config({}, ["model.num_classes=1"])
    with pytest.raises(ConfigError, match="run.name"):
        build_config({}, ["run.name=a/b"])


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["train.epochs"])


def test_missing_config_file_names_the_path(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=str(missing)):
        load_config(missing)


@pytest.mark.parametrize("path", sorted((ROOT / "jobs" / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_validate(path):
    load_config(path)


@pytest.mark.parametrize("name", ["default", "vl_cmu_cd", "pcd", "changesim", "levir_cd"])
def test_paper_recipes_start_pretrained_with_warmup(name):
    """The paper always fine-tunes from pretrained weights, with max(5 epochs, 1000 iterations) of warm-up."""
    from changeseg.models import resolve_model_args

    cfg = load_config(ROOT / "jobs" / "configs" / f"{name}.yaml")
    assert resolve_model_args(**cfg.model.factory_kwargs())["weights"] == "imagenet"
    assert (cfg.train.warmup_epochs, cfg.train.warmup_steps) == (5, 1000)


def test_the_model_section_follows_the_family_of_its_name():
    from changeseg.config import BaselineModelSection, C3POModelSection

    assert isinstance(build_config({}).model, C3POModelSection)
    baseline = build_config({"model": {"name": "fc_siam_conc", "num_classes": 3}}).model
    assert isinstance(baseline, BaselineModelSection)
    assert baseline.factory_kwargs() == {"name": "fc_siam_conc", "num_classes": 3}
    assert baseline.resolved_num_classes() == 3


def test_a_c3po_field_on_a_baseline_is_named():
    with pytest.raises(
        ConfigError, match=r"model\.backbone, model\.msf_width: C-3PO option, but model 'fc_ef' is an FC baseline"
    ):
        build_config({"model": {"name": "fc_ef", "backbone": "resnet18", "msf_width": 64}})
    with pytest.raises(ConfigError, match=r"'model': .*'fc_ef' has no pretrained backbone; weights='imagenet'"):
        build_config({}, ["model.name=fc_ef", "model.weights=imagenet"])
    with pytest.raises(ConfigError, match=r"'model.in_channels': .*RGB pairs"):
        build_config({}, ["model.name=fc_ef", "model.in_channels=4"])
    with pytest.raises(ConfigError, match=r"'fc_ef' takes RGB pairs but data.bands picks 4 bands"):
        build_config({"data": {"bands": [1, 2, 3, 4]}}, ["model.name=fc_ef"])


def test_an_unknown_model_name_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"'model.name': .*unknown model 'unet'; known models: c3po, .*fc_siam_diff"):
        build_config({}, ["model.name=unet"])


def test_an_override_switches_the_model_family():
    recipe = ROOT / "jobs" / "configs" / "levir_cd.yaml"
    baseline = load_config(recipe, ["model.name=fc_siam_diff"]).model
    # The recipe's C-3PO fields and its ImageNet weights go; its class count stays.
    assert baseline.model_dump() == {
        "name": "fc_siam_diff",
        "num_classes": 2,
        "in_channels": None,
        "weights": None,
        "weights_file": None,
    }
    warm = load_config(recipe, ["model.name=fc_ef", "model.weights=models:/fc-ef@champion"]).model
    assert warm.weights_spec().text == "models:/fc-ef@champion"
    # A C-3PO field given as an override with the switch is still an error, not dropped.
    with pytest.raises(ConfigError, match=r"model\.mtf: C-3PO option"):
        load_config(recipe, ["model.name=fc_ef", "model.mtf=id"])
    # Override lists that null the C-3PO fields by hand keep working.
    nulled = load_config(recipe, ["model.name=fc_ef", "model.backbone=null", "model.msf_width=null"]).model
    assert nulled.factory_kwargs() == {"name": "fc_ef", "num_classes": 2}
    # Within a family nothing is dropped; and back from a baseline, the C-3PO defaults apply.
    preset = load_config(recipe, ["model.name=c3po_vl_cmu_cd"]).model
    assert (preset.backbone, preset.mtf, preset.weights_spec().kind) == ("resnet18", "iade", "imagenet")
    back = build_config({"model": {"name": "fc_ef", "num_classes": 3}}, ["model.name=c3po", "model.msf_width=16"]).model
    assert back.factory_kwargs() == {"name": "c3po", "num_classes": 3, "msf_width": 16}


def test_weights_are_parsed_at_validation_and_dumped_as_written():
    from changeseg.models.weights_spec import WeightsSpec

    cfg = build_config({}, ["model.weights=torchvision:fcn_resnet50", "model.weights_file=/w/fcn.pth"])
    assert cfg.model.weights == WeightsSpec("torchvision", "fcn_resnet50")
    assert cfg.model.weights_spec() == WeightsSpec("torchvision", "fcn_resnet50", "/w/fcn.pth")
    assert cfg.model_dump(mode="json")["model"]["weights"] == "torchvision:fcn_resnet50"
    assert build_config({}, ["model.name=c3po_pcd_resnet18"]).model.weights_spec() == WeightsSpec("imagenet")
    with pytest.raises(ConfigError, match=r"'model.weights': .*unknown weights 'timm:resnet18'"):
        build_config({}, ["model.weights=timm:resnet18"])
    with pytest.raises(ConfigError, match="pretrained_backbone=True conflicts"):
        build_config({}, ["model.weights=torchvision:fcn_resnet50", "model.pretrained_backbone=true"])
