"""One typed configuration schema for train, score and serve.

Configs are YAML files validated by pydantic with ``extra="forbid"``, so a typo or a
wrong type fails at load time, before any Ray process starts, with the dotted key and
the expected type in the message. ``key=value`` overrides use dotted paths and YAML
scalars (``train.epochs=3``, ``model.mtf=id``, ``data.train_path=null``).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RunSection(_Section):
    """Identity and location of a run."""

    name: str = "changeseg"
    # Checkpoints live under storage_path/name; a local path or s3://bucket/prefix.
    storage_path: str = "./runs"
    seed: int = 0

    @field_validator("name")
    @classmethod
    def _name_is_a_path_segment(cls, value: str) -> str:
        if not value or "/" in value or value in {".", ".."}:
            raise ValueError("must be a non-empty name without '/'")
        return value


class SyntheticSection(_Section):
    """Built-in synthetic pairs, used when no dataset path is given."""

    train_pairs: int = Field(160, ge=1)
    val_pairs: int = Field(40, ge=1)
    size: int = Field(128, ge=32)
    seed: int = 0
    # Where the generated folders go; default: <storage_path>/<run name>/synthetic.
    output_dir: str | None = None


class DataSection(_Section):
    """Where pairs come from and how they are augmented."""

    # A folder with t0/, t1/ and mask/ (local path, file:// or s3://); null = synthetic.
    train_path: str | None = None
    # Validation folder; null = hold out val_fraction of the training pairs.
    val_path: str | None = None
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    # Masks: "binary" = any non-zero value is change; "index" = values are class ids.
    mask_values: Literal["binary", "index"] = "binary"
    ignore_index: int = 255
    crop_size: int | None = Field(None, ge=16)
    hflip: bool = True
    vflip: bool = False
    synthetic: SyntheticSection = SyntheticSection()


class ModelSection(_Section):
    """Arguments of :func:`changeseg.models.create_model`."""

    name: str = "c3po"
    backbone: str = "resnet18"
    mtf: str = "iade"
    msf_scales: int = Field(4, ge=1, le=4)
    head: Literal["fcn", "deeplabv3"] = "fcn"
    num_classes: int = Field(2, ge=2)
    msf_width: int = Field(512, ge=8)
    pretrained_backbone: bool = False

    def factory_kwargs(self) -> dict[str, Any]:
        return self.model_dump()


class TrainSection(_Section):
    """Optimisation (the paper's recipe by default) and Ray Train scaling."""

    epochs: int = Field(10, ge=1)
    batch_size: int = Field(4, ge=1, description="per worker")
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_epochs: float = Field(0.0, ge=0)
    # "auto": the paper's area-ratio weights from the training masks; "sqrt": the same
    # with the square root of the ratio (fewer false alarms); "none": unweighted.
    class_weights: Literal["auto", "sqrt", "none"] | list[float] = "auto"
    num_workers: int = Field(2, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    keep_checkpoints: int = Field(2, ge=1)
    max_failures: int = Field(0, ge=-1)
    num_overlays: int = Field(4, ge=0)


class TrackingSection(_Section):
    """MLflow tracking and registry."""

    # null: $MLFLOW_TRACKING_URI, else a SQLite file mlflow.db in the working directory.
    tracking_uri: str | None = None
    experiment: str = "changeseg"
    registered_model: str = "changeseg"
    alias: str = "champion"
    # The validation metric that decides whether a new version takes the alias.
    champion_metric: str = "val_global_f1"
    register_model: bool = True


class StorageSection(_Section):
    """Object-storage access; null values fall back to the standard AWS variables."""

    endpoint_url: str | None = None
    region: str | None = None
    anonymous: bool = False


class RaySection(_Section):
    """How to reach Ray: an address (``auto``, ``ray://...``, ``host:port``) or
    ``$RAY_ADDRESS`` attaches to a cluster; otherwise a private local instance starts
    with ``num_cpus`` logical CPUs (default: enough for the workers plus Ray Data)."""

    address: str | None = None
    num_cpus: int | None = Field(None, ge=1)


class Config(_Section):
    run: RunSection = RunSection()
    data: DataSection = DataSection()
    model: ModelSection = ModelSection()
    train: TrainSection = TrainSection()
    tracking: TrackingSection = TrackingSection()
    storage: StorageSection = StorageSection()
    ray: RaySection = RaySection()

    def resolved_tracking_uri(self) -> str:
        return resolve_tracking_uri(self.tracking.tracking_uri)


def resolve_tracking_uri(uri: str | None) -> str:
    """The explicit URI, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///./mlflow.db``."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return "sqlite:///" + str(Path("mlflow.db").resolve())


def _format_validation_error(err: ValidationError) -> str:
    lines = []
    for item in err.errors():
        key = ".".join(str(part) for part in item["loc"])
        if item["type"] == "extra_forbidden":
            lines.append(f"unknown key '{key}'")
        else:
            given = item.get("input")
            lines.append(f"'{key}': {item['msg']} (got {given!r})")
    return "invalid configuration: " + "; ".join(lines)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=value`` -> (["a", "b"], YAML-parsed value)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key=value")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override '{text}' has an empty key")
    return parts, yaml.safe_load(raw) if raw.strip() else None


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply dotted overrides to a plain dict (validation happens afterwards)."""
    for text in overrides:
        parts, value = parse_override(text)
        node = data
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override '{text}': '{part}' is not a section")
            node = child
        node[parts[-1]] = value
    return data


def build_config(data: dict[str, Any] | None = None, overrides: list[str] | None = None) -> Config:
    """Validate a plain dict plus overrides into a :class:`Config`."""
    data = apply_overrides(copy.deepcopy(data or {}), list(overrides or []))
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err)) from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML file (or the defaults when ``path`` is None) and apply overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        data = loaded
    return build_config(data, overrides)
