"""Validated training configuration: YAML presets in ``configs/`` plus overrides.

One :class:`Config` object is the single source of truth for a run. It is
loaded from YAML, overridden with ``--set section.key=value``, validated by
pydantic (an unknown key or a bad value is an error naming it), saved next to
the run's checkpoints and logged to MLflow, so every result can be reproduced
from its run.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from scanml.physics import ATTENUATION_SCALE

__all__ = ["Config", "ConfigError", "load_config", "parse_overrides"]

_RUN_NAME = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9 ._+-]{0,99}")


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the field."""


class _Section(BaseModel):
    # NaN and infinity pass every `gt`/`le` bound unnoticed (NaN compares false,
    # inf is "greater than 0"): refused at load for every float field.
    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, frozen=False, allow_inf_nan=False
    )


def _ordered_pair(pair: tuple[float, float]) -> tuple[float, float]:
    """A (low, high) range: low must not exceed high."""
    if pair[0] > pair[1]:
        raise ValueError(f"expected (low, high) with low <= high, got {list(pair)}")
    return pair


class ModelConfig(_Section):
    """The network and the physical view of a scan it is trained for."""

    architecture: str = "resnet18"
    weights: str | None = Field(
        default=None,
        description="None, a torchvision weights name (from the local torch cache), "
        "a local weights file, a model folder, or an MLflow model URI to fine-tune.",
    )
    channels: list[Literal["high", "low"]] = ["high"]
    spacing_mm: float = Field(default=8.0, gt=0.5, le=50.0)
    attenuation_scale: float = Field(default=ATTENUATION_SCALE, gt=0.0, le=100.0)
    output_stride: Literal[8, 16, 32] = 32
    input_contrast: int | list[int] | None = Field(
        default=None,
        description="odd window (model pixels) of a fixed local-contrast channel read beside "
        "each energy channel, or a list of windows (a channel for each): each pixel's "
        "deviation from its window's mean over the window's spread "
        "(scanml.models.local_contrast); null: attenuation only",
    )
    stages: int | None = Field(
        default=None,
        description="ResNets only: keep the first N residual stages (3: stride 16, a ~200 px "
        "receptive field, a detector of compact objects); None keeps all",
    )
    categories: list[str] = ["drugs", "weapon", "cigarettes", "other"]

    @field_validator("architecture")
    @classmethod
    def _known_architecture(cls, name: str) -> str:
        from scanml.models import SUPPORTED_ARCHITECTURES

        if name not in SUPPORTED_ARCHITECTURES:
            raise ValueError(
                f"unknown architecture {name!r}; supported: {sorted(SUPPORTED_ARCHITECTURES)}"
            )
        return name

    @field_validator("input_contrast")
    @classmethod
    def _odd_window(cls, window: int | list[int] | None) -> int | list[int] | None:
        windows = [] if window is None else [window] if isinstance(window, int) else window
        if window is not None and not windows:
            raise ValueError("give at least one window, or null for attenuation only")
        for size in windows:
            if size % 2 == 0 or not 3 <= size <= 255:
                raise ValueError(
                    f"each window must be odd (centred on its pixel) and 3-255 px, got {size}"
                )
        return window

    @model_validator(mode="after")
    def _stride_fits_architecture(self) -> ModelConfig:
        from scanml.models import supported_output_strides, supported_stages

        if self.stages is not None and self.stages not in supported_stages(self.architecture):
            raise ValueError(
                f"stages {self.stages} is not available for {self.architecture}; "
                f"choose one of {supported_stages(self.architecture) or '[null] (ResNets only)'}"
            )
        strides = supported_output_strides(self.architecture, self.stages)
        if self.output_stride not in strides:
            raise ValueError(
                f"output_stride {self.output_stride} is not available for {self.architecture}"
                f"{f' cut to {self.stages} stages' if self.stages else ''} "
                f"(dilation works for ResNets only); choose one of {strides}"
            )
        return self

    @field_validator("channels")
    @classmethod
    def _distinct_channels(cls, channels: list[str]) -> list[str]:
        if not channels or len(set(channels)) != len(channels):
            raise ValueError(f"channels must be a non-empty list of distinct names, got {channels}")
        return channels


