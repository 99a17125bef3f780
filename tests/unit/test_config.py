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
    cfg = build_config({"train": {"epochs": 5}}, ["train.epochs=3", "model.mtf=id", "data.train_path=null", "train.lr=0.001"])
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
