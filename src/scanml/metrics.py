"""Scan- and region-level metrics, defined the way customs judge a detector.

Validation during training and ``scanml evaluate`` both call
:func:`compute_metrics`, so a number in the MLflow UI means the same thing
wherever it was logged. The definitions (``DESIGN.md`` section 1):

- **AUROC** and **average precision** on scan scores (scikit-learn).
- **Detection rate at a false-alarm rate** (DR at FAR): the threshold is the
  score that flags at most that fraction of the clean scans
  (:func:`threshold_at_far`), and the DR is the share of anomalous scans
  whose score lies *strictly above* it. A scan is flagged when
  ``score > threshold`` everywhere in scanml (here, in the model's stored
  threshold and in the scoring job), so a clean scan tied with the
  threshold is never a false alarm and an anomalous scan tied with it is
  never a detection: ties always count against the detector.
- **FAR at a detection rate** (default 90 %): the lowest false-alarm rate
  of any threshold that still detects that share of the anomalous scans.
- **Pointing hit rate**: over scans with at least one true box and a heat
  map peak, the share whose peak lies inside a true box enlarged by
  ``box_margin`` (10 %: the box's width and height grow by 10 %, about its
  centre; edges inclusive). Annotators draw boxes tight, and a peak on
  the edge of a brick still points the analyst to the right place.
- **Region recall**: the share of true boxes matched by a predicted region
  with IoU >= 0.25, one region per box (greedy, highest IoU first), so one
  huge region cannot claim every box in the scan.

Every figure is also computed per site, because a detector that is good at
Antwerp and blind at Santos averages to a misleading number. A metric that
is undefined for the data at hand (one class only, no clean scans, no
boxes) is NaN, never an exception: a validation split without anomalies
must not kill a training run.

Box convention: ``(x, y, w, h)`` in the scan's pixels (COCO: x = column,
y = row), the same grid as the heat map's peak ``(x, y)``.
"""

from __future__ import annotations

import logging
import math
import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from numpy.typing import ArrayLike
from sklearn.metrics import average_precision_score, roc_auc_score
from torchvision.ops import box_convert, box_iou

if TYPE_CHECKING:
    from scanml.dataset import ScanRecord
    from scanml.predict import Prediction

__all__ = [
    "Box",
    "CalibrationWarning",
    "Confusion",
    "DetectionCurve",
    "ScanMetrics",
    "ScanOutcome",
    "ThresholdCalibration",
    "calibrate_threshold",
    "compute_metrics",
    "confusion_at_threshold",
    "detection_curve",
    "detection_rate_at_far",
    "false_alarm_rate_at_detection_rate",
    "threshold_at_far",
    "variants_phrase",
]

Box = tuple[float, float, float, float]
"""``(x, y, w, h)`` in scan pixels."""

log = logging.getLogger(__name__)

# A tolerance for turning ``rate * count`` into a whole number of scans:
# 0.29 * 100 is 28.999999999999996 in floating point, and must count as 29.
_COUNT_EPS = 1e-9

# MLflow metric keys may hold alphanumerics, ``_ - . /`` and spaces.
_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-. /]")


@dataclass(frozen=True)
class ScanOutcome:
    """What the metrics need to know about one scored scan.

    ``label`` is 0 (clean) or 1 (contains an anomaly). ``peak_xy`` is where
    the heat map is highest, or None where no heat map was computed (the
    scan then does not count for pointing). ``regions`` are the predicted
    boxes and ``true_boxes`` the annotated ones.
    """

    scan_id: str
    site: str
    label: int
    score: float
    peak_xy: tuple[float, float] | None = None
    regions: Sequence[Box] = ()
    true_boxes: Sequence[Box] = ()

    @classmethod
    def of(cls, record: ScanRecord, prediction: Prediction) -> ScanOutcome:
        """A manifest record and the Predictor's result for it."""
        return cls(
            scan_id=record.scan_id,
            site=record.site,
            label=record.label,
            score=prediction.score,
            peak_xy=prediction.peak_xy,
            regions=[(r.x, r.y, r.w, r.h) for r in prediction.regions],
            true_boxes=[(b.x, b.y, b.w, b.h) for b in record.boxes],
        )


