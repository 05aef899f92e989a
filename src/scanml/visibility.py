"""How visible a threat is in its scan, measured against the scan's clean twin.

A set that pairs each anomalous scan with a clean twin (the same scene and
acquisition, the same noise, without the threats: the independent
generator's ``twin`` column) says exactly what the threats changed: the
difference of the two. :func:`threat_visibility` sets that change against
the clutter around it, as its contrast-to-clutter ratio (CCR):

- both scans are resampled to square pixels of ``spacing_mm`` (8 mm, the
  default model's grid) in log attenuation, with the resampling the model's
  own preprocessing uses (:mod:`scanml.preprocess`), on the high-energy
  channel (the first where there is none of that name);
- the change ``D = anomalous - twin`` inside the box: its footprint is where
  ``|D|`` exceeds a quarter of its peak, the *change* its mean ``|D|`` there;
- the *clutter* is the standard deviation of the twin's fine structure (the
  twin minus its Gaussian blur at half the footprint's side, at least 16 mm)
  over the box grown by 16 cm on each side;
- CCR = change / clutter: 0 where the threats changed nothing in the box;
  below ~0.5 a threat is fainter than the clutter around it.

The measure needs no model, so it describes the test set itself: the
quality benchmark breaks a model's figures down by it
(:class:`scanml.quality.SetResult` ``by_visibility``), so that a reader can
tell missed visible threats from invisible ones.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage

from scanml.dataset import Box, ScanRecord
from scanml.io import Scan

# One resampling for the model and for this measure: the model's own.
from scanml.preprocess import _resample, _scale_factors, scale_box

__all__ = [
    "VISIBILITY_BINS",
    "VISIBILITY_SPACING_MM",
    "scan_visibility",
    "threat_visibility",
    "visibility_bin",
]

# The grid visibility is measured on: the default model's.
VISIBILITY_SPACING_MM = 8.0
# (label, lower bound included, upper bound excluded) of the bins a report groups scans in.
VISIBILITY_BINS: tuple[tuple[str, float, float], ...] = (
    ("< 0.5", -math.inf, 0.5),
    ("0.5-1", 0.5, 1.0),
    ("1-2", 1.0, 2.0),
    (">= 2", 2.0, math.inf),
)
# Clutter is measured over the box grown by this much on each side (20 pixels at 8 mm).
_MARGIN_MM = 160.0
# The narrowest high-pass: a footprint smaller than this is set against clutter of this scale.
_MIN_SIGMA_MM = 16.0
# A pixel belongs to a threat's footprint where the change exceeds this share of its peak.
_FOOTPRINT_SHARE = 0.25
# Keeps CCR finite over a perfectly flat twin.
_CLUTTER_FLOOR = 1e-6


def threat_visibility(
    anomalous: Scan,
    twin: Scan,
    boxes: Sequence[Box],
    spacing_mm: float = VISIBILITY_SPACING_MM,
) -> list[float]:
    """Each box's contrast-to-clutter ratio (CCR) in ``anomalous`` against its clean ``twin``.

    ``boxes`` are in the anomalous scan's own pixels (COCO ``x, y, w, h``);
    the result has one CCR per box, in their order, 0.0 for a box in which
    the two scans do not differ (or that lies outside the scan). See the
    module docstring for the measure. Raises ValueError when the twin is
    not a twin: another shape or another pixel spacing.
    """
    if anomalous.attenuation.shape[-2:] != twin.attenuation.shape[-2:] or tuple(
        anomalous.spacing_mm
    ) != tuple(twin.spacing_mm):
        raise ValueError(
            f"a twin must have the anomalous scan's pixels: {anomalous.attenuation.shape[-2:]} "
            f"at {anomalous.spacing_mm} mm against {twin.attenuation.shape[-2:]} "
            f"at {twin.spacing_mm} mm"
        )
    scan_grid = _on_grid(anomalous, spacing_mm)
    clean_grid = _on_grid(twin, spacing_mm)
    change = scan_grid - clean_grid
    margin = max(round(_MARGIN_MM / spacing_mm), 1)
    min_sigma = _MIN_SIGMA_MM / spacing_mm
    height, width = change.shape
    ratios = []
    for box in boxes:
        x, y, w, h = scale_box(
            (box.x, box.y, box.w, box.h), anomalous.spacing_mm, (spacing_mm, spacing_mm)
        )
        y0, y1 = max(int(y), 0), min(math.ceil(y + h) + 1, height)
        x0, x1 = max(int(x), 0), min(math.ceil(x + w) + 1, width)
        inside = np.abs(change[y0:y1, x0:x1])
        peak = float(inside.max()) if inside.size else 0.0
        if not peak > 0:
            ratios.append(0.0)
            continue
        footprint = inside > _FOOTPRINT_SHARE * peak
        area = int(footprint.sum())
        mean_change = float(inside[footprint].mean())
        around = clean_grid[
            max(y0 - margin, 0) : min(y1 + margin, height),
            max(x0 - margin, 0) : min(x1 + margin, width),
        ]
        sigma = max(min_sigma, 0.5 * math.sqrt(max(area, 1)))
        fine = around - ndimage.gaussian_filter(around, sigma)
        ratios.append(mean_change / (float(fine.std()) + _CLUTTER_FLOOR))
    return ratios


def scan_visibility(
    loaded: Sequence[tuple[ScanRecord, Scan]],
    spacing_mm: float = VISIBILITY_SPACING_MM,
) -> dict[str, float]:
    """Each anomalous scan's best threat CCR, by scan id, where it has a clean twin at hand.

    A record's ``twin`` (``extras["twin"]``, a manifest column) names its
    clean twin among ``loaded``; the scan's visibility is the largest
    :func:`threat_visibility` over its boxes, what a detector could find
    at best. An anomalous scan without boxes, without a twin in ``loaded``
    (not paired, or unreadable) or whose twin has other pixels gets none.
    """
    clean = {record.scan_id: scan for record, scan in loaded if record.label == 0}
    found = {}
    for record, scan in loaded:
        twin = clean.get(str(record.extras.get("twin") or ""))
        if record.label != 1 or twin is None or not record.boxes:
            continue
        try:
            found[record.scan_id] = max(threat_visibility(scan, twin, record.boxes, spacing_mm))
        except ValueError:
            continue
    return found


def visibility_bin(ccr: float) -> str:
    """The label of the :data:`VISIBILITY_BINS` bin that holds ``ccr``."""
    return next(label for label, low, high in VISIBILITY_BINS if low <= ccr < high)


def _on_grid(scan: Scan, spacing_mm: float) -> np.ndarray:
    """The scan's high-energy (else first) channel in log attenuation, float64 [H', W']."""
    channel = scan.channels.index("high") if "high" in scan.channels else 0
    attenuation = torch.from_numpy(
        np.ascontiguousarray(scan.attenuation[channel : channel + 1], dtype=np.float32)
    )
    resampled = _resample(attenuation, _scale_factors(scan.spacing_mm, spacing_mm))
    return resampled[0].numpy().astype(np.float64)
