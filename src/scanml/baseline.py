"""A classical baseline: a local-contrast (white top-hat) detector.

Every learned figure in the quality report stands beside this floor, scored
on the same scans. It flags what is denser than its surroundings at the
scale of a concealment: the attenuation minus its grey opening by a square
of ``background_m`` (what remains are dense objects smaller than that
square), averaged over ``blob_m`` (thin bars, edges and noise average away,
compact objects stay), on the model's physical grid. The scan score is the
largest such excess, in attenuation units; regions are its connected
components above a threshold calibrated on clean scans.

No learning, no data of a site: what it finds on one simulator it finds on
another for the same reasons, which is what makes it a fair floor for a
domain-shift benchmark.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from scanml.metrics import ScanOutcome, calibrate_threshold
from scanml.predict import Region
from scanml.preprocess import Preprocessing, prepare

__all__ = ["LocalContrastDetector"]


@dataclass
class LocalContrastDetector:
    """``detector.outcome(record, scan)`` -> :class:`~scanml.metrics.ScanOutcome`.

    ``threshold`` (attenuation units) cuts regions and decides ``flagged``;
    :meth:`calibrate` sets it at a false-alarm rate on clean scans.
    """

    spacing_mm: float = 8.0
    background_m: float = 1.2
    blob_m: float = 0.16
    threshold: float = 0.5
    attenuation_scale: float = 12.0

    def contrast(self, scan) -> np.ndarray:
        """Excess attenuation over the local background, float32 [H', W'] on the detector's grid."""
        pre = Preprocessing(
            channels=("high",),
            spacing_mm=self.spacing_mm,
            attenuation_scale=self.attenuation_scale,
        )
        attenuation = prepare(scan, pre)[0] * np.float32(self.attenuation_scale)
        background = _cells(self.background_m, self.spacing_mm)
        opened = ndimage.grey_opening(attenuation, size=(background, background))
        excess = ndimage.uniform_filter(
            attenuation - opened, size=_cells(self.blob_m, self.spacing_mm)
        )
        return excess.astype(np.float32)

    def score(self, scan) -> tuple[float, np.ndarray]:
        excess = self.contrast(scan)
        return float(excess.max()), excess

    def calibrate(self, clean_scans: Sequence, far: float = 0.01) -> float:
        """Set ``threshold`` to flag at most ``far`` of ``clean_scans``; returns it.

        Calibrated as every scanml threshold is (:func:`scanml.metrics.calibrate_threshold`,
        which warns when there are too few clean scans for ``far``); NaN without any.
        """
        clean = [self.score(scan)[0] for scan in clean_scans]
        self.threshold = calibrate_threshold(clean, far, fallback=math.nan).threshold
        return self.threshold

    def outcome(self, record, scan) -> ScanOutcome:
        """Score one scan of a manifest ``record`` the way :mod:`scanml.metrics` needs it."""
        score, excess = self.score(scan)
        scale_rc = (
            scan.spacing_mm[0] / self.spacing_mm,
            scan.spacing_mm[1] / self.spacing_mm,
        )
        row, col = np.unravel_index(int(np.argmax(excess)), excess.shape)
        peak_xy = ((col + 0.5) / scale_rc[1], (row + 0.5) / scale_rc[0])
        return ScanOutcome(
            scan_id=record.scan_id,
            site=record.site,
            label=record.label,
            score=score,
            peak_xy=(float(peak_xy[0]), float(peak_xy[1])),
            regions=[(r.x, r.y, r.w, r.h) for r in self.regions(excess, scale_rc)],
            true_boxes=[(b.x, b.y, b.w, b.h) for b in record.boxes],
        )

    def regions(self, excess: np.ndarray, scale_rc: tuple[float, float]) -> list[Region]:
        """Connected components of the excess above ``threshold``, as boxes in scan pixels."""
        labels, count = ndimage.label(excess > self.threshold)
        if count == 0:
            return []
        peaks = ndimage.maximum(excess, labels, np.arange(1, count + 1))
        regions = [
            Region(
                x=cols.start / scale_rc[1],
                y=rows.start / scale_rc[0],
                w=(cols.stop - cols.start) / scale_rc[1],
                h=(rows.stop - rows.start) / scale_rc[0],
                score=float(peak),
                category="other",
            )
            for (rows, cols), peak in zip(ndimage.find_objects(labels), peaks, strict=True)
        ]
        return sorted(regions, key=lambda region: region.score, reverse=True)


def _cells(metres: float, spacing_mm: float) -> int:
    return max(round(metres * 1000 / spacing_mm), 1)