class DataConfig(_Section):
    """Splits, tiles and the loader."""

    val_fraction: float = Field(default=0.2, ge=0.0, lt=1.0)
    test_fraction: float = Field(default=0.1, ge=0.0, lt=1.0)
    tile_size: int = Field(default=128, ge=32, le=1024)
    tiles_per_scan: int = Field(default=16, ge=1, le=4096)
    positive_fraction: float = Field(default=0.4, ge=0.0, le=1.0)
    hard_negative_fraction: float = Field(default=0.3, ge=0.0, le=1.0)
    num_workers: int = Field(default=2, ge=0, le=64)
    cache_bytes: int = Field(default=2 * 1024**3, ge=0, le=1024**4)
    max_val_scans: int | None = Field(default=None, ge=2, le=10_000_000)

    @model_validator(mode="after")
    def _fractions_fit(self) -> DataConfig:
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError("val_fraction + test_fraction must leave scans to train on")
        if self.positive_fraction + self.hard_negative_fraction > 1.0:
            raise ValueError("positive_fraction + hard_negative_fraction must not exceed 1")
        return self


class ThreatProjectionConfig(_Section):
    """Threat image projection: add a threat's attenuation to clean tiles."""

    enabled: bool = True
    rate: float = Field(default=0.25, ge=0.0, le=1.0)
    depth: tuple[float, float] = (0.5, 1.5)
    _depth_ordered = field_validator("depth")(_ordered_pair)
    synthetic_fraction: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="share of projected threats that are generated brick stacks",
    )


class AugmentConfig(_Section):
    """X-ray-plausible augmentation; off in evaluation."""

    enabled: bool = True
    hflip: float = Field(default=0.5, ge=0.0, le=1.0)
    scale: tuple[float, float] = (0.9, 1.1)
    gain: tuple[float, float] = (0.9, 1.1)
    offset: tuple[float, float] = (-0.02, 0.02)
    noise: float = Field(default=0.5, ge=0.0, le=1.0)
    blur: float = Field(default=0.2, ge=0.0, le=1.0)
    row_streaks: float = Field(default=0.3, ge=0.0, le=1.0)
    beam_profile: float = Field(
        default=0.0, ge=0.0, le=1.0, description="share of tiles given a smooth beam profile"
    )
    beam_profile_amplitude: tuple[float, float] = (0.01, 0.06)
    saturation: float = Field(
        default=0.0, ge=0.0, le=1.0, description="share of tiles clipped at a saturation level"
    )
    saturation_range: tuple[float, float] = (6.0, 11.0)
    noise_i0: tuple[float, float] = (3e4, 1e6)
    blur_sigma: tuple[float, float] = (0.3, 0.9)
    _ranges_ordered = field_validator(
        "scale",
        "gain",
        "offset",
        "beam_profile_amplitude",
        "saturation_range",
        "noise_i0",
        "blur_sigma",
    )(_ordered_pair)
    tip: ThreatProjectionConfig = ThreatProjectionConfig()


