"""The detection-quality benchmark end to end, shrunk: smoke preset, a few scans per set."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from conftest import CONFIGS, REPO, TrainedModel
from scanml.baseline import LocalContrastDetector
from scanml.dataset import load_dataset
from scanml.io import Scan
from scanml.metrics import ScanOutcome
from scanml.quality import (
    QualityReport,
    _curve_snapshots,
    _Loaded,
    _measure,
    arm_difference,
    bootstrap_metrics,
    paired_difference,
    run_quality_benchmark,
    twin_metrics,
)
from scanml.synth import generate_dataset
from scanml.visibility import threat_visibility


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


def test_paired_difference_sees_what_two_overlapping_intervals_cannot() -> None:
    rng = np.random.default_rng(1)
    labels = [i % 2 for i in range(120)]
    # Each scan is as hard for both detectors (a shared per-scan term); the
    # second one sees the anomalies a little better.
    hardness = rng.normal(0.0, 1.0, size=len(labels))
    first = [
        ScanOutcome(f"s{i}", "x", y, score=float(h + 0.4 * y))
        for i, (y, h) in enumerate(zip(labels, hardness, strict=True))
    ]
    second = [
        ScanOutcome(
            o.scan_id, "x", o.label, score=float(o.score + 0.3 * o.label + rng.normal(0, 0.05))
        )
        for o in first
    ]
    alone = [bootstrap_metrics(o, threshold=0.5, n_resamples=300)["auroc"] for o in (first, second)]
    assert alone[0].high > alone[1].low  # the two intervals overlap
    gain = paired_difference(second, first, n_resamples=300)["auroc"]
    assert gain.value == pytest.approx(alone[1].value - alone[0].value)
    assert 0.0 < gain.low <= gain.value <= gain.high  # the paired interval excludes 0
    # A detector against itself: nothing, exactly.
    itself = paired_difference(first, first, n_resamples=50)
    assert all(
        d.value == d.low == d.high == 0.0 for d in itself.values() if not math.isnan(d.value)
    )
    assert not math.isnan(itself["auroc"].value)
    with pytest.raises(ValueError, match="same scans"):
        paired_difference(first, first[::-1], n_resamples=10)


def test_arms_are_judged_on_the_mean_of_their_runs_with_the_spread_between_runs() -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(2)
    labels = [i % 2 for i in range(160)]
    hardness = rng.normal(0.0, 1.0, size=len(labels))

    def run(gain: float, spread: float) -> list[ScanOutcome]:
        # One training run: the scans' shared hardness, the recipe's gain on
        # anomalies, and what this run alone learnt (its own noise per scan).
        own = rng.normal(0.0, spread, size=len(labels))
        return [
            ScanOutcome(f"s{i}", "x", y, score=float(h + (0.5 + gain) * y + e))
            for i, (y, h, e) in enumerate(zip(labels, hardness, own, strict=True))
        ]

    recipe, change = [run(0.0, 0.3) for _ in range(3)], [run(0.8, 0.3) for _ in range(3)]
    means, (difference,) = arm_difference([recipe, change], n_resamples=100)
    each = [roc_auc_score(labels, [o.score for o in r]) for r in recipe]
    assert means[0]["auroc"].value == pytest.approx(np.mean(each))
    assert means[0]["auroc"].low <= min(each) and max(each) <= means[0]["auroc"].high + 0.02
    assert difference["auroc"].value == pytest.approx(
        means[1]["auroc"].value - means[0]["auroc"].value
    )
    assert difference["auroc"].low > 0.0  # a real gain, seen through both kinds of noise
    # The same runs as two arms: no difference, but the redrawn runs keep it uncertain.
    _, (none,) = arm_difference([recipe, recipe], n_resamples=100)
    assert none["auroc"].value == 0.0 and none["auroc"].low < 0.0 < none["auroc"].high
    # Runs that differ as whole runs (one learnt the threats better than
    # another) widen the interval: the same mean gain, seen through three
    # runs an arm that agree, then through three that do not.
    agree = arm_difference(
        [[run(0.0, 0.1) for _ in range(3)], [run(0.15, 0.1) for _ in range(3)]], n_resamples=100
    )[1][0]["auroc"]
    differ = arm_difference(
        [[run(g, 0.1) for g in (-0.6, 0.0, 0.6)], [run(g, 0.1) for g in (-0.45, 0.15, 0.75)]],
        n_resamples=100,
    )[1][0]["auroc"]
    assert agree.low > 0.0 and differ.low < 0.0 < differ.high
    assert differ.high - differ.low > 2 * (agree.high - agree.low)
    with pytest.raises(ValueError, match="same scans"):
        arm_difference([recipe, [recipe[0][::-1]]], n_resamples=10)
    with pytest.raises(ValueError, match="at least one run"):
        arm_difference([recipe, []], n_resamples=10)


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


def _cluttered_scan(seed: int, shape: tuple[int, int], spacing_mm: float) -> Scan:
    """A clean scan: cargo texture (5 % of the attenuation, ~3-pixel grain) and detector noise."""
    import numpy as np
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    texture = ndimage.gaussian_filter(rng.normal(size=shape), 3)
    attenuation = 1.0 + 0.05 * texture / texture.std() + 0.01 * rng.normal(size=shape)
    return Scan(attenuation.astype("float32")[None], (spacing_mm, spacing_mm), ["high"], {})


def _with_block(clean: Scan, change: float, rows: slice, cols: slice) -> Scan:
    """The clean scan's anomalous twin: the same pixels and noise, ``change`` added in a block."""
    attenuation = clean.attenuation.copy()
    attenuation[:, rows, cols] += change
    return Scan(attenuation, clean.spacing_mm, clean.channels, {})


