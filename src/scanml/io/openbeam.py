"""Open-beam (air) normalisation: make air read 0 whatever level the scanner stored it at.

Attenuation is ``-ln(I / I0)``, and a file gives ``I`` only up to the
scanner's ``I0``. Formats promise that air is stored at full scale, but
real systems do not keep the promise: VACIS-like portals store the open
beam near 80 % of 65535, and where the beam is not flat-fielded it is a few
per cent brighter in the middle of the detector column than at its ends.
Read naively, every pixel is then offset by ``-ln(0.8) = 0.22`` (one row
more than another), which a model trained at full scale sees as cargo.

Working in attenuation, the correction is a subtraction per detector row:
``A := A - A_air(row)``. ``A_air`` is either given (a profile's level) or
estimated from the scan itself. A container scan begins and ends in air
(the portal starts before the vehicle arrives and stops after it leaves),
so the columns where nearly every row reads at the image's lowest
attenuation are air columns; the median over them, per row, is that row's
air level, which also follows a non-flat beam profile. Where no such
columns exist, rows that are air across the whole scan (above the
container) give one level for all rows. Where neither exists, nothing is
changed and the caller says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.ndimage import median_filter

from scanml.profiles import OpenBeam

# Air pixels lie within this much attenuation of the image's lowest level:
# noise at air (sigma ~ 0.01-0.03) plus a beam profile of up to ~ +-7 %.
AIR_TOLERANCE = 0.15
# Share of a column's (row's) pixels that must be air for it to count as air.
AIR_SHARE = 0.9
# Air columns needed for a per-row estimate (a few cm of open beam).
MIN_AIR_COLUMNS = 4
# Below this air level everywhere (air above 97 % of full scale) the file
# keeps its promise and nothing is changed: what is left is noise and the
# row-gain residue of a flat-fielded detector (up to ~1.5 % in the simulated
# sites), which a model must learn to ignore anyway.
NEGLIGIBLE_LEVEL = 0.03
# An open beam below 30 % of full scale is no open beam: a stated LIN
# relationship (or its sign) is then more likely wrong than the scanner.
MAX_AIR_LEVEL = float(-np.log(0.3))
# Columns looked at per row (every k-th): plenty for a median, and the estimate
# then costs a fraction of one pass over a 6000-column scan.
MAX_SAMPLED_COLUMNS = 512


@dataclass(frozen=True)
class OpenBeamResult:
    """What was done, for ``Scan.meta["open_beam"]``, and whether anything was found."""

    found: bool
    record: dict[str, Any]


def normalise_open_beam(attenuation: np.ndarray, open_beam: OpenBeam) -> OpenBeamResult:
    """Subtract the air level per channel and row from ``attenuation`` [C, H, W], in place."""
    if open_beam.method == "full_scale":
        return OpenBeamResult(True, {"method": "full_scale"})
    if open_beam.method == "level":
        level = float(-np.log(open_beam.level))  # type: ignore[arg-type]
        attenuation -= np.float32(level)
        return OpenBeamResult(
            True, {"method": "level", "air_transmission": open_beam.level, "air_attenuation": level}
        )
    levels = [_air_levels(channel) for channel in attenuation]
    if any(level is None for level, _ in levels):
        return OpenBeamResult(
            False, {"method": "estimate", "found": False, "note": "no open-beam region found"}
        )
    record: dict[str, Any] = {"method": "estimate", "found": True, "applied": False, "channels": []}
    for channel, (level, source) in zip(attenuation, levels, strict=True):
        assert level is not None
        lowest, highest = float(level.min()), float(level.max())
        record["channels"].append(
            {
                "source": source,
                "air_transmission_min": float(np.exp(-highest)),
                "air_transmission_max": float(np.exp(-lowest)),
            }
        )
        if highest > MAX_AIR_LEVEL:
            record["found"] = False
            record["note"] = (
                f"the brightest region reads at {np.exp(-highest):.0%} of full scale: no open beam"
            )
            return OpenBeamResult(False, record)
        if max(abs(lowest), abs(highest)) >= NEGLIGIBLE_LEVEL:
            channel -= level[:, np.newaxis].astype(np.float32)
            record["applied"] = True
    return OpenBeamResult(True, record)


def _air_levels(channel: np.ndarray) -> tuple[np.ndarray | None, str]:
    """Per-row air attenuation [H] and where it came from, or None when there is no air."""
    step = max(1, channel.shape[1] // MAX_SAMPLED_COLUMNS)
    sampled = channel[:, ::step]
    floor = float(np.percentile(sampled, 1))
    is_air = sampled <= floor + AIR_TOLERANCE
    air_columns = np.flatnonzero(is_air.mean(axis=0) >= AIR_SHARE)
    if air_columns.size >= MIN_AIR_COLUMNS:
        # An air column may cross a chassis, a wheel or a drawbar in a few rows (the
        # columns in front of and behind a container on a trailer): in a row where
        # most air columns do, their median is the chassis. Each row's level is the
        # median of the pixels that are air there; a row with too few takes its
        # neighbours' (interpolated).
        air = is_air[:, air_columns]
        usable = air.sum(axis=1) >= MIN_AIR_COLUMNS
        if usable.any():
            values = np.where(air, sampled[:, air_columns], np.nan)
            rows = np.arange(sampled.shape[0])
            per_row = np.interp(rows, rows[usable], np.nanmedian(values[usable], axis=1))
            size = min(5, per_row.size)
            return median_filter(per_row, size=size, mode="nearest"), "air columns"
    air_rows = np.flatnonzero(is_air.mean(axis=1) >= AIR_SHARE)
    if air_rows.size:
        level = float(np.median(sampled[air_rows]))
        return np.full(channel.shape[0], level, dtype=np.float64), "air rows (one level)"
    return None, "none"