class TrainConfig(_Section):
    """Optimisation, checkpoints and early stopping."""

    epochs: int = Field(default=20, ge=1, le=10_000)
    batch_size: int = Field(default=32, ge=1, le=4096)
    lr: float = Field(default=1e-3, gt=0.0, le=10.0)
    weight_decay: float = Field(default=1e-4, ge=0.0, le=1.0)
    warmup_epochs: float = Field(default=1.0, ge=0.0, le=10_000)
    grad_clip: float | None = Field(default=1.0, gt=0.0, le=1e6)
    amp: bool | Literal["auto"] = Field(
        default=False,
        description="reduced precision for the training step (mixed precision, float32 "
        "weights): false; true (bfloat16 on a CPU, float16 on CUDA); or auto, which is true "
        "where the device computes it natively (a CPU with AVX512-BF16 or AMX, any CUDA "
        "device) and false elsewhere. Scoring and validation stay float32",
    )
    channels_last: bool = True
    dense_loss_weight: float = Field(default=1.0, ge=0.0, le=1000.0)
    category_loss_weight: float = Field(default=0.2, ge=0.0, le=1000.0)
    amount_loss_weight: float = Field(
        default=0.0,
        ge=0.0,
        le=1000.0,
        description="weight of a second head that regresses the net attenuation each "
        "concealment changed, per output cell, where the annotations record it "
        "('contrast', as scanml synth writes); 0: no such head",
    )
    ema_decay: float | None = Field(
        default=None,
        gt=0.0,
        lt=1.0,
        description="keep an exponential moving average of the weights (and batch-norm "
        "statistics), updated after every optimiser step with this decay (0.998: about "
        "the last 500 steps), and make it the model: validation, hard-negative mining, "
        "epoch snapshots and the saved bundle use the average; null: the weights as they are",
    )
    dense_loss: Literal["bce", "focal"] = Field(
        default="bce",
        description="per-location loss: bce (mean over locations) or focal (RetinaNet: "
        "alpha 0.25, gamma 2, summed and divided by the positive locations), which keeps "
        "learning from the few clean locations that still score high",
    )
    tile_pooling: Literal["max", "mean"] = Field(
        default="max",
        description="how the tile loss pools dense logits (max: as the scan score does)",
    )
    early_stopping_patience: int | None = Field(default=6, ge=1, le=10_000)
    monitor: str = "val/auroc"
    monitor_mode: Literal["max", "min"] = "max"
    keep: Literal["best", "last"] = Field(
        default="best",
        description="which epoch's weights the run keeps as its model: best (the epoch whose "
        "smoothed `monitor` was best) or last (the end of the schedule; under a time budget "
        "the cosine has annealed to zero there, and a noisy validation split picks a "
        "mid-run epoch by chance). Validation still runs and is logged either way",
    )
    hard_negative_every: int = Field(
        default=2, ge=0, le=10_000, description="epochs between mining rounds; 0 disables"
    )
    hard_negatives_per_scan: int = Field(default=8, ge=1, le=4096)
    hard_negative_max_scans: int | None = Field(
        default=48,
        ge=1,
        le=10_000_000,
        description="clean scans scored per mining round (a rotating sample): bounds its cost",
    )
    max_steps_per_epoch: int | None = Field(default=None, ge=1, le=10_000_000)
    time_budget_min: float | None = Field(
        default=None,
        gt=0.0,
        le=7 * 24 * 60,
        description="wall-clock minutes for the epoch loop (validation and mining included): "
        "after the first epoch the run plans as many epochs as fit (at most `epochs`) and "
        "fits its learning-rate schedule to them, so a preset trains for a known time",
    )
    monitor_smoothing: float = Field(
        default=0.0,
        ge=0.0,
        lt=1.0,
        description="exponential smoothing of the monitored metric across validations "
        "when picking the best epoch (0: none): one lucky validation does not win",
    )
    keep_epoch_models: bool = Field(
        default=False,
        description="also save each epoch's model bundle under runs/<name>/epochs/ with its "
        "elapsed minutes (learning curves)",
    )
    device: str = "auto"
    threads: int | None = Field(default=None, ge=1, le=1024)
    runs_dir: str = "runs"


