"""The configuration: presets load, overrides apply, bad input is named."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from scanml.config import Config, ConfigError, load_config, parse_overrides

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("preset", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_every_preset_validates(preset: str) -> None:
    config = load_config(CONFIGS / preset)
    assert isinstance(config, Config)
    assert config.model.spacing_mm > 0


def test_overrides_are_typed_yaml() -> None:
    config = load_config(
        CONFIGS / "smoke.yaml",
        [
            "train.lr=3e-4",
            "model.channels=[high, low]",
            "data.max_val_scans=null",
            "augment.tip.rate=0",
        ],
    )
    assert config.train.lr == pytest.approx(3e-4)
    assert config.model.channels == ["high", "low"]
    assert config.data.max_val_scans is None
    assert config.augment.tip.rate == 0


def test_unknown_key_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"train": {"epochz": 3}}))
    with pytest.raises(ConfigError, match=r"bad\.yaml: train\.epochz: unknown key"):
        load_config(path)


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("train.lr=-1", "train.lr"),
        ("model.architecture=resnet9000", "model.architecture"),
        ("model.channels=[high, high]", "model.channels"),
        ("data.positive_fraction=0.9", "data"),
        ("train.epochs=zero", "train.epochs"),
        ("model.architecture=mobilenet_v3_large", "output_stride 16 is not available"),
        ("nosuchsection.key=1", "nosuchsection"),
    ],
)
def test_bad_values_are_named(override: str, field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(CONFIGS / "smoke.yaml", [override])
    assert field in str(caught.value)


def test_malformed_override_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"section\.key=value"):
        parse_overrides(["train.lr"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_flat_params_and_round_trip(tmp_path: Path) -> None:
    config = load_config(CONFIGS / "default.yaml")
    flat = config.flat()
    assert flat["model.architecture"] == "resnet18"
    assert flat["augment.tip.rate"] == config.augment.tip.rate
    saved = config.save(tmp_path / "resolved.yaml")
    assert load_config(saved) == config


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ("train.epochs=1.0e+30", "train.epochs: "),
        ("train.epochs=100000", "train.epochs: Input should be less than or equal to 10000"),
        ("train.lr=.inf", "train.lr: Input should be a finite number"),
        ("train.lr=.nan", "train.lr: Input should be a finite number"),
        ("train.batch_size=1000000000", "train.batch_size: Input should be less than"),
        ("data.num_workers=100000", "data.num_workers: Input should be less than"),
        ("model.spacing_mm=.nan", "model.spacing_mm: Input should be a finite number"),
        ("augment.tip.depth=[.nan, 1]", "augment.tip.depth.0: Input should be a finite number"),
        ("augment.gain=[1.2, 0.8]", "low <= high"),
        ("validation.target_far=.inf", "validation.target_far: Input should be a finite number"),
        ("tracking.timeout_s=.inf", "tracking.timeout_s"),
        ("seed=-1", "seed: Input should be greater than or equal to 0"),
        ("tracking.run_name=../../x", "tracking.run_name: Value error, run_name '../../x'"),
        ("tracking.run_name=/etc/cron.d", "tracking.run_name"),
        ("tracking.run_name=.hidden", "tracking.run_name"),
        ("model.input_contrast=32", "model.input_contrast: Value error, each window must be odd"),
        ("model.input_contrast=[17, 1]", "model.input_contrast: Value error, each window"),
        ("model.input_contrast=1001", "3-255 px, got 1001"),
        ("model.input_contrast=[]", "model.input_contrast: Value error, give at least one"),
    ],
)
def test_values_without_physical_or_practical_sense_are_refused_at_load(
    override: str, words: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(CONFIGS / "smoke.yaml", [override])
    assert words in str(caught.value)


def test_nan_in_a_yaml_file_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nan.yaml"
    path.write_text("train:\n  lr: .nan\n  epochs: 3\n")
    with pytest.raises(ConfigError, match=r"nan\.yaml: train\.lr: Input should be a finite number"):
        load_config(path)


def test_contrast_windows_are_one_or_a_list() -> None:
    assert load_config(CONFIGS / "default.yaml").model.input_contrast == 33
    windows = load_config(CONFIGS / "smoke.yaml", ["model.input_contrast=[17, 65]"])
    assert windows.model.input_contrast == [17, 65]


def test_amp_is_a_switch_or_auto() -> None:
    assert load_config(CONFIGS / "smoke.yaml").train.amp is False
    assert load_config(CONFIGS / "smoke.yaml", ["train.amp=true"]).train.amp is True
    assert load_config(CONFIGS / "smoke.yaml", ["train.amp=auto"]).train.amp == "auto"
    with pytest.raises(ConfigError, match=r"train\.amp.*'auto'"):
        load_config(CONFIGS / "smoke.yaml", ["train.amp=sometimes"])


def test_a_plain_run_name_is_kept() -> None:
    assert load_config(overrides=["tracking.run_name=lr 3e-4_b+2"]).tracking.run_name == (
        "lr 3e-4_b+2"
    )
