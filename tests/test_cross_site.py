"""Cross-site evaluation: the false-alarm rate a threshold set at one port gives at another."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from conftest import TrainedModel
from scanml.cli import main
from scanml.cross_site import cross_site_table
from scanml.metrics import ScanOutcome


def _outcomes(site: str, clean: list[float], anomalous: list[float]) -> list[ScanOutcome]:
    return [
        ScanOutcome(f"{site}-{label}-{k}", site, label, score)
        for label, scores in ((0, clean), (1, anomalous))
        for k, score in enumerate(scores)
    ]


def test_a_threshold_set_in_antwerp_is_not_the_same_false_alarm_rate_in_santos() -> None:
    # Santos' clean containers score higher (another scanner, other cargo).
    outcomes = _outcomes("antwerp", [0.01 * k for k in range(1, 11)], [0.5, 0.8, 0.95]) + _outcomes(
        "santos", [0.05, 0.15, 0.25, 0.35, 0.45], [0.6, 0.9]
    )
    table = cross_site_table(outcomes, "antwerp", target_far=0.1, stored_threshold=0.2)

    # 10 clean Antwerp scans at 10 %: one may be flagged, so the 2nd highest clean score.
    assert table.calibrated_threshold == pytest.approx(0.09)
    antwerp, santos = table.row("antwerp"), table.row("santos")
    assert antwerp.far_calibrated == pytest.approx(0.1)
    assert santos.far_calibrated == pytest.approx(0.8)  # 4 of 5 clean Santos scans flagged
    assert santos.dr_calibrated == 1.0
    assert antwerp.far_stored == 0.0 and santos.far_stored == pytest.approx(0.6)
    assert (antwerp.n_clean, antwerp.n_anomalous, santos.n_clean) == (10, 3, 5)
    markdown = table.to_markdown()
    assert "| antwerp (calibration) | 10 | 3 | 0.0% | 100.0% | 10.0% | 100.0% |" in markdown
    assert "| santos | 5 | 2 | 60.0% | 100.0% | 80.0% | 100.0% |" in markdown
    assert table.to_dict()["sites"]["santos"]["far_calibrated"] == pytest.approx(0.8)


def test_a_site_without_clean_scans_or_anomalies() -> None:
    outcomes = _outcomes("antwerp", [0.1, 0.2], []) + _outcomes("santos", [], [0.7])
    table = cross_site_table(outcomes, "antwerp", target_far=0.0, stored_threshold=0.5)
    assert math.isnan(table.row("antwerp").dr_stored)
    assert math.isnan(table.row("santos").far_calibrated)
    assert "n/a" in table.to_markdown()
    with pytest.raises(ValueError, match="no clean scan of that site"):
        cross_site_table(outcomes, "santos", target_far=0.01, stored_threshold=0.5)


def test_evaluate_names_a_calibration_site_the_data_lacks(
    trained_model: TrainedModel, mlflow_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "evaluate",
            "--model",
            str(trained_model.bundle_dir),
            "--data",
            str(trained_model.data_dir),
            "--calibrate-on",
            "santos",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "--calibrate-on 'santos': no such site" in err and "antwerp, rotterdam" in err
    assert not Path("mlruns").exists()  # refused before any scoring or logging
