"""`scanml evaluate` on the shared smoke model: metrics, report and threshold calibration."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from conftest import CONFIGS, TrainedModel
from scanml.config import load_config
from scanml.data import assign_splits, load_dataset
from scanml.evaluation import evaluate, model_split
from scanml.models import ModelBundle
from scanml.validation import calibration_chain

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
    assert "AUROC" in run.data.tags["mlflow.note.content"]  # the run page's description
    assert [i.tags[0].value for i in run.inputs.dataset_inputs] == ["evaluation"]
    # Overlays with the annotated boxes, and the figures on the registered version.
    assert len(list((tmp_path / "overlays").glob("*.png"))) == 4
    name, version = trained_model.model_uri.removeprefix("models:/").split("/")
    tags = MlflowClient(trained_model.tracking_uri).get_model_version(name, version).tags
    assert tags["all/auroc"] == f"{flat['auroc']:.4f}" or flat["auroc"] != flat["auroc"]
    assert tags["all/evaluation_run"] == report.run_id
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
    assert stored.metadata["calibration_scans_needed"] == 2
    assert stored.metadata["calibration_supported"] is (stored.metadata["calibration_scans"] >= 2)


def test_recalibration_redraws_the_clean_scans_through_the_model_acquisition_chain(
    trained_model: TrainedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained_model.tracking_uri)
    bundle = ModelBundle.load(trained_model.bundle_dir)
    bundle.metadata["calibration_chain"] = calibration_chain(load_config(CONFIGS / "smoke.yaml"))
    thresholds = {}
    for variants in (0, 2):
        model = tmp_path / f"model-{variants}"
        bundle.save(model)
        report = evaluate(
            str(model),
            trained_model.data_dir,
            split="val",
            calibrate_far=0.1,
            calibration_variants=variants,
            progress=False,
        )
        stored = ModelBundle.load(model).metadata
        assert stored["calibration_variant_scores"] == variants * stored["calibration_scans"]
        thresholds[variants] = report.threshold
    assert stored["calibration_scans"] > 0
    assert thresholds[2] >= thresholds[0]  # the variants only ever raise the threshold

    # A model from before the chain was recorded: scans alone, unless variants are asked for.
    del bundle.metadata["calibration_chain"]
    bundle.save(old := tmp_path / "old")
    evaluate(str(old), trained_model.data_dir, split="val", calibrate_far=0.1, progress=False)
    assert ModelBundle.load(old).metadata["calibration_variant_scores"] == 0
    with pytest.raises(ValueError, match="records no acquisition chain"):
        evaluate(
            str(old),
            trained_model.data_dir,
            calibrate_far=0.1,
            calibration_variants=2,
            progress=False,
        )


def _without_split_column(dataset: Path, copy: Path) -> Path:
    """The dataset with its manifest's split column dropped: splits must then be drawn."""
    copy.mkdir()
    (copy / "scans").symlink_to(dataset / "scans")
    shutil.copy(dataset / "annotations.json", copy)
    pd.read_csv(dataset / "manifest.csv").drop(columns="split").to_csv(
        copy / "manifest.csv", index=False
    )
    return copy


def _ids(data: Path, val: float, test: float, seed: int, split: str) -> set[str]:
    drawn = assign_splits(load_dataset(data), val_fraction=val, test_fraction=test, seed=seed)
    return {record.scan_id for record in drawn.split(split).records}


def test_evaluate_uses_the_split_the_model_was_trained_with(
    trained_model: TrainedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained_model.tracking_uri)
    data = _without_split_column(trained_model.data_dir, tmp_path / "data")
    model = tmp_path / "model"
    bundle = ModelBundle.load(trained_model.bundle_dir)
    bundle.metadata["split"] = {"val_fraction": 0.25, "test_fraction": 0.25, "seed": 5}
    bundle.save(model)
    expected = _ids(data, 0.25, 0.25, 5, "test")
    assert expected != _ids(data, 0.2, 0.1, 0, "test")  # the fractions evaluate used to assume

    report = evaluate(str(model), data, out_dir=tmp_path / "out", overlays=0, progress=False)
    assert report.split_source.source == "model"
    assert set(pd.read_csv(tmp_path / "out" / "scan_scores.csv")["scan_id"]) == expected


def test_split_comes_from_the_training_run_else_defaults_with_a_warning(
    trained_model: TrainedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained_model.tracking_uri)
    bundle = ModelBundle.load(trained_model.bundle_dir)
    bundle.metadata.pop("split", None)
    from_run = model_split(bundle)
    assert (from_run.val_fraction, from_run.test_fraction, from_run.seed) == (0.3, 0.0, 0)
    assert from_run.source == f"training run {trained_model.run_id}"
    bundle.metadata["run_id"] = None
    with pytest.warns(UserWarning, match="may include scans it was trained on"):
        assert model_split(bundle).source == "defaults"
