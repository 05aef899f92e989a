"""Cross-site evaluation: what a threshold set at one port does at another.

A threshold calibrated at 1 % false alarms on Antwerp's clean scans is not
a 1 % threshold in Santos: another scanner, other cargo, other containers
move the clean scores. :func:`cross_site_table` puts numbers on that for a
set of scored scans: for every site, the false-alarm rate (share of its
clean scans flagged) and detection rate that the model's stored threshold
gives there, and those that a threshold calibrated on the clean scans of
one site (``scanml evaluate --calibrate-on SITE``) gives.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from scanml.metrics import ScanOutcome, threshold_at_far

__all__ = ["CrossSiteRow", "CrossSiteTable", "cross_site_table"]


@dataclass(frozen=True)
class CrossSiteRow:
    """One site's rates under the stored threshold and under the calibration site's."""

    site: str
    n_clean: int
    n_anomalous: int
    far_stored: float
    dr_stored: float
    far_calibrated: float
    dr_calibrated: float


@dataclass(frozen=True)
class CrossSiteTable:
    """Per-site false-alarm and detection rates at two thresholds."""

    calibration_site: str
    target_far: float
    stored_threshold: float
    calibrated_threshold: float
    rows: list[CrossSiteRow]

    def row(self, site: str) -> CrossSiteRow:
        return next(row for row in self.rows if row.site == site)

    def to_dict(self) -> dict[str, Any]:
        return {
            "calibration_site": self.calibration_site,
            "target_far": self.target_far,
            "stored_threshold": self.stored_threshold,
            "calibrated_threshold": self.calibrated_threshold,
            "sites": {row.site: dict(row.__dict__) for row in self.rows},
        }

    def to_markdown(self) -> str:
        site = self.calibration_site
        lines = [
            f"## Cross-site false alarms (threshold calibrated on {site})",
            "",
            f"Stored threshold {self.stored_threshold:.4f}; threshold at {self.target_far:.2%} "
            f"false alarms on {site}'s clean scans {self.calibrated_threshold:.4f}. "
            "FAR: share of a site's clean scans flagged; DR: share of its anomalous scans flagged.",
            "",
            f"| site | clean | anomalous | FAR stored | DR stored | FAR {site} thr | DR {site} thr |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for row in self.rows:
            lines.append(
                f"| {row.site}{' (calibration)' if row.site == site else ''} | {row.n_clean} | "
                f"{row.n_anomalous} | {_pct(row.far_stored)} | {_pct(row.dr_stored)} | "
                f"{_pct(row.far_calibrated)} | {_pct(row.dr_calibrated)} |"
            )
        return "\n".join(lines) + "\n"


def cross_site_table(
    outcomes: Sequence[ScanOutcome],
    calibrate_on: str,
    *,
    target_far: float,
    stored_threshold: float,
) -> CrossSiteTable:
    """Calibrate a threshold at ``target_far`` on ``calibrate_on``'s clean scans; rates per site.

    Raises ValueError when that site has no clean scan among ``outcomes``.
    """
    sites = sorted({o.site for o in outcomes})
    clean_there = [o.score for o in outcomes if o.site == calibrate_on and o.label == 0]
    if not clean_there:
        raise ValueError(
            f"--calibrate-on {calibrate_on!r}: no clean scan of that site in the evaluated data "
            f"(sites: {', '.join(sites) or 'none'})"
        )
    calibrated = threshold_at_far(clean_there, target_far)
    rows = []
    for site in sites:
        scores = np.array([o.score for o in outcomes if o.site == site])
        labels = np.array([o.label for o in outcomes if o.site == site])
        rows.append(
            CrossSiteRow(
                site=site,
                n_clean=int((labels == 0).sum()),
                n_anomalous=int((labels == 1).sum()),
                far_stored=_rate(scores[labels == 0], stored_threshold),
                dr_stored=_rate(scores[labels == 1], stored_threshold),
                far_calibrated=_rate(scores[labels == 0], calibrated),
                dr_calibrated=_rate(scores[labels == 1], calibrated),
            )
        )
    return CrossSiteTable(calibrate_on, target_far, stored_threshold, calibrated, rows)


def _rate(scores: np.ndarray, threshold: float) -> float:
    """Share of ``scores`` flagged (``score > threshold``, as scoring flags); NaN when empty."""
    return float(np.mean(scores > threshold)) if scores.size else float("nan")


def _pct(value: float) -> str:
    return "n/a" if value != value else f"{value:.1%}"