@dataclass(frozen=True)
class ScanMetrics:
    """All metrics of a set of scans; ``per_site`` holds the same per site.

    Dictionaries keyed by a rate (``dr_at_far``, ``threshold_at_far``) use
    the rates as given to :func:`compute_metrics`, e.g. ``0.01``.
    """

    n_scans: int
    n_anomalous: int
    n_clean: int
    auroc: float
    average_precision: float
    dr_at_far: dict[float, float]
    threshold_at_far: dict[float, float]
    detection_rate_for_far: float
    far_at_dr: float
    pointing_hit_rate: float
    n_pointing_scans: int
    region_recall: float
    n_true_boxes: int
    per_site: dict[str, ScanMetrics] = field(default_factory=dict)

    def to_flat_dict(self, prefix: str = "") -> dict[str, float]:
        """Flat ``{key: value}`` for ``mlflow.log_metrics``.

        Keys: ``auroc``, ``average_precision``, ``dr_at_far_1pct``,
        ``dr_at_far_0.5pct``, ``threshold_at_far_1pct``, ``far_at_dr_90pct``,
        ``pointing_hit_rate``, ``region_recall``, the counts, and each again
        under ``site/<site>/``; everything behind ``prefix`` (e.g. ``"val/"``).
        Characters MLflow refuses in a site name become ``_``.
        """
        flat: dict[str, float] = {
            "auroc": self.auroc,
            "average_precision": self.average_precision,
            f"far_at_dr_{_percent(self.detection_rate_for_far)}pct": self.far_at_dr,
            "pointing_hit_rate": self.pointing_hit_rate,
            "region_recall": self.region_recall,
            "n_scans": float(self.n_scans),
            "n_anomalous": float(self.n_anomalous),
            "n_clean": float(self.n_clean),
            "n_pointing_scans": float(self.n_pointing_scans),
            "n_true_boxes": float(self.n_true_boxes),
        }
        for far, rate in self.dr_at_far.items():
            flat[f"dr_at_far_{_percent(far)}pct"] = rate
        for far, threshold in self.threshold_at_far.items():
            flat[f"threshold_at_far_{_percent(far)}pct"] = threshold
        flat = {f"{prefix}{key}": value for key, value in flat.items()}
        for site, metrics in self.per_site.items():
            site_key = _UNSAFE_KEY_CHARS.sub("_", site)
            flat.update(metrics.to_flat_dict(prefix=f"{prefix}site/{site_key}/"))
        return flat


@dataclass(frozen=True)
class Confusion:
    """Scan counts at one threshold; a scan is flagged when ``score > threshold``."""

    true_positives: int
    false_positives: int
    true_negatives: int
    false_negatives: int

    @property
    def detection_rate(self) -> float:
        """Share of anomalous scans flagged; NaN without anomalous scans."""
        return _ratio(self.true_positives, self.true_positives + self.false_negatives)

    @property
    def false_alarm_rate(self) -> float:
        """Share of clean scans flagged; NaN without clean scans."""
        return _ratio(self.false_positives, self.false_positives + self.true_negatives)

    def as_matrix(self) -> np.ndarray:
        """``[[TN, FP], [FN, TP]]``: rows are the truth (clean, anomalous), as scikit-learn."""
        return np.array(
            [
                [self.true_negatives, self.false_positives],
                [self.false_negatives, self.true_positives],
            ]
        )


@dataclass(frozen=True)
class DetectionCurve:
    """Detection rate against false-alarm rate, one point per distinct threshold.

    Point ``i`` flags the scans with ``score > thresholds[i]``; thresholds
    decrease, so both rates increase along the arrays. The first point
    (threshold = highest score) flags nothing, the last (``-inf``) flags all.
    """

    false_alarm_rate: np.ndarray
    detection_rate: np.ndarray
    thresholds: np.ndarray