def test_threat_visibility_grows_with_the_change_and_is_nothing_where_nothing_changed() -> None:
    from scanml.data import Box

    # 5 mm pixels: measured after resampling to 8 mm, as a scan of any scanner is.
    clean = _cluttered_scan(0, (300, 600), 5.0)
    threat = Box(200, 100, 40, 30, "drugs")
    untouched = Box(400, 200, 30, 30, "drugs")
    ratios = []
    for change in (0.0, 0.02, 0.05, 0.1, 0.2):
        scan = _with_block(clean, change, slice(100, 130), slice(200, 240))
        ccr, elsewhere = threat_visibility(scan, clean, [threat, untouched])
        assert elsewhere == 0.0  # the same scene and noise: no change, no visibility
        ratios.append(ccr)
    assert ratios[0] == 0.0
    assert ratios == sorted(set(ratios))  # strictly increasing
    # The change over a fixed clutter: twice the change, twice the ratio.
    assert ratios[4] == pytest.approx(2 * ratios[3], rel=0.02)
    # 0.02 of attenuation over 5 % texture and 1 % noise: fainter than the clutter.
    assert ratios[1] < 0.5 < ratios[2]
    # Not a twin: another shape is refused, not compared pixel by pixel.
    with pytest.raises(ValueError, match="twin"):
        threat_visibility(
            _with_block(clean, 0.1, slice(100, 130), slice(200, 240)),
            _cluttered_scan(0, (300, 500), 5.0),
            [threat],
        )


