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
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PlainSerializer,
    PlainValidator,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from changeseg.models.registry import BASELINE, C3PO, FAMILIES, model_entry, resolve_weights
from changeseg.models.weights_spec import WeightsSpec, parse_weights

# Numeric precision of forward passes: "auto" is bf16 on a CUDA device that supports
# it, else fp32; bf16/fp16 are autocast modes (fp16 with a gradient scaler in training).
# Losses and metrics are always computed in fp32. See changeseg.devices.
Precision = Literal["auto", "fp32", "bf16", "fp16"]


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

    # A dataset (local path, file:// or s3://): a folder in any known layout, a manifest
    # .parquet, or a folder of packed part-*.parquet shards; null = synthetic pairs.
    train_path: str | None = None
    # Validation dataset; null = the pairs of train_path whose split is val_split, or,
    # when there are none, val_fraction of the training pairs held out.
    val_path: str | None = None
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    # "auto" detects the layout; see changeseg.data.layouts for the others.
    layout: Literal[
        "auto", "folder", "levir", "dsifn", "airchange", "pcd", "vl_cmu_cd", "changesim", "manifest", "shards"
    ] = "auto"
    # Which records train and which validate, by their split (folder, file prefix or manifest).
    train_split: str = "train"
    val_split: str = "val"
    # PCD: the cross-validation fold (0-4) whose pairs form the "test" split.
    fold: int = Field(0, ge=0, le=4)
    # Bad pairs (missing file, undecodable, sizes differ, unexpected mask values) are
    # reported and left out; strict makes them fatal.
    strict: bool = False
    # How masks become classes when a record does not say (see data.decode.MASK_ENCODINGS).
    mask_values: Literal["binary", "binary-inverted", "index", "colormap:changesim", "colormap:changesim:binary"] = (
        "binary"
    )
    ignore_index: int = 255
    # Resize every pair to (H, W) when read, for training and validation alike.
    resize: tuple[int, int] | None = None
    crop_size: int | None = Field(None, ge=16)
    hflip: bool = True
    vflip: bool = False
    # Random multiples of 90 degrees (180 only for non-square images without a crop).
    rotate90: bool = False
    # Resize by a factor drawn from [low, high] before cropping; needs crop_size.
    scale_jitter: tuple[float, float] | None = None
    # Brightness, contrast and saturation factors in [1 - j, 1 + j], drawn separately
    # for t0 and t1: an illumination change is not a change.
    color_jitter: float = Field(0.0, ge=0.0, lt=1.0)
    # Probability of swapping t0 and t1. Binary masks stay as they are; class-index
    # masks map class c to swap_class_map[c] (e.g. appear <-> disappear).
    swap_prob: float = Field(0.0, ge=0.0, le=1.0)
    swap_class_map: list[int] | None = None
    # Each training pair is read this many times per epoch, each time with a fresh random
    # crop: a few large images (AirChange's 952x640) then give many 256-px samples.
    repeat: int = Field(1, ge=1)
    synthetic: SyntheticSection = SyntheticSection()
    # Rasters read with rasterio (.tif and other GDAL formats), see changeseg.data.raster.
    # Bands to read, 1-based; null: the first three (a single band repeated three times).
    bands: list[int] | None = None
    # What each chosen band is ("red", "green", "blue", "nir", ...): the bands named red,
    # green and blue take the pretrained RGB filters; null: the first three are R, G, B.
    band_roles: list[str] | None = None
    # Values -> [0, 1]: "dtype" (divide by the type's maximum), "range" (value_range),
    # "percentile" (percentiles per band per scene, from an overview or a sample).
    scaling: Literal["dtype", "range", "percentile"] = "dtype"
    value_range: tuple[float, float] | None = None
    percentiles: tuple[float, float] = (2.0, 98.0)
    # Georeferenced pairs on different grids: "reproject" t1 onto t0's grid, or "reject".
    align: Literal["reproject", "reject"] = "reproject"

    @field_validator("scale_jitter")
    @classmethod
    def _scale_range(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not 0 < value[0] <= value[1]:
            raise ValueError("must be [low, high] with 0 < low <= high")
        return value

    @model_validator(mode="after")
    def _jitter_needs_crop(self) -> "DataSection":
        if self.scale_jitter is not None and self.crop_size is None:
            raise ValueError("data.scale_jitter needs data.crop_size (batches need one size)")
        return self

    @model_validator(mode="after")
    def _raster_options(self) -> "DataSection":
        if self.bands is not None and (not self.bands or min(self.bands) < 1):
            raise ValueError("data.bands must list band numbers from 1")
        if self.scaling == "range" and (self.value_range is None or self.value_range[0] >= self.value_range[1]):
            raise ValueError("data.scaling=range needs data.value_range [low, high] with low < high")
        if not 0 <= self.percentiles[0] < self.percentiles[1] <= 100:
            raise ValueError("data.percentiles must be [low, high] with 0 <= low < high <= 100")
        if self.band_roles is not None and self.bands is not None and len(self.band_roles) != len(self.bands):
            raise ValueError(
                f"data.band_roles names {len(self.band_roles)} bands but data.bands picks {len(self.bands)}"
            )
        return self

    def rgb_positions(self) -> list[int] | None:
        """Input channels holding red, green, blue (from band_roles), or None for the first three."""
        if not self.band_roles:
            return None
        roles = [r.lower() for r in self.band_roles]
        missing = [c for c in ("red", "green", "blue") if c not in roles]
        return None if missing else [roles.index(c) for c in ("red", "green", "blue")]


# model.weights as written (null, none, imagenet, torchvision:<model>, a checkpoint URI),
# parsed into a WeightsSpec at validation and written back as that text.
Weights = Annotated[
    WeightsSpec | None,
    PlainValidator(parse_weights),
    PlainSerializer(lambda spec: spec.text if spec is not None else None),
]
# The fields that choose initial weights: they belong to one family's architecture, so a
# family switch by override drops them (see build_config).
WEIGHT_FIELDS = frozenset({"weights", "weights_file", "pretrained_backbone"})


class _ModelSection(_Section):
    """Fields of every model family: the name, the class and band counts, the weights.

    ``weights``: null (the model's default: ImageNet for the presets, else random),
    ``none``, ``imagenet``, ``torchvision:<segmentation model>`` or a changeseg checkpoint
    URI (warm start); ``weights_file``: a local file with those ImageNet/segmentation
    weights (offline use). See :mod:`changeseg.models.weights_spec`.
    """

    family: ClassVar[str]

    name: str = "c3po"
    num_classes: int | None = Field(None, ge=2)
    # Input channels (bands); null: len(data.bands), else 3.
    in_channels: int | None = Field(None, ge=1)
    weights: Weights = None
    weights_file: str | None = None

    @field_validator("name")
    @classmethod
    def _name_of_this_family(cls, value: str) -> str:
        if model_entry(value).family.name != cls.family:
            raise ValueError(f"model {value!r} is not of the {cls.family!r} family")
        return value

    @model_validator(mode="after")
    def _weights_apply(self) -> "_ModelSection":
        self.weights_spec()  # conflicts and weights the family cannot take fail here
        return self

    def _pretrained_backbone(self) -> bool:
        return False

    def weights_spec(self) -> WeightsSpec | None:
        """The weights the model starts from (the name's default filled in, weights_file attached)."""
        return resolve_weights(
            self.name, self.weights, file=self.weights_file, pretrained_backbone=self._pretrained_backbone()
        )

    def factory_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for create_model (unset architecture fields left out)."""
        args = {k: v for k, v in self.model_dump(exclude=set(WEIGHT_FIELDS)).items() if v is not None}
        spec = self.weights_spec()
        return args if spec is None else {**args, "weights": spec}

    def resolved_num_classes(self) -> int:
        """The class count the model will have (explicit, else the name's, else 2)."""
        if self.num_classes is not None:
            return self.num_classes
        return model_entry(self.name).num_classes


class C3POModelSection(_ModelSection):
    """A C-3PO model (name ``c3po`` or a preset such as ``c3po_vl_cmu_cd``): the
    arguments of :func:`changeseg.models.create_model`. Architecture fields left null come
    from the preset or the factory defaults."""

    family: ClassVar[str] = C3PO

    backbone: str | None = None
    mtf: str | None = None
    msf_scales: int | None = Field(None, ge=1, le=4)
    head: Literal["fcn", "deeplabv3"] | None = None
    msf_width: int | None = Field(None, ge=8)
    head_channels: int | None = Field(None, ge=1)
    pretrained_backbone: bool = False
    # Pretrained first convolutions are adapted to in_channels (see changeseg.models.channels).
    # Which input channels are R, G, B (0-based); null: from data.band_roles, else 0, 1, 2.
    rgb_channels: list[int] | None = None
    # Normalisation of every input channel; null: the backbone weights' statistics for RGB
    # (ImageNet's; timm's pretrained_cfg for timm:<name>), 0.45 / 0.225 for the rest.
    channel_mean: list[float] | None = None
    channel_std: list[float] | None = None
    # Images are resampled by this factor inside the model (logits come back at the input
    # size): 2 for small objects, such as buildings at 0.5-2 m a pixel, at 4x the compute.
    input_scale: float | None = Field(None, ge=0.25, le=4.0)

    def _pretrained_backbone(self) -> bool:
        return self.pretrained_backbone


class BaselineModelSection(_ModelSection):
    """An FC-EF / FC-Siam baseline (``fc_ef``, ``fc_siam_conc``, ``fc_siam_diff``): RGB
    pairs, random or checkpoint weights."""

    family: ClassVar[str] = BASELINE

    name: str  # chosen by the union's discriminator, never defaulted

    @model_validator(mode="before")
    @classmethod
    def _no_c3po_fields(cls, data: Any) -> Any:
        """A C-3PO field set to null is as good as absent; set to a value, it is named."""
        if not isinstance(data, dict):
            return data
        c3po = {k for k in set(data) - set(cls.model_fields) if k in C3POModelSection.model_fields}
        given = sorted(k for k in c3po if data[k] is not None)
        if given:
            raise ValueError(
                f"{', '.join('model.' + k for k in given)}: C-3PO option, but model {data.get('name')!r} is an "
                f"FC baseline, which takes only {', '.join(cls.model_fields)}"
            )
        return {k: v for k, v in data.items() if k not in c3po}

    @field_validator("in_channels")
    @classmethod
    def _rgb_only(cls, value: int | None) -> int | None:
        if value not in (None, 3):
            raise ValueError("the FC baselines take RGB pairs (3 channels)")
        return value


_SECTIONS: dict[str, type[_ModelSection]] = {C3PO: C3POModelSection, BASELINE: BaselineModelSection}


def _family_of(name: Any) -> str | None:
    try:
        return model_entry(name).family.name
    except ValueError:
        return None


def _model_family(value: Any) -> str:
    """The union's tag: the family of ``name`` (an unknown name goes to the C-3PO section,
    whose name check then lists the known models)."""
    name = value.get("name", "c3po") if isinstance(value, dict) else getattr(value, "name", "c3po")
    return _family_of(name) or C3PO


# One section per model family, chosen by ``name``; Config.model is one of them.
ModelSection = Annotated[
    Annotated[C3POModelSection, Tag(C3PO)] | Annotated[BaselineModelSection, Tag(BASELINE)],
    Discriminator(_model_family),
]


class TrainSection(_Section):
    """Optimisation (the paper's recipe by default) and Ray Train scaling."""

    epochs: int = Field(10, ge=1)
    batch_size: int = Field(4, ge=1, description="per worker")
    lr: float = Field(1e-4, gt=0)
    # Learning rate of the pretrained backbone; null = lr. Lower than lr keeps the
    # pretrained features while MTF, MSF and the head, which start fresh, learn fast.
    backbone_lr: float | None = Field(None, gt=0)
    # Backbone BatchNorm layers keep their pretrained running statistics (eval mode) in
    # training: batch statistics of a few small crops are too noisy to replace them.
    freeze_backbone_bn: bool = False
    weight_decay: float = Field(0.0, ge=0)
    # Linear warm-up lasts max(warmup_epochs x steps per epoch, warmup_steps) steps
    # (the authors' scripts: max(5 epochs, 1000 iterations)), then cosine decay.
    warmup_epochs: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0)
    # "auto": the paper's area-ratio weights from the training masks; "sqrt": the same
    # with the square root of the ratio (fewer false alarms); "capped": the ratio capped
    # at class_weight_cap (rare change is not pushed to a flood of false alarms);
    # "none": unweighted.
    class_weights: Literal["auto", "sqrt", "capped", "none"] | list[float] = "auto"
    class_weight_cap: float = Field(3.0, ge=1.0)
    # "ce": (weighted) cross entropy; "ce_dice": plus the soft Dice loss of the change
    # class, which scores overlap and so does not reward calling everything change.
    loss: Literal["ce", "ce_dice"] = "ce"
    # The stored operating point (binary models): best F1 on the validation pairs, or
    # the threshold of highest recall at this precision (or highest precision at this recall).
    target_precision: float | None = Field(None, gt=0.0, le=1.0)
    target_recall: float | None = Field(None, gt=0.0, le=1.0)
    num_workers: int = Field(2, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    keep_checkpoints: int = Field(2, ge=1)
    max_failures: int = Field(0, ge=-1)
    num_overlays: int = Field(4, ge=0)
    precision: Precision = "auto"
    # Channels-last memory format for model and inputs (faster convolutions on GPUs).
    channels_last: bool = False
    # Validation pairs larger than this in either side are scored in overlapping tiles
    # (score.tile_overlap), as batch scoring does; smaller ones whole.
    val_tile_size: int = Field(2048, ge=64)


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
    # A private instance starts without Ray's dashboard; true starts it on 127.0.0.1
    # (reach it from elsewhere through an SSH tunnel).
    dashboard: bool = False


class ServeSection(_Section):
    """HTTP serving (Ray Serve): which models, request limits, batching.

    Replica counts, autoscaling, GPUs and queue limits are Ray Serve deployment options
    and live in serve/config.yaml, not here.
    """

    # The version or alias a request gets when it names none; null = tracking.alias.
    default_version: str | None = None
    # How long an alias -> version lookup is reused; moving an alias takes effect after it.
    alias_ttl_s: float = Field(5.0, ge=0)
    max_models_per_replica: int = Field(3, ge=1)
    max_batch_size: int = Field(8, ge=1)
    batch_wait_timeout_s: float = Field(0.005, ge=0)
    # Limits on what a request may carry.
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024)
    max_pixels: int = Field(4096 * 4096, ge=1024, description="per image, checked before decoding")
    min_side: int = Field(16, ge=1, description="smallest image side accepted (422 below)")
    # t0 and t1 of different sizes: "resize" t1 to t0's size, or "reject" with 422.
    size_mismatch: Literal["resize", "reject"] = "reject"
    # Storage URIs a JSON request may name (prefix match); empty = URIs refused.
    allowed_uri_prefixes: list[str] = []
    # Model call limit inside the API; a request past it gets 504.
    request_timeout_s: float = Field(30.0, gt=0)
    # "auto": CUDA when the replica has a GPU.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Regions listed per response (largest first); the fraction always counts all.
    max_regions: int = Field(1000, ge=0)
    precision: Precision = "auto"
    channels_last: bool = False
    # Larger images are scored in overlapping windows, as in batch scoring.
    tile_size: int = Field(1024, ge=32)
    tile_overlap: int = Field(64, ge=0)
    # Pixels (pairs x H x W, or windows) per forward pass; a batch over it is split.
    max_batch_pixels: int = Field(4 * 1024 * 1024, ge=1024)
    # Deadline of one registry call (alias or version look-up, listing); past it 503.
    registry_timeout_s: float = Field(5.0, gt=0)


class ScoreSection(_Section):
    """Offline batch scoring with Ray Data (``jobs/score.py``)."""

    # Pairs per model call; tiles of large pairs are batched the same way.
    batch_size: int = Field(8, ge=1)
    # Model replicas: an actor pool growing from min_actors to max_actors.
    min_actors: int = Field(1, ge=1)
    max_actors: int = Field(2, ge=1)
    num_gpus: float = Field(0.0, ge=0, description="per actor; 0 on CPU")
    cpus_per_actor: float = Field(1.0, gt=0)
    # Pairs larger than tile_size in either side are scored in overlapping windows.
    tile_size: int = Field(512, ge=32)
    tile_overlap: int = Field(64, ge=0)
    write_probabilities: bool = False
    # Result rows are written to a new Parquet file every flush_rows rows (and at the end):
    # a killed job loses at most that many rows, which a re-run scores again.
    flush_rows: int = Field(256, ge=1)
    max_regions: int = Field(100, ge=0)
    min_region_area: int = Field(1, ge=1)
    progress_seconds: float = Field(10.0, gt=0)
    precision: Precision = "auto"
    channels_last: bool = False
    # Pixels per image, read from the header before decoding; a larger pair gets an error row.
    max_pixels: int = Field(8192 * 8192, ge=1024)
    # Test-time augmentation: average with the horizontally and vertically flipped pair.
    tta: bool = False
    # P(change) cut of binary models; null = the model version's stored operating point
    # (0.5 when it has none).
    threshold: float | None = Field(None, ge=0.0, le=1.0)
    # Georeferenced scenes (see changeseg.inference.scene): probability COGs as uint8
    # (P x 255) or float32; polygons in the scene's CRS or another (e.g. EPSG:4326);
    # simplification tolerance in pixels (0: exact pixel edges).
    probability_dtype: Literal["uint8", "float32"] = "uint8"
    regions_crs: str | None = None
    regions_simplify: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _overlap_below_tile(self) -> "ScoreSection":
        if self.tile_overlap >= self.tile_size:
            raise ValueError(f"tile_overlap ({self.tile_overlap}) must be smaller than tile_size ({self.tile_size})")
        if self.min_actors > self.max_actors:
            raise ValueError(f"min_actors ({self.min_actors}) exceeds max_actors ({self.max_actors})")
        return self


class Config(_Section):
    run: RunSection = RunSection()
    data: DataSection = DataSection()
    model: ModelSection = C3POModelSection()
    train: TrainSection = TrainSection()
    tracking: TrackingSection = TrackingSection()
    storage: StorageSection = StorageSection()
    ray: RaySection = RaySection()
    serve: ServeSection = ServeSection()
    score: ScoreSection = ScoreSection()

    def resolved_tracking_uri(self) -> str:
        return resolve_tracking_uri(self.tracking.tracking_uri)

    @model_validator(mode="after")
    def _channels_from_bands(self) -> "Config":
        """model.in_channels and rgb_channels follow data.bands and data.band_roles unless set."""
        bands, model = self.data.bands, self.model
        if bands is not None and isinstance(model, BaselineModelSection) and len(bands) != 3:
            raise ValueError(f"model {model.name!r} takes RGB pairs but data.bands picks {len(bands)} bands")
        if bands is not None and model.in_channels is None and len(bands) != 3:
            model.in_channels = len(bands)
        if bands is not None and model.in_channels not in (None, len(bands)):
            raise ValueError(f"model.in_channels={model.in_channels} but data.bands picks {len(bands)} bands")
        if (
            isinstance(model, C3POModelSection)
            and model.rgb_channels is None
            and self.data.rgb_positions() is not None
            and (model.in_channels or 3) > 3
        ):
            model.rgb_channels = self.data.rgb_positions()
        return self


def resolve_tracking_uri(uri: str | None) -> str:
    """The explicit URI, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///./mlflow.db``."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return "sqlite:///" + str(Path("mlflow.db").resolve())


def _format_validation_error(err: ValidationError) -> str:
    lines = []
    for item in err.errors():
        loc = tuple(item["loc"])
        if loc[:1] == ("model",) and len(loc) > 1 and loc[1] in FAMILIES:
            loc = loc[:1] + loc[2:]  # the model section's union tag (its family) is no key
        key = ".".join(str(part) for part in loc)
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


def switch_model_family(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """When an override moves ``model.name`` to another family (``model.name=fc_siam_diff``
    on a C-3PO recipe), drop the fields of ``data``'s model section that the new family does
    not take, and its weights (they were chosen for the other architecture); fields the
    overrides set stay, so a wrong one is still named."""
    parsed = [parse_override(text) for text in overrides]
    names = [value for parts, value in parsed if parts == ["model", "name"]]
    model = data.get("model")
    if not names or not isinstance(model, dict):
        return data
    old, new = _family_of(model.get("name", "c3po")), _family_of(names[-1])
    if old is None or new is None or old == new:
        return data
    overridden = {parts[1] for parts, _ in parsed if len(parts) == 2 and parts[0] == "model"}
    keep = set(_SECTIONS[new].model_fields) - WEIGHT_FIELDS
    data["model"] = {k: v for k, v in model.items() if k in keep or k in overridden}
    return data


def build_config(data: dict[str, Any] | None = None, overrides: list[str] | None = None) -> Config:
    """Validate a plain dict plus overrides into a :class:`Config`."""
    overrides = list(overrides or [])
    data = apply_overrides(switch_model_family(copy.deepcopy(data or {}), overrides), overrides)
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
