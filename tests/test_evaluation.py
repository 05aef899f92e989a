"""`scanml evaluate` on the shared smoke model: metrics, report and threshold calibration."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from mlflow import MlflowClient

from conftest import TrainedModel
from scanml.evaluation import evaluate
from scanml.models import ModelBundle

pytestmark = pytest.mark.slow


def test_evaluate_logs_metrics_and_writes_reports(
    trained_model: TrainedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained_model.tracking_uri)
    monkeypatch.chdir(trained_model.workdir)
    report = evaluate(
        trained_model.model_uri,
        trained_model.data_dir,
        split="all",
        out_dir=tmp_path,
        progress=False,
    )

    flat = report.metrics.to_flat_dict()
    for key in (
        "auroc",
        "average_precision",
        "dr_at_far_0.5pct",
        "dr_at_far_1pct",
        "dr_at_far_5pct",
        "far_at_dr_90pct",
        "pointing_hit_rate",
        "region_recall",
    ):
        assert key in flat
    assert {"antwerp", "rotterdam"} <= {k.split("/")[1] for k in flat if k.startswith("site/")}
    assert report.metrics.n_scans == 16

    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["metrics"]["auroc"] == pytest.approx(flat["auroc"], nan_ok=True)
    markdown = (tmp_path / "report.md").read_text()
    assert "| metric | all | antwerp | rotterdam |" in markdown  # sites side by side
    assert "| dr_at_far_1pct |" in markdown
    assert (tmp_path / "roc.png").stat().st_size > 0

    run = MlflowClient(trained_model.tracking_uri).get_run(report.run_id)
    assert run.info.status == "FINISHED"
    assert "all/auroc" in run.data.metrics
    artifacts = {
        a.path
        for a in MlflowClient(trained_model.tracking_uri).list_artifacts(
            report.run_id, "evaluation"
        )
    }
    assert "evaluation/report.md" in artifacts


def test_calibration_stores_the_threshold_in_a_local_model(
    trained_model: TrainedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained_model.tracking_uri)
    model = tmp_path / "model"
    shutil.copytree(trained_model.bundle_dir, model)
    report = evaluate(
        str(model), trained_model.data_dir, split="val", calibrate_far=0.5, progress=False
    )
    assert report.calibrated
    stored = ModelBundle.load(model)
    assert stored.threshold == pytest.approx(report.threshold)
    assert stored.metadata["target_far"] == 0.5