def compute_metrics(
    outcomes: Iterable[ScanOutcome],
    *,
    fars: Sequence[float] = (0.005, 0.01, 0.05),
    detection_rate_for_far: float = 0.9,
    iou: float = 0.25,
    box_margin: float = 0.10,
) -> ScanMetrics:
    """Compute every scanml metric over ``outcomes``, overall and per site.

    ``fars`` are the false-alarm rates at which the detection rate is
    reported, ``detection_rate_for_far`` the detection rate at which the
    false-alarm rate is reported, ``iou`` the overlap a predicted region
    needs to match a true box, ``box_margin`` how much a true box grows
    before the pointing test. Raises ValueError for a label other than 0/1
    or a score that is not finite (a failed scan has no place here).
    """
    outcomes = list(outcomes)
    _check_outcomes(outcomes)

    def measure(group: list[ScanOutcome], per_site: dict[str, ScanMetrics]) -> ScanMetrics:
        return _measure(
            group,
            fars=fars,
            detection_rate_for_far=detection_rate_for_far,
            iou=iou,
            box_margin=box_margin,
            per_site=per_site,
        )

    sites = sorted({outcome.site for outcome in outcomes})
    if len(sites) == 1:  # the one site is the whole set: measured once, not twice
        whole = measure(outcomes, {})
        return replace(whole, per_site={sites[0]: whole})
    per_site = {
        site: measure([outcome for outcome in outcomes if outcome.site == site], {})
        for site in sites
    }
    return measure(outcomes, per_site)


def threshold_at_far(clean_scores: ArrayLike, far: float) -> float:
    """The threshold that flags at most ``far`` of ``clean_scores``.

    With ``n`` clean scans, ``k = floor(far * n)`` false alarms are allowed;
    the threshold is the ``(k + 1)``-th highest clean score, and a scan is
    flagged when ``score > threshold``. So at most ``k`` clean scans are
    flagged: exactly ``k`` when the scores are distinct, fewer when clean
    scores tie at the threshold (ties never push the FAR above target).

    With few clean scans the FAR can only be resolved to ``1 / n``, and the
    quantile is taken on the conservative side: with 50 clean scans and
    ``far = 0.01``, ``k = 0`` and the threshold is the highest clean score,
    i.e. the reported figure is the detection rate at zero observed false
    alarms. Calibrate a 1 % threshold on at least a few hundred clean scans.

    Returns NaN without clean scans. Raises ValueError unless ``0 <= far < 1``.
    """
    if not 0.0 <= far < 1.0:
        raise ValueError(f"far must be in [0, 1), got {far}")
    clean = np.sort(np.asarray(clean_scores, dtype=np.float64))[::-1]
    if clean.size == 0:
        return math.nan
    allowed = min(math.floor(far * clean.size + _COUNT_EPS), clean.size - 1)
    return float(clean[allowed])


class CalibrationWarning(UserWarning):
    """The calibration set is too small for the false-alarm rate asked of it."""


@dataclass(frozen=True)
class ThresholdCalibration:
    """A scan threshold calibrated on clean scans, and whether they could support its target.

    ``needed`` is the number of clean scans at which the target FAR becomes
    resolvable (``ceil(1 / far)``: one false alarm among them is the target
    rate); with fewer, ``supported`` is False and the threshold is the
    highest clean score seen (or higher, with variants), i.e. zero observed
    false alarms among ``n_clean`` scans, which says little about the rate
    in service.
    ``n_variants`` counts the scores of acquisition variants of those scans
    that joined the quantile (:func:`calibrate_threshold`).
    """

    threshold: float
    target_far: float
    n_clean: int
    needed: int
    n_variants: int = 0

    @property
    def supported(self) -> bool:
        return self.n_clean >= self.needed

    def describe(self) -> str:
        """One line for logs, reports and warnings."""
        text = (
            f"threshold {self.threshold:.4f} calibrated at {self.target_far:.2%} FAR "
            f"on {self.n_clean} clean scans"
        )
        text += variants_phrase(self.n_variants)
        if self.supported:
            return text
        where = (
            "the variants refine the quantile, but they redraw the same containers"
            if self.n_variants
            else "the threshold is the highest clean score"
        )
        return (
            f"{text}: too few for that rate (it needs at least {self.needed}); with "
            f"{self.n_clean} {where}, so the false-alarm rate in service is not known"
        )

    def to_metadata(self) -> dict[str, Any]:
        """What a model bundle and an MLflow run record about the calibration."""
        return {
            "target_far": self.target_far,
            "calibration_scans": self.n_clean,
            "calibration_scans_needed": self.needed,
            "calibration_supported": self.supported,
            "calibration_variant_scores": self.n_variants,
        }


