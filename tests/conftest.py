"""Shared fixtures: one small simulated dataset per test session, a private MLflow store per test.

Tests run the real pipeline on small generated data (a few scans, the smoke
preset), never a parallel toy path.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


@pytest.fixture(autouse=True)
def _process_state_restored() -> Iterator[None]:
    """Each test leaves the process as it found it: environment, working folder, MLflow's store.

    Tests call the CLI and the library in this process; whatever process-wide
    state one leaves (an exported variable, MLflow's tracking URI or active
    run) would otherwise reach every later test and every child process they
    start, and a test would pass alone and fail in the suite. scanml itself
    restores what it changes; this guard keeps a test's own changes in it.
    """
    with _process_state_kept():
        yield


@contextlib.contextmanager
def _process_state_kept() -> Iterator[None]:
    environ, cwd = dict(os.environ), os.getcwd()
    mlflow_state = _mlflow_state()
    try:
        yield
    finally:
        if "mlflow" in sys.modules:
            import mlflow

            while mlflow.active_run() is not None:
                mlflow.end_run()
            if _mlflow_state() != mlflow_state:
                mlflow.set_tracking_uri(mlflow_state[0])
                mlflow.set_registry_uri(mlflow_state[1])
        for name in set(os.environ) - set(environ):
            del os.environ[name]
        for name, value in environ.items():
            if os.environ.get(name) != value:
                os.environ[name] = value
        if os.getcwd() != cwd:
            os.chdir(cwd)


def _mlflow_state() -> tuple[str | None, str | None]:
    """MLflow's process-wide tracking and registry URIs (None: read from the environment)."""
    if "mlflow" not in sys.modules:
        return None, None
    from mlflow.tracking._model_registry import utils as registry_state
    from mlflow.tracking._tracking_service import utils as tracking_state

    return tracking_state._tracking_uri, registry_state._registry_uri


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
    # A session fixture: set up before any test's guard, so it keeps its own state changes in.
    with _process_state_kept(), pytest.MonkeyPatch.context() as patch:
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
