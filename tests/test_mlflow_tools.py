"""The registered model in MLflow's own tools, and comparing/promoting runs.

`mlflow models predict` and `mlflow.pyfunc.spark_udf` must give the same
scores as `scanml score`: they run the same model package.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import TrainedModel

pytestmark = pytest.mark.slow


def _env(model: TrainedModel) -> dict[str, str]:
    return {**os.environ, "MLFLOW_TRACKING_URI": model.tracking_uri, "PYTHONUNBUFFERED": "1"}


def _scanml(model: TrainedModel, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    completed = subprocess.run(
        [sys.executable, "-m", "scanml", *args],
        env=_env(model),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return completed


@pytest.fixture(scope="module")
def champion(trained_model: TrainedModel, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Promote the shared model and return the alias URI."""
    name, version = trained_model.model_uri.removeprefix("models:/").split("/")
    out = _scanml(
        trained_model, "promote", version, "--name", name, cwd=tmp_path_factory.mktemp("promote")
    )
    assert f"version {version}" in out.stdout
    return f"models:/{name}@champion"


@pytest.fixture(scope="module")
def scan_paths(trained_model: TrainedModel) -> list[str]:
    manifest = pd.read_csv(trained_model.data_dir / "manifest.csv")
    return [str((trained_model.data_dir / p).resolve()) for p in manifest["path"][:4]]


@pytest.fixture(scope="module")
def scanml_scores(
    trained_model: TrainedModel,
    champion: str,
    scan_paths: list[str],
    tmp_path_factory: pytest.TempPathFactory,
) -> pd.DataFrame:
    workdir = tmp_path_factory.mktemp("score")
    (workdir / "paths.csv").write_text("path\n" + "\n".join(scan_paths) + "\n")
    _scanml(
        trained_model,
        "score",
        "--model",
        champion,
        "--input",
        str(workdir / "paths.csv"),
        "--out",
        str(workdir / "scores.parquet"),
        "--allow-outside",  # absolute paths, as mlflow models predict is given them
        cwd=workdir,
    )
    return pd.read_parquet(workdir / "scores.parquet").set_index("path")


def test_mlflow_models_predict_matches_scanml_score(
    trained_model: TrainedModel,
    champion: str,
    scan_paths: list[str],
    scanml_scores: pd.DataFrame,
    tmp_path: Path,
) -> None:
    (tmp_path / "paths.csv").write_text("path\n" + "\n".join(scan_paths) + "\n")
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlflow",
            "models",
            "predict",
            "-m",
            champion,
            "-i",
            str(tmp_path / "paths.csv"),
            "-t",
            "csv",
            "-o",
            str(tmp_path / "predictions.json"),
            "--env-manager",
            "local",
        ],
        env=_env(trained_model),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    predictions = json.loads((tmp_path / "predictions.json").read_text())
    rows = pd.DataFrame(
        predictions["predictions"] if isinstance(predictions, dict) else predictions
    )
    rows = rows.set_index("path")
    assert list(rows.index) == scan_paths
    for path in scan_paths:
        assert rows.loc[path, "score"] == pytest.approx(scanml_scores.loc[path, "score"], abs=1e-6)
        assert bool(rows.loc[path, "flagged"]) == bool(scanml_scores.loc[path, "flagged"])


@pytest.mark.spark
def test_spark_udf_matches_scanml_score(
    trained_model: TrainedModel,
    champion: str,
    scan_paths: list[str],
    scanml_scores: pd.DataFrame,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pyspark = pytest.importorskip("pyspark")
    import mlflow
    from pyspark.sql import SparkSession
    from pyspark.sql.functions import struct

    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained_model.tracking_uri)
    monkeypatch.setenv("PYSPARK_PYTHON", sys.executable)
    monkeypatch.setenv("PYSPARK_DRIVER_PYTHON", sys.executable)
    mlflow.set_tracking_uri(trained_model.tracking_uri)
    spark = (
        SparkSession.builder.master("local[2]")
        .appName("scanml-test")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .getOrCreate()
    )
    try:
        udf = mlflow.pyfunc.spark_udf(
            spark,
            champion,
            env_manager="local",
            result_type="score double, flagged boolean, threshold double, error string",
        )
        frame = spark.createDataFrame(pd.DataFrame({"path": scan_paths}))
        scored = (
            frame.withColumn("scores", udf(struct("path"))).select("path", "scores.*").toPandas()
        )
    finally:
        spark.stop()
    assert pyspark.__version__
    scored = scored.set_index("path")
    for path in scan_paths:
        assert scored.loc[path, "score"] == pytest.approx(
            scanml_scores.loc[path, "score"], abs=1e-6
        )


def test_compare_lists_runs_best_first(trained_model: TrainedModel, tmp_path: Path) -> None:
    smoke = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"
    out = _scanml(trained_model, "compare", "--config", str(smoke), cwd=tmp_path).stdout
    assert "resnet18" in out and "best/auroc" in out  # the preset's experiment, best epoch
    assert trained_model.run_id in out


def test_promote_says_what_it_replaces(
    trained_model: TrainedModel, champion: str, tmp_path: Path
) -> None:
    name, version = trained_model.model_uri.removeprefix("models:/").split("/")
    out = _scanml(trained_model, "promote", trained_model.run_id, cwd=tmp_path).stdout
    assert f"models:/{name}@champion -> version {version}" in out  # the name came from the run
    assert f"replacing version {version}" in out