def test_breakdown_by_visibility_bins_each_anomalous_scan_with_a_twin_once() -> None:
    from scanml.data import Box, ScanRecord

    # Pairs whose threat ranges from invisible to plain (CCR ~0.2, ~0.8, ~1.5, ~3.5, ~7),
    # an anomalous scan without a twin, and one whose "twin" has other pixels.
    changes = {"faint": 0.008, "weak": 0.033, "fair": 0.065, "plain": 0.15, "bold": 0.3}
    box = Box(200, 100, 40, 30, "drugs", concealment="cargo")
    loaded = []
    for seed, (name, change) in enumerate(changes.items()):
        clean = _cluttered_scan(seed, (300, 600), 8.0)
        scan = _with_block(clean, change, slice(100, 130), slice(200, 240))
        loaded += [
            (
                ScanRecord(
                    name, Path(f"{name}.dcm"), 1, "x", boxes=[box], extras={"twin": f"{name}-clean"}
                ),
                scan,
            ),
            (
                ScanRecord(
                    f"{name}-clean", Path(f"{name}-clean.dcm"), 0, "x", extras={"twin": name}
                ),
                clean,
            ),
        ]
    lone = _with_block(_cluttered_scan(10, (300, 600), 8.0), 0.3, slice(100, 130), slice(200, 240))
    loaded.append((ScanRecord("lone", Path("lone.dcm"), 1, "x", boxes=[box]), lone))
    odd = _with_block(_cluttered_scan(11, (300, 600), 8.0), 0.3, slice(100, 130), slice(200, 240))
    loaded += [
        (
            ScanRecord("odd", Path("odd.dcm"), 1, "x", boxes=[box], extras={"twin": "odd-clean"}),
            odd,
        ),
        (
            ScanRecord("odd-clean", Path("odd-clean.dcm"), 0, "x", extras={"twin": "odd"}),
            _cluttered_scan(11, (300, 500), 8.0),
        ),
    ]
    data = _Loaded(loaded, failures=[])
    detector = LocalContrastDetector(threshold=0.2)

    result = _measure("(c) twins", data, detector.outcome, 0.2, 50, breakdown=True)

    assert result.n_anomalous == 7 and result.n_twin_pairs == 6
    assert {label: n for label, (n, _) in result.by_visibility.items()} == {
        "< 0.5": 1,
        "0.5-1": 1,
        "1-2": 1,
        ">= 2": 2,
    }
    assert list(result.by_visibility) == ["< 0.5", "0.5-1", "1-2", ">= 2"]
    plain = result.by_visibility[">= 2"][1]["auroc"]
    assert plain.low <= plain.value <= plain.high
    # Measured once per set: every later detector (the baseline, each snapshot) reuses it.
    assert data.visibility() is data.visibility()
    assert sorted(data.visibility()) == sorted(changes)
    # Without the breakdown (the baseline, the learning curve) nothing is binned.
    assert not _measure("(c) twins", data, detector.outcome, 0.2, 50).by_visibility
    # A set without twins has no visibility at all.
    alone = _measure("(a)", _Loaded(loaded[-3:-2], []), detector.outcome, 0.2, 50, breakdown=True)
    assert alone.by_visibility == {}

    report = QualityReport("configs/default.yaml", 1.0, 1.0, 1, 1, 0.5, model=[result])
    markdown = report.to_markdown("scanml bench --quality")
    assert "## Where the model finds threats, by how visible they are" in markdown
    assert markdown.index("by how they were hidden") < markdown.index("by how visible they are")
    assert (
        "| set | best threat CCR | anomalous scans | AUROC | DR @ 1 % FAR | pointing |" in markdown
    )
    assert "| (c) twins | >= 2 | 2 |" in markdown and "| (c) twins | < 0.5 | 1 |" in markdown
    listed = report.to_dict()["model"][0]["by_visibility"]
    assert listed["0.5-1"]["n_anomalous"] == 1 and "auroc" in listed["0.5-1"]["metrics"]
    # Without twins, no section.
    bare = QualityReport("configs/default.yaml", 1.0, 1.0, 1, 1, 0.5, model=[alone])
    assert "by how visible they are" not in bare.to_markdown("scanml bench --quality")