class ValidationConfig(_Section):
    """Whole-scan validation through the Predictor, and threshold calibration."""

    every: int = Field(default=1, ge=1, le=10_000)
    target_far: float = Field(default=0.01, gt=0.0, lt=1.0)
    calibration_variants: int = Field(
        default=0,
        ge=0,
        le=64,
        description="the threshold is calibrated on the clean validation scans and this many "
        "variants of each, redrawn through the training acquisition chain (gain, offset, "
        "beam profile, streaks, blur, noise, saturation; no flip, no pixel-pitch change, no "
        "threat projection): a threshold that also holds when the same containers come from "
        "another scanner. The variants only ever raise it. Ignored, with a warning, when "
        "augment.enabled is false. Each variant costs one whole-scan scoring at the end "
        "of the run",
    )
    region_threshold: float = Field(default=0.5, gt=0.0, lt=1.0)
    overlays: int = Field(default=4, ge=0, le=1000)
    max_block_pixels: int = Field(default=4_000_000, ge=65_536, le=400_000_000)


class TrackingConfig(_Section):
    """MLflow. ``tracking_uri`` None means ``$MLFLOW_TRACKING_URI`` or ``sqlite:///mlflow.db``."""

    tracking_uri: str | None = None
    experiment: str = "scanml"
    registered_model: str | None = "scanml-anomaly"
    run_name: str | None = None
    system_metrics: bool = True

    @field_validator("run_name")
    @classmethod
    def _safe_run_name(cls, name: str | None) -> str | None:
        """The run's folder under ``train.runs_dir``: one plain name, never a path."""
        if name is not None and not _RUN_NAME.fullmatch(name):
            raise ValueError(
                f"run_name {name!r} must be 1 to 100 letters, digits, spaces or '._+-',"
                " not starting with '.' or a space (it names a folder under train.runs_dir)"
            )
        return name

    max_retries: int = Field(default=2, ge=0, le=20)
    timeout_s: float = Field(default=10.0, gt=0.0, le=3600.0)
    # after a failed call, how long to keep metrics before trying the server again
    retry_after_s: float = Field(default=30.0, ge=0.0, le=3600.0)


class Config(_Section):
    """The whole configuration of a training run."""

    seed: int = Field(default=0, ge=0, le=2**32 - 1)
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    augment: AugmentConfig = AugmentConfig()
    train: TrainConfig = TrainConfig()
    validation: ValidationConfig = ValidationConfig()
    tracking: TrackingConfig = TrackingConfig()

    def flat(self) -> dict[str, Any]:
        """``{"section.key": value}``: the form MLflow params take."""
        return dict(_flatten(self.model_dump(mode="json")))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(self.to_yaml())
        return path


def load_config(
    path: str | Path | None = None, overrides: Iterable[str] | Mapping[str, Any] = ()
) -> Config:
    """Load a YAML preset (or the defaults) and apply ``section.key=value`` overrides.

    Errors name the file and the offending field, e.g.
    ``configs/x.yaml: train.lr: Input should be greater than 0``.
    """
    source = str(path) if path is not None else "<defaults>"
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: configuration file not found")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        raw = loaded or {}
    if not isinstance(overrides, Mapping):
        overrides = parse_overrides(overrides)
    for dotted, value in overrides.items():
        _set_dotted(raw, dotted, value)
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_describe(exc)}") from None


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """Parse ``section.key=value`` strings; values are YAML (``1e-3``, ``[high, low]``, ``null``)."""
    parsed: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        try:
            parsed[key.strip()] = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: value is not valid YAML: {exc}") from exc
    return parsed


def config_from_json(text: str) -> Config:
    """Rebuild a configuration saved in a checkpoint."""
    return Config.model_validate(json.loads(text))


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for name in parents:
        child = node.setdefault(name, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted!r}: {name!r} is a value, not a section")
        node = child
    node[leaf] = value


def _describe(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "<root>"
        if error["type"] == "extra_forbidden":
            problems.append(f"{where}: unknown key")
        else:
            problems.append(f"{where}: {error['msg']}")
    return "; ".join(problems)


def _flatten(tree: Mapping[str, Any], prefix: str = ""):
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from _flatten(value, f"{name}.")
        else:
            yield name, value