def variants_phrase(n_variants: int) -> str:
    """`` and N acquisition variants of them`` (empty without variants): how every
    description of a calibration names them."""
    return f" and {n_variants} acquisition variants of them" if n_variants else ""


def calibrate_threshold(
    clean_scores: ArrayLike,
    far: float,
    *,
    fallback: float = 0.5,
    variant_scores: ArrayLike = (),
) -> ThresholdCalibration:
    """The one way scanml sets a model's threshold: :func:`threshold_at_far` on clean scans.

    ``variant_scores`` are scores of the same clean scans redrawn through
    the acquisition chain (``validation.calibration_variants``): they join
    the clean scores in the quantile, so the threshold also holds when the
    containers come from another scanner. They only ever raise it: the
    threshold is the higher of the quantile on the scans alone and on the
    scans with their variants. ``supported`` still counts scans, because
    variants of one container are not independent containers.

    Warns (:class:`CalibrationWarning`, also logged) when there are fewer
    than ``ceil(1 / far)`` clean scans, and the result records it
    (:meth:`ThresholdCalibration.to_metadata`). Without any clean scan the
    threshold is ``fallback``. Raises ValueError unless ``0 < far < 1``.
    """
    if not 0.0 < far < 1.0:
        raise ValueError(f"far must be in (0, 1), got {far}")
    clean = np.asarray(clean_scores, dtype=np.float64).ravel()
    variants = np.asarray(variant_scores, dtype=np.float64).ravel()
    # the variants can only raise the threshold: their count must not buy a clean
    # scan's own false alarm (30 scans and 120 variants allow one score above at 1 %)
    pooled = np.concatenate([clean, variants])
    threshold = (
        max(threshold_at_far(clean, far), threshold_at_far(pooled, far))
        if clean.size
        else float(fallback)
    )
    calibration = ThresholdCalibration(
        threshold=threshold,
        target_far=far,
        n_clean=int(clean.size),
        needed=math.ceil(1.0 / far - _COUNT_EPS),
        n_variants=int(variants.size),
    )
    if not calibration.supported:
        message = calibration.describe()
        if not clean.size:
            message += f"; no clean scan at all, so the threshold is the fallback {fallback}"
        log.warning("%s", message)
        warnings.warn(message, CalibrationWarning, stacklevel=2)
    return calibration


def detection_rate_at_far(
    clean_scores: ArrayLike, anomalous_scores: ArrayLike, far: float
) -> float:
    """Share of ``anomalous_scores`` strictly above :func:`threshold_at_far`.

    NaN when either group is empty.
    """
    anomalous = np.asarray(anomalous_scores, dtype=np.float64)
    threshold = threshold_at_far(clean_scores, far)
    if anomalous.size == 0 or math.isnan(threshold):
        return math.nan
    return float(np.mean(anomalous > threshold))