def test_independent_generator_threats_are_measured_against_their_real_twins(
    tmp_path: Path,
) -> None:
    from scanml.quality import _read_all
    from scanml.visibility import scan_visibility

    # Two pairs as the benchmark reads them: DICOM files at the generator's own spacings.
    foreign = _foreign_generator()(tmp_path / "foreign", n_scans=4, seed=0, workers=1)
    data = _read_all(load_dataset(foreign).records)
    by_id = {record.scan_id: (record, scan) for record, scan in data.loaded}
    anomalous = [(record, scan) for record, scan in data.loaded if record.label == 1]
    assert len(anomalous) == 2 and not data.failures

    visibility = data.visibility()
    assert sorted(visibility) == sorted(record.scan_id for record, _ in anomalous)
    for record, scan in anomalous:
        twin = by_id[record.extras["twin"]][1]
        assert scan.spacing_mm != (8.0, 8.0)  # resampled, as for any scanner
        ratios = threat_visibility(scan, twin, record.boxes)
        assert len(ratios) == len(record.boxes) and all(r > 0 for r in ratios)
        assert visibility[record.scan_id] == max(ratios)
        # The twin against itself: the same scene, nothing changed anywhere.
        assert threat_visibility(twin, twin, record.boxes) == [0.0] * len(record.boxes)
    assert scan_visibility(data.loaded) == visibility


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


@pytest.mark.slow
def test_trained_models_side_by_side_from_the_command_line(
    trained_model: TrainedModel, tmp_path: Path, mlflow_uri: str
) -> None:
    from scanml.cli import main

    left_out = generate_dataset(
        out_dir=tmp_path / "santos", n_scans=4, seed=3, sites=["santos"], workers=1, progress=False
    ).manifest.parent
    foreign = _foreign_generator()(tmp_path / "foreign", n_scans=4, seed=0, workers=1)
    model, out = str(trained_model.bundle_dir), tmp_path / "reports"
    argv = ["bench", "--quality", "--model", model, "--model", model, "--bootstrap", "20"]
    argv += ["--left-out", str(left_out), "--foreign", str(foreign), "--out", str(out)]
    assert main(argv) == 0

    report = json.loads((out / "quality-models.json").read_text())
    first, second = report["models"]
    assert first["model"] == second["model"] == model and report["bootstrap"] == 20
    assert [r["set"] for r in first["results"]] == [
        "(b) left-out site",
        "(c) independent generator",
    ]
    assert [r["n_scans"] for r in first["results"]] == [4, 4]
    # The same model scores the same scans the same way: no difference, and none to resample.
    assert first["results"] == second["results"] and first["against_first"] == {}
    for difference in second["against_first"].values():
        auroc = difference["auroc"]
        assert auroc["value"] == auroc["low"] == auroc["high"] == 0.0
    markdown = (out / "quality-models.md").read_text()
    assert f"| 2 | `{model}` | {second['threshold']:.4f} |" in markdown
    assert "## Each model against model 1, on the same scans" in markdown
    assert "| 2 | (c) independent generator | +0.000 [+0.000, +0.000] |" in markdown
    assert "| model 2 | (c) independent generator | 2 |" in markdown  # its twins
    assert not (out / "quality.md").exists()  # the benchmark's own report is left alone

    # Runs of two recipes, grouped: each arm's mean and the second against the first.
    argv = ["bench", "--quality", "--arm", "recipe", model, "--arm", "change", model, model]
    argv += ["--bootstrap", "20", "--left-out", str(left_out), "--foreign", str(foreign)]
    assert main([*argv, "--out", str(out / "arms")]) == 0
    report = json.loads((out / "arms" / "quality-models.json").read_text())
    assert [m["model"] for m in report["models"]] == [model] * 3
    recipe, change = report["arms"]
    assert (recipe["name"], recipe["models"], change["models"]) == ("recipe", [1], [2, 3])
    assert recipe["against_first"] == {} and set(change["against_first"]) == {
        "(b) left-out site",
        "(c) independent generator",
    }
    for arm in (recipe, change):
        auroc = arm["mean"]["(c) independent generator"]["auroc"]["value"]
        assert auroc == first["results"][1]["metrics"]["auroc"]["value"]
    markdown = (out / "arms" / "quality-models.md").read_text()
    assert "## Each arm: the mean of its runs" in markdown
    assert "| change | (c) independent generator | +0.000 [+0.000, +0.000] |" in markdown
