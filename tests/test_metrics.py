"""Metrics against small cases computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from scanml.metrics import (
    CalibrationWarning,
    ScanOutcome,
    calibrate_threshold,
    compute_metrics,
    confusion_at_threshold,
    detection_curve,
    detection_rate_at_far,
    false_alarm_rate_at_detection_rate,
    threshold_at_far,
)

TEN_CLEAN = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]


def outcome(label: int, score: float, site: str = "antwerp", **kwargs) -> ScanOutcome:
    return ScanOutcome(
        scan_id=f"{site}-{label}-{score}", site=site, label=label, score=score, **kwargs
    )


@pytest.mark.parametrize(
    ("far", "expected"),
    [
        (0.0, 1.0),  # no false alarm allowed: the highest clean score
        (0.05, 1.0),  # 0.5 of a scan rounds down to none
        (0.1, 0.9),  # one allowed: the second highest
        (0.2, 0.8),
        (0.29, 0.8),  # floor(2.9) = 2 allowed
        (0.3, 0.7),  # 0.3 * 10 is 3.0000000000000004: exactly 3 allowed
    ],
)
def test_threshold_at_far_takes_the_conservative_quantile(far: float, expected: float) -> None:
    assert threshold_at_far(TEN_CLEAN, far) == pytest.approx(expected)


def test_threshold_at_far_never_exceeds_the_target_with_ties() -> None:
    clean = [0.9, 0.9, 0.9, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0, 0.0]
    threshold = threshold_at_far(clean, 0.1)
    assert threshold == 0.9
    assert sum(score > threshold for score in clean) == 0  # fewer than the one allowed


def test_threshold_at_far_is_nan_without_clean_scans_and_rejects_bad_rates() -> None:
    assert math.isnan(threshold_at_far([], 0.01))
    with pytest.raises(ValueError, match="far"):
        threshold_at_far(TEN_CLEAN, 1.0)


def test_detection_rate_at_far_counts_ties_against_the_detector() -> None:
    # threshold at 10 % FAR is 0.9; the anomalous 0.9 ties it and is not a detection
    assert detection_rate_at_far(TEN_CLEAN, [0.9, 0.95, 0.3], 0.1) == pytest.approx(1 / 3)
    assert math.isnan(detection_rate_at_far(TEN_CLEAN, [], 0.1))


def test_false_alarm_rate_at_detection_rate() -> None:
    anomalous = [1.5, 1.4, 1.3, 1.2, 1.1, 0.95, 0.85, 0.75, 0.65, 0.05]
    # 90 % of 10 needs the 9 highest: threshold below 0.65; clean >= 0.65 are 0.7 .. 1.0
    assert false_alarm_rate_at_detection_rate(TEN_CLEAN, anomalous, 0.9) == pytest.approx(0.4)
    # a clean scan tied with the 9th anomalous score is a false alarm
    assert false_alarm_rate_at_detection_rate([0.65, 0.0], anomalous, 0.9) == pytest.approx(0.5)
    assert false_alarm_rate_at_detection_rate(TEN_CLEAN, anomalous, 1.0) == pytest.approx(1.0)
    assert math.isnan(false_alarm_rate_at_detection_rate([], anomalous, 0.9))


def test_auroc_and_average_precision() -> None:
    metrics = compute_metrics([outcome(0, 0.1), outcome(0, 0.4), outcome(1, 0.35), outcome(1, 0.8)])
    assert metrics.auroc == pytest.approx(0.75)
    # ranked: 0.8 (hit), 0.4, 0.35 (hit): 0.5 * 1 + 0.5 * 2/3
    assert metrics.average_precision == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert (metrics.n_scans, metrics.n_clean, metrics.n_anomalous) == (4, 2, 2)


def test_dr_at_far_in_compute_metrics() -> None:
    clean = [outcome(0, score) for score in TEN_CLEAN]
    anomalous = [outcome(1, score) for score in (0.9, 0.95, 1.2, 0.3)]
    metrics = compute_metrics(clean + anomalous, fars=(0.1, 0.2))
    assert metrics.threshold_at_far == {0.1: pytest.approx(0.9), 0.2: pytest.approx(0.8)}
    assert metrics.dr_at_far[0.1] == pytest.approx(0.5)  # 0.95 and 1.2
    assert metrics.dr_at_far[0.2] == pytest.approx(0.75)  # and the tied 0.9 is now above 0.8


def test_pointing_hit_rate_uses_the_enlarged_box() -> None:
    box = (10.0, 10.0, 20.0, 20.0)  # enlarged by 10 %: x in [9, 31], y in [9, 31]
    metrics = compute_metrics(
        [
            outcome(1, 0.9, peak_xy=(31.0, 20.0), true_boxes=[box]),  # on the enlarged edge
            outcome(1, 0.8, peak_xy=(31.5, 20.0), true_boxes=[box]),  # just outside
            outcome(1, 0.7, peak_xy=(50.0, 50.0), true_boxes=[box, (45.0, 45.0, 10.0, 10.0)]),
            outcome(1, 0.6, peak_xy=None, true_boxes=[box]),  # no heat map: not counted
            outcome(1, 0.5, peak_xy=(0.0, 0.0)),  # no boxes: not counted
            outcome(0, 0.1, peak_xy=(20.0, 20.0)),
        ]
    )
    assert metrics.n_pointing_scans == 3
    assert metrics.pointing_hit_rate == pytest.approx(2 / 3)


def test_region_recall_matches_one_region_per_box() -> None:
    left, right = (0.0, 0.0, 10.0, 10.0), (20.0, 0.0, 10.0, 10.0)
    wide = (0.0, 0.0, 30.0, 10.0)  # IoU 1/3 with each box, but may match only one
    one_region = compute_metrics([outcome(1, 0.9, regions=[wide], true_boxes=[left, right])])
    assert one_region.n_true_boxes == 2
    assert one_region.region_recall == pytest.approx(0.5)

    two_regions = compute_metrics(
        [outcome(1, 0.9, regions=[wide, right], true_boxes=[left, right])]
    )
    assert two_regions.region_recall == pytest.approx(1.0)

    shifted = (5.0, 0.0, 10.0, 10.0)  # IoU 50/150 = 1/3 >= 0.25
    far_off = (8.0, 0.0, 10.0, 10.0)  # IoU 20/180 < 0.25
    assert (
        compute_metrics([outcome(1, 0.9, regions=[shifted], true_boxes=[left])]).region_recall
        == 1.0
    )
    assert (
        compute_metrics([outcome(1, 0.9, regions=[far_off], true_boxes=[left])]).region_recall
        == 0.0
    )


def test_per_site_and_nan_where_undefined() -> None:
    outcomes = [
        outcome(0, 0.1, site="antwerp"),
        outcome(1, 0.9, site="antwerp"),
        outcome(0, 0.2, site="santos"),
        outcome(0, 0.3, site="santos"),
    ]
    metrics = compute_metrics(outcomes)
    assert set(metrics.per_site) == {"antwerp", "santos"}
    assert metrics.per_site["antwerp"].auroc == 1.0
    santos = metrics.per_site["santos"]
    assert santos.n_scans == 2
    for value in (santos.auroc, santos.average_precision, santos.far_at_dr, santos.dr_at_far[0.01]):
        assert math.isnan(value)
    assert math.isnan(santos.pointing_hit_rate) and math.isnan(santos.region_recall)
    assert santos.per_site == {}


def test_empty_input_gives_nan_not_a_crash() -> None:
    metrics = compute_metrics([])
    assert metrics.n_scans == 0 and metrics.per_site == {}
    assert all(math.isnan(v) for k, v in metrics.to_flat_dict().items() if not k.startswith("n_"))


def test_flat_dict_keys_for_mlflow() -> None:
    metrics = compute_metrics(
        [
            outcome(0, 0.1, site="antwerp"),
            outcome(1, 0.9, site="antwerp"),
            outcome(1, 0.5, site="São Paulo!"),
        ]
    )
    flat = metrics.to_flat_dict(prefix="val/")
    for key in (
        "auroc",
        "average_precision",
        "dr_at_far_0.5pct",
        "dr_at_far_1pct",
        "dr_at_far_5pct",
        "threshold_at_far_1pct",
        "far_at_dr_90pct",
        "pointing_hit_rate",
        "region_recall",
        "n_scans",
        "site/antwerp/auroc",
        "site/S_o Paulo_/dr_at_far_1pct",
    ):
        assert f"val/{key}" in flat
    assert flat["val/auroc"] == 1.0
    assert all(isinstance(value, float) for value in flat.values())


def test_confusion_at_threshold_flags_strictly_above() -> None:
    outcomes = [outcome(0, 0.2), outcome(0, 0.5), outcome(1, 0.5), outcome(1, 0.9), outcome(1, 0.1)]
    confusion = confusion_at_threshold(outcomes, 0.5)
    assert (
        confusion.true_positives,
        confusion.false_positives,
        confusion.true_negatives,
        confusion.false_negatives,
    ) == (1, 0, 2, 2)
    assert confusion.detection_rate == pytest.approx(1 / 3)
    assert confusion.false_alarm_rate == 0.0
    assert confusion.as_matrix().tolist() == [[2, 0], [2, 1]]


def test_detection_curve_agrees_with_detection_rate_at_far() -> None:
    rng = np.random.default_rng(0)
    clean, anomalous = rng.random(200), rng.random(50) + 0.5
    curve = detection_curve(clean, anomalous)
    assert curve.false_alarm_rate[0] == 0.0 and curve.detection_rate[-1] == 1.0
    assert np.all(np.diff(curve.false_alarm_rate) >= 0) and np.all(
        np.diff(curve.detection_rate) >= 0
    )
    threshold = threshold_at_far(clean, 0.05)
    at = np.flatnonzero(curve.thresholds == threshold)[0]
    assert curve.false_alarm_rate[at] <= 0.05
    assert curve.detection_rate[at] == pytest.approx(detection_rate_at_far(clean, anomalous, 0.05))


def test_rejects_bad_labels_and_scores() -> None:
    with pytest.raises(ValueError, match="label"):
        compute_metrics([outcome(2, 0.5)])
    with pytest.raises(ValueError, match="score"):
        compute_metrics([outcome(1, math.nan)])


def test_calibration_on_enough_clean_scans_is_quiet_and_recorded(recwarn) -> None:
    clean = np.linspace(0.0, 1.0, 200)
    calibration = calibrate_threshold(clean, 0.01)
    assert calibration.threshold == pytest.approx(threshold_at_far(clean, 0.01))
    assert calibration.supported and calibration.needed == 100
    assert not [w for w in recwarn if issubclass(w.category, CalibrationWarning)]
    assert calibration.to_metadata() == {
        "target_far": 0.01,
        "calibration_scans": 200,
        "calibration_scans_needed": 100,
        "calibration_supported": True,
        "calibration_variant_scores": 0,
    }


def test_acquisition_variants_join_the_quantile_but_not_the_scan_count() -> None:
    clean = np.linspace(0.0, 0.5, 30)  # 30 scans: a 1 % threshold is their highest score
    variants = np.concatenate([np.linspace(0.0, 0.6, 119), [0.9]])  # one far-out redraw
    with pytest.warns(CalibrationWarning, match="variants refine the quantile"):
        calibration = calibrate_threshold(clean, 0.01, variant_scores=variants)
    # 150 scores at 1 %: one may be above, so the second highest (0.6), not 0.5 or 0.9
    assert calibration.threshold == pytest.approx(0.6)
    assert not calibration.supported and calibration.n_clean == 30
    assert calibration.to_metadata()["calibration_variant_scores"] == 120
    assert "30 clean scans and 120 acquisition variants" in calibration.describe()


def test_acquisition_variants_never_lower_the_threshold_below_the_scans_own() -> None:
    clean = [*np.linspace(0.0, 0.5, 29), 0.9]  # one clean scan scores far out
    variants = np.linspace(0.0, 0.6, 120)
    with pytest.warns(CalibrationWarning):
        calibration = calibrate_threshold(clean, 0.01, variant_scores=variants)
    # pooled alone, one score may lie above: 0.6 would flag that clean scan (1 in 30)
    assert calibration.threshold == pytest.approx(0.9)


def test_calibration_on_three_clean_scans_warns_and_says_so() -> None:
    with pytest.warns(CalibrationWarning, match="at least 100"):
        calibration = calibrate_threshold([0.2, 0.4, 0.3], 0.01)
    assert calibration.threshold == 0.4  # the highest clean score: zero observed false alarms
    assert not calibration.supported
    assert calibration.to_metadata()["calibration_supported"] is False
    assert "3 clean scans" in calibration.describe()


def test_calibration_without_clean_scans_falls_back_and_warns() -> None:
    with pytest.warns(CalibrationWarning, match="fallback 0.5"):
        calibration = calibrate_threshold([], 0.05, fallback=0.5)
    assert calibration.threshold == 0.5 and calibration.n_clean == 0
    with pytest.raises(ValueError, match="far"):
        calibrate_threshold([0.1], 0.0)


def test_region_iou_matches_a_hand_computed_overlap() -> None:
    # Boxes 10 x 10 overlapping in a 5 x 10 strip: IoU = 50 / 150 = 1/3.
    true_box, region = (0.0, 0.0, 10.0, 10.0), (5.0, 0.0, 10.0, 10.0)
    hit = compute_metrics([outcome(1, 0.9, true_boxes=[true_box], regions=[region])], iou=0.33)
    miss = compute_metrics([outcome(1, 0.9, true_boxes=[true_box], regions=[region])], iou=0.34)
    assert hit.region_recall == 1.0 and miss.region_recall == 0.0
    empty = compute_metrics([outcome(1, 0.9, true_boxes=[true_box], regions=[(3, 3, 0, 0)])])
    assert empty.region_recall == 0.0  # a zero-area region overlaps nothing (no NaN)