def false_alarm_rate_at_detection_rate(
    clean_scores: ArrayLike, anomalous_scores: ArrayLike, detection_rate: float
) -> float:
    """The lowest FAR of any threshold that detects ``detection_rate`` of the anomalous scans.

    To flag ``m = ceil(detection_rate * n)`` anomalous scans with
    ``score > threshold``, the threshold must lie below the ``m``-th highest
    anomalous score ``a_m``; the FAR is then the share of clean scans with
    a score ``>= a_m`` (a clean scan tied with ``a_m`` cannot be separated
    from it). NaN when either group is empty. Raises ValueError unless
    ``0 < detection_rate <= 1``.
    """
    if not 0.0 < detection_rate <= 1.0:
        raise ValueError(f"detection_rate must be in (0, 1], got {detection_rate}")
    clean = np.asarray(clean_scores, dtype=np.float64)
    anomalous = np.sort(np.asarray(anomalous_scores, dtype=np.float64))[::-1]
    if clean.size == 0 or anomalous.size == 0:
        return math.nan
    needed = max(math.ceil(detection_rate * anomalous.size - _COUNT_EPS), 1)
    return float(np.mean(clean >= anomalous[needed - 1]))


def detection_curve(clean_scores: ArrayLike, anomalous_scores: ArrayLike) -> DetectionCurve:
    """DR against FAR at every distinct score, with the strict ``score > threshold`` rule.

    scikit-learn's ``roc_curve`` flags ``score >= threshold``; this curve
    uses scanml's rule, so its points agree with :func:`detection_rate_at_far`.
    """
    clean = np.sort(np.asarray(clean_scores, dtype=np.float64))
    anomalous = np.sort(np.asarray(anomalous_scores, dtype=np.float64))
    distinct = np.unique(np.concatenate([clean, anomalous]))[::-1]
    thresholds = np.concatenate([distinct, [-np.inf]])
    return DetectionCurve(
        false_alarm_rate=_share_above_each(clean, thresholds),
        detection_rate=_share_above_each(anomalous, thresholds),
        thresholds=thresholds,
    )


def confusion_at_threshold(outcomes: Iterable[ScanOutcome], threshold: float) -> Confusion:
    """Scan counts when flagging ``score > threshold``."""
    outcomes = list(outcomes)
    _check_outcomes(outcomes)
    labels = np.array([outcome.label for outcome in outcomes], dtype=np.int64)
    flagged = np.array([outcome.score > threshold for outcome in outcomes], dtype=bool)
    return Confusion(
        true_positives=int(np.sum(flagged & (labels == 1))),
        false_positives=int(np.sum(flagged & (labels == 0))),
        true_negatives=int(np.sum(~flagged & (labels == 0))),
        false_negatives=int(np.sum(~flagged & (labels == 1))),
    )


def _measure(
    group: list[ScanOutcome],
    *,
    fars: Sequence[float],
    detection_rate_for_far: float,
    iou: float,
    box_margin: float,
    per_site: dict[str, ScanMetrics],
) -> ScanMetrics:
    """All metrics of one group of scans (the whole set, or one site)."""
    labels = np.array([outcome.label for outcome in group], dtype=np.int64)
    scores = np.array([outcome.score for outcome in group], dtype=np.float64)
    clean, anomalous = scores[labels == 0], scores[labels == 1]
    thresholds = {far: threshold_at_far(clean, far) for far in fars}
    pointing_hit_rate, n_pointing_scans = _pointing(group, box_margin)
    region_recall, n_true_boxes = _region_recall(group, iou)
    return ScanMetrics(
        n_scans=len(group),
        n_anomalous=int(anomalous.size),
        n_clean=int(clean.size),
        auroc=_if_both_classes(roc_auc_score, labels, scores),
        average_precision=_if_both_classes(average_precision_score, labels, scores),
        dr_at_far={far: detection_rate_at_far(clean, anomalous, far) for far in fars},
        threshold_at_far=thresholds,
        detection_rate_for_far=detection_rate_for_far,
        far_at_dr=false_alarm_rate_at_detection_rate(clean, anomalous, detection_rate_for_far),
        pointing_hit_rate=pointing_hit_rate,
        n_pointing_scans=n_pointing_scans,
        region_recall=region_recall,
        n_true_boxes=n_true_boxes,
        per_site=per_site,
    )


