"""Shared fixtures: one small simulated dataset per test session, a private MLflow store per test.

Tests run the real pipeline on small generated data (a few scans, the smoke
preset), never a parallel toy path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 simulated scans from two sites, half with a concealment, with manifest and COCO."""
    from scanml.synth import generate_dataset

    out = tmp_path_factory.mktemp("tiny-dataset")
    generate_dataset(
        out_dir=out,
        n_scans=16,
        seed=7,
        sites=["antwerp", "rotterdam"],
        anomaly_fraction=0.5,
        workers=2,
        progress=False,
    )
    return out


@pytest.fixture
def mlflow_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh sqlite MLflow store for one test, with artifacts beside it."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # mlruns/ (artifacts) and runs/ (checkpoints) land here
    return uri


@dataclass(frozen=True)
class TrainedModel:
    """A smoke-trained, registered model in its own MLflow store."""

    tracking_uri: str
    model_uri: str  # models:/NAME/VERSION
    run_id: str
    bundle_dir: Path
    data_dir: Path
    workdir: Path


@pytest.fixture(scope="session")
def trained_model(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainedModel:
    """Train the smoke preset once per session; scoring and MLflow-tool tests share it."""
    from scanml.config import load_config
    from scanml.train import train

    workdir = tmp_path_factory.mktemp("trained")
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.chdir(workdir)
        result = train(
            load_config(CONFIGS / "smoke.yaml", ["tracking.run_name=shared"]),
            tiny_dataset,
            progress=False,
        )
    assert result.model_uri, "the smoke model should be registered"
    return TrainedModel(
        uri, result.model_uri, result.run_id, result.bundle_dir.resolve(), tiny_dataset, workdir
    )
