"""The detection-quality benchmark end to end, shrunk: smoke preset, a few scans per set."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from conftest import CONFIGS, REPO
from scanml.baseline import LocalContrastDetector
from scanml.dataset import load_dataset
from scanml.io import Scan
from scanml.metrics import ScanOutcome
from scanml.quality import (
    _curve_snapshots,
    bootstrap_metrics,
    run_quality_benchmark,
    twin_metrics,
)
from scanml.synth import generate_dataset


def _foreign_generator():
    spec = importlib.util.spec_from_file_location(
        "foreign_scans", REPO / "benchmarks" / "foreign_scans.py"
    )
    module = importlib.util.module_from_spec(spec)
    # Registered before it runs: its dataclasses look their module up there
    # (alone, this test would otherwise fail; in the suite test_foreign_scans did it first).
    sys.modules.setdefault("foreign_scans", module)
    spec.loader.exec_module(module)
    return module.generate_foreign_dataset


def test_bootstrap_intervals_bracket_the_estimate_and_shrink_with_more_scans() -> None:
    def outcomes(n: int) -> list[ScanOutcome]:
        # Anomalous scans score a little higher than clean ones, with overlap.
        return [
            ScanOutcome(f"s{i}", "x", i % 2, score=(i % 2) * 0.3 + (i * 0.618) % 1)
            for i in range(n)
        ]

    small = bootstrap_metrics(outcomes(40), threshold=0.9, n_resamples=300)
    large = bootstrap_metrics(outcomes(400), threshold=0.9, n_resamples=300)
    for result in (small, large):
        auroc = result["auroc"]
        assert auroc.low <= auroc.value <= auroc.high
        assert 0.5 < auroc.value < 1.0
    assert (large["auroc"].high - large["auroc"].low) < (small["auroc"].high - small["auroc"].low)
    assert math.isnan(small["pointing"].value)  # no boxes: undefined, never a made-up number


def test_each_anomalous_scan_is_compared_with_its_clean_twin() -> None:
    from scanml.data import ScanRecord

    # Four pairs: the anomalous scan above, equal to, below and above its twin;
    # one anomalous scan without a twin and one clean scan without a pair.
    scores = {"a0": 0.9, "c0": 0.2, "a1": 0.5, "c1": 0.5, "a2": 0.1, "c2": 0.3, "a3": 0.7}
    scores |= {"c3": 0.6, "lone": 0.8, "clean": 0.95}
    twins = {"a0": "c0", "c0": "a0", "a1": "c1", "c1": "a1", "a2": "c2", "c2": "a2"}
    twins |= {"a3": "c3", "c3": "a3"}
    records = [
        ScanRecord(k, Path(f"{k}.dcm"), int(k[0] != "c" and k != "clean"), "x", extras=extra)
        for k in scores
        for extra in [{"twin": twins[k]} if k in twins else {}]
    ]
    outcomes = [ScanOutcome(r.scan_id, "x", r.label, scores[r.scan_id]) for r in records]

    result = twin_metrics(records, outcomes, n_resamples=500)

    assert result.n_pairs == 4
    above, equal = result.metrics["above_twin"], result.metrics["equal_twin"]
    assert above.value == 0.5 and equal.value == 0.25
    assert above.low <= above.value <= above.high and above.low < above.high
    # A set without twins says nothing rather than a made-up number.
    lone = twin_metrics(records[-2:], outcomes[-2:])
    assert lone.n_pairs == 0 and lone.metrics == {}


def test_learning_curve_takes_the_last_snapshot_before_each_mark_and_the_final_one() -> None:
    elapsed = [
        (1, 3.0, Path("e1")),
        (2, 6.5, Path("e2")),
        (3, 9.9, Path("e3")),
        (4, 12.0, Path("e4")),
    ]
    picked = _curve_snapshots(elapsed, (5.0, 10.0, 20.0, 30.0))
    assert [epoch for epoch, _, _ in picked] == [1, 3, 4]


def test_baseline_finds_a_dense_block_in_a_flat_scan() -> None:
    import numpy as np

    from scanml.data import Box, ScanRecord

    attenuation = np.full((1, 400, 800), 1.0, dtype=np.float32)
    attenuation[:, 200:240, 300:350] += 0.4  # a 32 x 40 cm block at 8 mm
    scan = Scan(attenuation, (8.0, 8.0), ["high"], {})
    record = ScanRecord("s", Path("s.npy"), 1, "x", boxes=[Box(300, 200, 50, 40, "drugs")])
    outcome = LocalContrastDetector(threshold=0.2).outcome(record, scan)
    x, y = outcome.peak_xy
    assert 300 <= x <= 350 and 200 <= y <= 240
    assert outcome.score == pytest.approx(0.4, abs=0.05)
    assert len(outcome.regions) == 1


def test_baseline_threshold_is_calibrated_like_every_scanml_threshold() -> None:
    import numpy as np

    from scanml.metrics import CalibrationWarning, threshold_at_far

    scans = []
    for k in range(5):
        attenuation = np.full((1, 200, 400), 1.0, dtype=np.float32)
        attenuation[:, 100:130, 150:200] += 0.1 * (k + 1)
        scans.append(Scan(attenuation, (8.0, 8.0), ["high"], {}))
    detector = LocalContrastDetector()
    scores = [detector.score(scan)[0] for scan in scans]
    # 5 clean scans cannot resolve a 10 % false-alarm rate: said, as for a model's threshold.
    with pytest.warns(CalibrationWarning, match="at least 10"):
        threshold = detector.calibrate(scans, far=0.1)
    assert threshold == detector.threshold == threshold_at_far(scores, 0.1) == max(scores)


@pytest.mark.slow
def test_quality_benchmark_end_to_end(tiny_dataset: Path, tmp_path: Path, mlflow_uri: str) -> None:
    left_out = generate_dataset(
        out_dir=tmp_path / "santos", n_scans=6, seed=3, sites=["santos"], workers=1, progress=False
    ).manifest.parent
    foreign = _foreign_generator()(tmp_path / "foreign", n_scans=6, seed=0, workers=1)

    report = run_quality_benchmark(
        data_dir=tiny_dataset,
        left_out_dir=left_out,
        foreign_dir=foreign,
        out_dir=tmp_path / "reports",
        config_path=CONFIGS / "smoke.yaml",
        overrides=["train.time_budget_min=0.5"],
        curve_minutes=(0.01, 30.0),
        bootstrap=50,
        progress=False,
    )

    assert [r.name.split(")")[0] for r in report.model] == ["(a", "(b", "(c"]
    assert [r.n_scans for r in report.model[1:]] == [6, 6]
    for result in report.model + report.baseline:
        auroc = result.metrics["auroc"]
        assert math.isnan(auroc.value) or auroc.low <= auroc.value <= auroc.high
    assert report.curve and report.curve[-1][1] == report.epochs
    # The independent generator annotates how each threat was hidden: the
    # model's figures are broken down by it, every anomalous scan under
    # each of its kinds, against every clean scan of the set.
    foreign_result = report.model[2]
    hidden_in_foreign = {
        box.concealment for record in load_dataset(foreign).records for box in record.boxes
    }
    assert set(foreign_result.by_concealment) == hidden_in_foreign - {None}
    assert sum(n for n, _ in foreign_result.by_concealment.values()) >= foreign_result.n_anomalous
    assert all(not r.by_concealment for r in report.baseline)
    # The independent generator pairs each anomalous scan with a clean twin.
    assert foreign_result.n_twin_pairs == foreign_result.n_anomalous == 3
    assert report.baseline[2].n_twin_pairs == 3 and report.model[0].n_twin_pairs == 0
    twin = foreign_result.metrics["above_twin"]
    assert twin.low <= twin.value <= twin.high
    markdown = (tmp_path / "reports" / "quality.md").read_text()
    assert "(c) independent generator" in markdown and "Baseline" in markdown
    assert "by how they were hidden" in markdown
    assert "| model | (c) independent generator | 3 |" in markdown
    for kind in foreign_result.by_concealment:
        assert f"| (c) independent generator | {kind} |" in markdown
    assert (
        json.loads((tmp_path / "reports" / "quality.json").read_text())["epochs"] == report.epochs
    )
    assert (tmp_path / "reports" / "quality_curve.png").stat().st_size > 10_000

    client = MlflowClient(mlflow_uri)
    bench = client.get_experiment_by_name("scanml-bench")
    runs = client.search_runs([bench.experiment_id], "attributes.run_name LIKE 'quality-2%'")
    assert any("quality/model/c/auroc" in run.data.metrics for run in runs)