def _check_outcomes(outcomes: list[ScanOutcome]) -> None:
    """Reject labels other than 0/1 and non-finite scores, naming the scan."""
    for outcome in outcomes:
        if outcome.label not in (0, 1):
            raise ValueError(
                f"scan {outcome.scan_id!r}: label must be 0 or 1, got {outcome.label!r}"
            )
        if not math.isfinite(outcome.score):
            raise ValueError(
                f"scan {outcome.scan_id!r}: score must be finite, got {outcome.score!r}"
            )


def _if_both_classes(
    metric: Callable[[np.ndarray, np.ndarray], float], labels: np.ndarray, scores: np.ndarray
) -> float:
    """A scikit-learn ranking metric, or NaN where one class is missing (it would raise or warn)."""
    if np.unique(labels).size < 2:
        return math.nan
    return float(metric(labels, scores))


def _pointing(group: list[ScanOutcome], box_margin: float) -> tuple[float, int]:
    """(hit rate, number of scans it is taken over)."""
    eligible = [o for o in group if o.true_boxes and o.peak_xy is not None]
    hits = sum(
        any(_contains(_enlarged(box, box_margin), outcome.peak_xy) for box in outcome.true_boxes)
        for outcome in eligible
    )
    return _ratio(hits, len(eligible)), len(eligible)


def _region_recall(group: list[ScanOutcome], iou: float) -> tuple[float, int]:
    """(recall, number of true boxes it is taken over)."""
    n_true_boxes = sum(len(outcome.true_boxes) for outcome in group)
    matched = sum(_count_matches(o.true_boxes, o.regions, iou) for o in group)
    return _ratio(matched, n_true_boxes), n_true_boxes


def _count_matches(true_boxes: Sequence[Box], regions: Sequence[Box], min_iou: float) -> int:
    """True boxes matched one-to-one by regions, greedily in order of decreasing IoU."""
    if not true_boxes or not regions:
        return 0
    overlaps = _iou_matrix(
        np.asarray(true_boxes, dtype=np.float64), np.asarray(regions, dtype=np.float64)
    )
    matched = 0
    while overlaps.size and overlaps.max() >= min_iou:
        box_index, region_index = np.unravel_index(np.argmax(overlaps), overlaps.shape)
        overlaps[box_index, :] = -1.0
        overlaps[:, region_index] = -1.0
        matched += 1
    return matched


def _iou_matrix(boxes: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of every ``(x, y, w, h)`` box in ``boxes`` [N, 4] with every one in ``others`` [M, 4].

    torchvision's ``box_iou``; a pair of empty boxes (0 / 0) counts as no overlap.
    """
    overlaps = box_iou(
        box_convert(torch.from_numpy(boxes), "xywh", "xyxy"),
        box_convert(torch.from_numpy(others), "xywh", "xyxy"),
    ).numpy()
    return np.nan_to_num(overlaps, nan=0.0)


def _enlarged(box: Box, margin: float) -> Box:
    """``box`` with width and height grown by ``margin`` (a fraction), about its centre."""
    x, y, w, h = box
    return (x - w * margin / 2, y - h * margin / 2, w * (1 + margin), h * (1 + margin))


def _contains(box: Box, point: tuple[float, float]) -> bool:
    """Whether ``point`` (x, y) lies in ``box``, edges included."""
    x, y, w, h = box
    return x <= point[0] <= x + w and y <= point[1] <= y + h


def _share_above_each(sorted_scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """For each threshold, the share of ``sorted_scores`` strictly above it (NaN if empty)."""
    if sorted_scores.size == 0:
        return np.full(thresholds.shape, np.nan)
    above = sorted_scores.size - np.searchsorted(sorted_scores, thresholds, side="right")
    return above / sorted_scores.size


def _ratio(numerator: int, denominator: int) -> float:
    """``numerator / denominator``, NaN for an empty denominator."""
    return numerator / denominator if denominator else math.nan


def _percent(rate: float) -> str:
    """``0.005`` -> ``"0.5"``, ``0.01`` -> ``"1"``: the rate as a compact percentage."""
    return f"{rate * 100:g}"
