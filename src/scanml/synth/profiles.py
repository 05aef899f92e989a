"""Scanner profiles: what differs between the sites whose scans a model must read.

A model trained at one port is judged on scans from scanners it has never
seen, so every site here differs from the others in everything that a real
fleet differs in: pixel size (never square: the row pitch is the detector's,
the column pitch comes from the linac's pulse rate and the vehicle's speed),
single or dual energy, photon flux (hence noise and penetration), detector
height, residual gain streaks, blur and which way the vehicle drives.

Sizes are chosen for realism *and* for throughput: 1,000 scans must be made
in minutes on two cores, so the column pitch is 6-8 mm and the detector
height 1,000-1,200 rows (4.8-5.0 m), i.e. 1-3 megapixels per channel, the
low end of what real portals deliver (5-25 MP). Models resample to their own
mm/pixel anyway.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from scanml.physics import Energy

__all__ = ["SCANNER_PROFILES", "ScannerProfile", "varied_profile"]


@dataclass(frozen=True)
class ScannerProfile:
    """One site's scanner.

    ``i0`` is the number of photon-equivalent quanta an unattenuated
    detector pixel records per channel: it sets both the noise
    (``sigma_A = 1 / sqrt(I)``) and the penetration, because a pixel is
    saturated once fewer than ``count_floor`` quanta get through
    (``A_max = ln(i0 / count_floor)``).
    """

    name: str
    row_spacing_mm: float
    col_spacing_mm: float
    n_rows: int
    energies_mev: tuple[float, ...]
    i0: tuple[float, ...]
    count_floor: float
    read_noise: float  # electronic noise of a pixel, in quanta
    gain_sigma: float  # spread of the per-row detector gain
    gain_residual: float  # what flat-field calibration leaves of it: the row streaks
    dose_residual: float  # linac pulse-to-pulse variation left after the reference detector
    blur_px: tuple[float, float]  # Gaussian PSF sigma (rows, columns) in pixels
    cab_side: Literal["left", "right"]
    scans_cab: bool  # gantry/portal scanners that also image the tractor's cab
    rail_fraction: float  # share of rail-borne containers at this site
    floor_offset_cm: float  # height of the lowest detector row above the road

    @property
    def channels(self) -> tuple[Energy, ...]:
        """Channel names in file order: high energy first."""
        return ("high", "low")[: len(self.energies_mev)]

    @property
    def height_cm(self) -> float:
        """Vertical coverage of the detector column."""
        return self.n_rows * self.row_spacing_mm / 10.0


SCANNER_PROFILES: Mapping[str, ScannerProfile] = {
    p.name: p
    for p in (
        # A dual-energy drive-through portal: the driver stays in the cab, so
        # the beam starts behind it; fine rows, moderate flux.
        ScannerProfile(
            name="antwerp",
            row_spacing_mm=4.0,
            col_spacing_mm=6.5,
            n_rows=1200,
            energies_mev=(6.0, 4.0),
            i0=(60_000.0, 25_000.0),
            count_floor=4.0,
            read_noise=1.5,
            gain_sigma=0.03,
            gain_residual=0.003,
            dose_residual=0.002,
            blur_px=(0.7, 0.9),
            cab_side="left",
            scans_cab=False,
            rail_fraction=0.0,
            floor_offset_cm=-6.0,
        ),
        # A single-energy gantry: the driver leaves the truck and the whole
        # vehicle is scanned; high flux (low noise) but stronger row streaks
        # and a column pitch set by a slow gantry.
        ScannerProfile(
            name="rotterdam",
            row_spacing_mm=4.8,
            col_spacing_mm=7.0,
            n_rows=1000,
            energies_mev=(6.0,),
            i0=(150_000.0,),
            count_floor=6.0,
            read_noise=2.5,
            gain_sigma=0.05,
            gain_residual=0.006,
            dose_residual=0.004,
            blur_px=(0.6, 1.3),
            cab_side="right",
            scans_cab=True,
            rail_fraction=0.2,
            floor_offset_cm=2.0,
        ),
        # A dual-energy portal over road and rail with an older detector:
        # lower flux (noisier, less penetration), coarse columns, more blur.
        ScannerProfile(
            name="santos",
            row_spacing_mm=4.2,
            col_spacing_mm=8.0,
            n_rows=1150,
            energies_mev=(6.0, 4.0),
            i0=(30_000.0, 12_000.0),
            count_floor=3.0,
            read_noise=1.0,
            gain_sigma=0.04,
            gain_residual=0.008,
            dose_residual=0.003,
            blur_px=(1.0, 0.8),
            cab_side="left",
            scans_cab=False,
            rail_fraction=0.35,
            floor_offset_cm=-12.0,
        ),
    )
}


def varied_profile(profile: ScannerProfile, rng: np.random.Generator) -> ScannerProfile:
    """``profile`` with its acquisition chain drawn around the site's own, for one scan.

    What differs between scanners of one kind, and between a scanner's
    days: photon flux (dose, linac ageing: a factor of 3 either way), the
    detector's blur, how well its row gains are flat-fielded, the column
    pitch (belt or truck speed), the row pitch (detector model) and the
    saturation floor. Training on such scans (and augmenting on top) keeps
    a model from learning one scanner's chain instead of the cargo.
    """
    flux = float(np.exp(rng.uniform(np.log(1 / 3), np.log(3))))
    blur = float(rng.uniform(0.6, 2.0))
    return replace(
        profile,
        i0=tuple(value * flux for value in profile.i0),
        count_floor=profile.count_floor * float(rng.uniform(0.5, 2.0)),
        blur_px=(profile.blur_px[0] * blur, profile.blur_px[1] * blur),
        gain_residual=profile.gain_residual * float(rng.uniform(0.5, 3.0)),
        col_spacing_mm=round(profile.col_spacing_mm * float(rng.uniform(0.8, 1.25)), 3),
        row_spacing_mm=round(profile.row_spacing_mm * float(rng.uniform(0.9, 1.15)), 3),
    )
