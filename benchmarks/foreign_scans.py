"""A foreign container-scan generator: a domain-shift test set scanml owns.

Written independently of ``scanml.synth`` and ``scanml.io`` (own container
models, cargo, threats, acquisition chain and DICOM writers; numpy, scipy and
pydicom only), so that a model trained on scanml's simulator can be measured
on scans that look like another simulator's and another vendor's. Used only
to measure, never as training data. See ``benchmarks/FOREIGN.md``.

Physics, in brief: every object is painted as an *areal density* (g/cm^2
along the beam, which crosses the container's ~2.4 m width) into one map per
material class (organic, mineral/light metal, iron); the high-energy
attenuation is ``A = sum_m mu_m * areal_m`` (Beer-Lambert). The acquisition
chain then turns ``exp(-A)`` into detector quanta (beam profile, linac dose
jitter, scatter glow, PSF, photon noise, row gains, dark offset) and each
fictional vendor stores them in its own DICOM convention.

Run: ``python benchmarks/foreign_scans.py --out DIR --n-scans 200 --seed 0``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
    generate_uid,
)
from scipy import ndimage

__all__ = ["CATEGORIES", "WRITERS", "generate_foreign_dataset", "main", "render_scan"]

# ---------------------------------------------------------------------------
# Materials: mass attenuation coefficients (cm^2/g) at this generator's two
# effective energies (a hardened 6 MeV and 4 MeV linac spectrum). Own table,
# rounded from the shape of the NIST XCOM curves between 1.5 and 3 MeV.
# ---------------------------------------------------------------------------
ORG, MIN, FE = 0, 1, 2  # organic (C/H/O/N, rubber, wood), mineral/Al/glass, iron/steel/copper
MU_HIGH = np.array([0.0452, 0.0412, 0.0398], dtype=np.float32)
MU_LOW = np.array([0.0561, 0.0497, 0.0456], dtype=np.float32)
STEEL = 7.85
ALU = 2.70
WOOD = 0.62
RUBBER = 1.15
GLASS = 2.5

DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
DICOS_DX = "1.2.840.10008.5.1.4.1.1.501.2.1"
CATEGORIES = ["drugs", "weapon", "cigarettes", "other"]


@dataclass(frozen=True)
class Writer:
    """One fictional vendor: detector, acquisition chain and file convention."""

    site: str
    manufacturer: str
    model: str
    relationship: str  # LIN or LOG
    sign: int  # PixelIntensityRelationshipSign
    photometric: str
    bits_stored: int
    rle: bool
    sop_class: str
    spacing_tags: tuple[str, ...]
    transfer_uncompressed: str
    rows: int  # detector elements (fixed per vendor)
    row_pitch_mm: float
    z_bottom_m: float  # height of the lowest detector element above ground
    col_mm: tuple[float, float]  # column pitch range (belt/truck speed)
    open_level: tuple[float, float]  # LIN: open beam as a fraction of full scale
    profile_droop: tuple[float, float]  # residual beam-profile droop at the detector ends
    gain_residual: float  # per-row gain error left after calibration
    dose_residual: float  # per-column linac dose error left after the monitor correction
    i0: tuple[float, float]  # quanta per pixel in the open beam
    psf_sigma: tuple[float, float]  # (rows, columns) Gaussian PSF in pixels
    glow: float  # fraction of the signal scattered into a wide halo
    dark_counts: float  # stored-unit floor of an impenetrable pixel (LIN) or quanta (LOG)
    log_max: float = 0.0  # LOG: attenuation at the top of the stored range
    log_intercept: float = 0.0  # LOG: RescaleIntercept (stores slightly negative A)
    rescale_lin: tuple[float, float] | None = None  # LIN: (slope, intercept) written


WRITERS: dict[str, Writer] = {
    w.site: w
    for w in (
        Writer(
            site="vendorA-lin",
            manufacturer="Aurora Inspection Systems",
            model="AIS-6M Portal",
            relationship="LIN",
            sign=1,
            photometric="MONOCHROME2",
            bits_stored=16,
            rle=False,
            sop_class=DX_FOR_PRESENTATION,
            spacing_tags=("PixelSpacing", "ImagerPixelSpacing"),
            transfer_uncompressed=ExplicitVRLittleEndian,
            rows=1024,
            row_pitch_mm=4.6,
            z_bottom_m=0.12,
            col_mm=(5.3, 6.4),
            open_level=(0.76, 0.9),
            profile_droop=(0.03, 0.07),  # not flat-fielded: brighter mid-column
            gain_residual=0.006,
            dose_residual=0.003,
            i0=(8e4, 3e5),
            psf_sigma=(0.9, 1.1),
            glow=0.012,
            dark_counts=4.0,
        ),
        Writer(
            site="vendorB-log",
            manufacturer="Borealis Scan GmbH",
            model="BSG DualView 4/6",
            relationship="LOG",
            sign=-1,
            photometric="MONOCHROME1",
            bits_stored=12,
            rle=True,
            sop_class=DICOS_DX,
            spacing_tags=("ImagerPixelSpacing",),
            transfer_uncompressed=ExplicitVRLittleEndian,
            rows=800,
            row_pitch_mm=5.9,
            z_bottom_m=0.05,
            col_mm=(4.0, 5.0),
            open_level=(1.0, 1.0),
            profile_droop=(0.0, 0.006),  # flat-fielded
            gain_residual=0.003,
            dose_residual=0.002,
            i0=(2e4, 1e5),
            psf_sigma=(1.1, 0.7),
            glow=0.02,
            dark_counts=3.0,
            log_max=13.0,
            log_intercept=-0.25,
        ),
        Writer(
            site="vendorC-rle",
            manufacturer="Cormorant Security",
            model="CS-Mobile 4",
            relationship="LIN",
            sign=-1,
            photometric="MONOCHROME1",
            bits_stored=14,
            rle=True,
            sop_class=DX_FOR_PRESENTATION,
            spacing_tags=("ImagerPixelSpacing",),
            transfer_uncompressed=ExplicitVRLittleEndian,
            rows=896,
            row_pitch_mm=5.2,
            z_bottom_m=0.0,
            col_mm=(4.4, 5.8),
            open_level=(0.86, 0.95),
            profile_droop=(0.01, 0.03),
            gain_residual=0.012,  # streaky
            dose_residual=0.004,
            i0=(3e5, 1e6),
            psf_sigma=(0.7, 0.9),
            glow=0.008,
            dark_counts=6.0,
            rescale_lin=(1.0, 0.0),
        ),
        Writer(
            site="vendorD-log16",
            manufacturer="Dunmore Radiographics",
            model="DR-Gantry 9",
            relationship="LOG",
            sign=1,
            photometric="MONOCHROME2",
            bits_stored=16,
            rle=False,
            sop_class=DICOS_DX,
            spacing_tags=("PixelSpacing",),
            transfer_uncompressed=ImplicitVRLittleEndian,
            rows=736,
            row_pitch_mm=6.4,
            z_bottom_m=0.1,
            col_mm=(5.0, 6.5),
            open_level=(1.0, 1.0),
            profile_droop=(0.015, 0.04),
            gain_residual=0.005,
            dose_residual=0.003,
            i0=(1e4, 6e4),
            psf_sigma=(0.8, 1.2),
            glow=0.015,
            dark_counts=2.0,
            log_max=16.0,
        ),
    )
}


# ---------------------------------------------------------------------------
# The canvas: areal density maps on the pixel grid, painted in metres.
# ---------------------------------------------------------------------------
def _span(a: float, b: float, n: int) -> tuple[int, int, np.ndarray] | None:
    """Pixels overlapped by [a, b) in pixel units, with the covered fraction of each."""
    if b <= a:
        return None
    i0 = max(math.floor(a), 0)
    i1 = min(math.ceil(b), n)
    if i1 <= i0:
        return None
    idx = np.arange(i0, i1, dtype=np.float32)
    w = np.clip(np.minimum(idx + 1, b) - np.maximum(idx, a), 0.0, 1.0).astype(np.float32)
    return i0, i1, w


class Canvas:
    """Areal density (g/cm^2 along the beam) per material on the scan's pixel grid."""

    def __init__(self, rows: int, cols: int, row_m: float, col_m: float, z_top: float):
        self.rows, self.cols = rows, cols
        self.row_m, self.col_m, self.z_top = row_m, col_m, z_top
        self.maps = np.zeros((3, rows, cols), dtype=np.float32)
        self.tex: np.ndarray | None = None  # smooth random field, ~N(0, 1)
        self.fine: np.ndarray | None = None  # grain of a few pixels, ~N(0, 1)

    def c(self, x: float) -> float:
        return x / self.col_m

    def r(self, z: float) -> float:
        return (self.z_top - z) / self.row_m

    def window(self, x0: float, x1: float, z0: float, z1: float):
        """Pixel window of a metric rectangle, with pixel-centre coordinates and coverage."""
        sc = _span(self.c(x0), self.c(x1), self.cols)
        sr = _span(self.r(z1), self.r(z0), self.rows)
        if sc is None or sr is None:
            return None
        c0, c1, wc = sc
        r0, r1, wr = sr
        xs = ((np.arange(c0, c1, dtype=np.float32) + 0.5) * self.col_m)[None, :]
        zs = (self.z_top - (np.arange(r0, r1, dtype=np.float32) + 0.5) * self.row_m)[:, None]
        return (slice(r0, r1), slice(c0, c1)), xs, zs, wr[:, None] * wc[None, :]

    def rect(self, m: int, x0: float, x1: float, z0: float, z1: float, areal: float) -> None:
        win = self.window(x0, x1, z0, z1)
        if win is not None:
            sl, _, _, cov = win
            self.maps[m][sl] += np.float32(areal) * cov

    def paint(
        self,
        m: int,
        x0: float,
        x1: float,
        z0: float,
        z1: float,
        fn: Callable[[np.ndarray, np.ndarray], np.ndarray],
    ) -> np.ndarray | None:
        """Add ``fn(x, z)`` (g/cm^2, metres at pixel centres) inside a rectangle; returns what was added."""
        win = self.window(x0, x1, z0, z1)
        if win is None:
            return None
        sl, xs, zs, cov = win
        add = np.broadcast_to(fn(xs, zs), cov.shape).astype(np.float32) * cov
        self.maps[m][sl] += add
        return add

    def texture(self, x0: float, x1: float, z0: float, z1: float) -> Callable:
        """A function giving the canvas texture at pixel centres (for cargo variation)."""
        tex, fine = self.tex, self.fine

        def sample(xs: np.ndarray, zs: np.ndarray) -> np.ndarray:
            cols = np.clip((xs / self.col_m).astype(np.int64), 0, self.cols - 1)
            rows = np.clip(((self.z_top - zs) / self.row_m).astype(np.int64), 0, self.rows - 1)
            return tex[rows, cols] + 0.7 * fine[rows, cols]

        return sample

    def rotated_rect(
        self,
        m: int,
        cx: float,
        cz: float,
        length: float,
        height: float,
        angle: float,
        areal: float | Callable[[np.ndarray, np.ndarray], np.ndarray],
    ) -> np.ndarray | None:
        """A rectangle rotated by ``angle`` (radians); ``areal`` may depend on local (u, v)."""
        ca, sa = math.cos(angle), math.sin(angle)
        hx = 0.5 * (abs(length * ca) + abs(height * sa)) + self.col_m
        hz = 0.5 * (abs(length * sa) + abs(height * ca)) + self.row_m
        px = 0.5 * min(self.col_m, self.row_m)

        def fn(xs, zs):
            dx, dz = xs - cx, zs - cz
            u = dx * ca + dz * sa
            v = -dx * sa + dz * ca
            inside = np.clip((0.5 * length - np.abs(u)) / px + 0.5, 0, 1) * np.clip(
                (0.5 * height - np.abs(v)) / px + 0.5, 0, 1
            )
            value = areal(u, v) if callable(areal) else areal
            return inside * value

        return self.paint(m, cx - hx, cx + hx, cz - hz, cz + hz, fn)


def _chord(d: np.ndarray, r: float) -> np.ndarray:
    """Length of a straight line through a disc of radius r at distance d from the centre."""
    return 2.0 * np.sqrt(np.maximum(r * r - d * d, 0.0))


def _ring_chord(d: np.ndarray, r_out: float, r_in: float) -> np.ndarray:
    return _chord(d, r_out) - _chord(d, r_in)


def _disc(canvas: Canvas, m: int, cx: float, cz: float, r_out: float, r_in: float, areal: float):
    """A ring (annulus) seen face-on: ``areal`` g/cm^2 where r_in <= distance <= r_out."""
    soft = 0.7 * min(canvas.col_m, canvas.row_m)

    def fn(xs, zs):
        d = np.sqrt((xs - cx) ** 2 + (zs - cz) ** 2)
        outer = np.clip((r_out - d) / soft + 0.5, 0, 1)
        inner = np.clip((d - r_in) / soft + 0.5, 0, 1) if r_in > 0 else 1.0
        return areal * outer * inner

    canvas.paint(m, cx - r_out, cx + r_out, cz - r_out, cz + r_out, fn)


# ---------------------------------------------------------------------------
# Scene description and slots where a threat can hide.
# ---------------------------------------------------------------------------
@dataclass
class Slot:
    """A region where contraband can be concealed, and what it would displace there."""

    kind: str  # cargo, cartons, door, floor, wall, reefer, cab, free
    x0: float
    x1: float
    z0: float
    z1: float
    host_m: int = ORG
    host_rho: float = 0.0  # bulk density of what fills the path at that place (g/cm^3)
    depth_cm: float = 230.0  # free path along the beam available to the object
    cells: list[tuple[float, float, float, float]] = field(default_factory=list)  # carton cells


@dataclass
class Scene:
    canvas: Canvas
    slots: list[Slot]
    description: dict[str, Any]


# ---------------------------------------------------------------------------
# Vehicle: trailer chassis, axles, wheels and (sometimes) the tractor cab.
# ---------------------------------------------------------------------------
def _wheel(cv: Canvas, cx: float, r_tyre: float, dual: bool, rng: np.random.Generator) -> None:
    """A wheel set on both sides of an axle, seen along the axle (the beam)."""
    cz = r_tyre
    n = (4 if dual else 2) * rng.uniform(0.9, 1.0)  # tyres crossed by the beam
    width = rng.uniform(28.0, 38.0) if not dual else rng.uniform(26.0, 31.0)
    r_rim = rng.uniform(0.52, 0.58) * r_tyre
    # Sidewalls (two per tyre) and the tread crown across the tyre's width.
    _disc(cv, ORG, cx, cz, r_tyre, r_rim, n * 2 * 1.6 * RUBBER)
    _disc(cv, ORG, cx, cz, r_tyre, r_tyre - 0.035, n * width * RUBBER * 0.55)
    _disc(cv, FE, cx, cz, r_tyre - 0.012, r_tyre - 0.03, n * width * 0.06 * STEEL)  # steel belt
    _disc(cv, FE, cx, cz, r_rim + 0.02, r_rim - 0.01, n * 6.0 * STEEL)  # beads and rim flange
    _disc(cv, FE, cx, cz, r_rim, 0.0, 2 * 1.2 * STEEL)  # wheel discs
    _disc(cv, FE, cx, cz, 0.21, 0.19, 2 * 20.0 * 7.2)  # brake drums (cast iron shell)
    _disc(cv, FE, cx, cz, 0.085, 0.0, 2 * 25.0 * STEEL * 0.6)  # hubs
    for k in range(10):  # wheel nuts
        a = 2 * math.pi * k / 10
        _disc(cv, FE, cx + 0.14 * math.cos(a), cz + 0.14 * math.sin(a), 0.014, 0.0, 4 * 4.0 * STEEL)
    # Axle tube along the beam: a ring of steel 2.4 m long.
    _disc(cv, FE, cx, cz, 0.065, 0.05, 240.0 * STEEL * 0.5)


def _trailer(
    cv: Canvas, x0: float, x1: float, deck: float, rng: np.random.Generator, front_left: bool
) -> dict[str, Any]:
    """A skeletal trailer under [x0, x1]; the kingpin end is the front."""
    x1 - x0
    beam_h = rng.uniform(0.28, 0.42)
    flange = rng.uniform(0.012, 0.016)
    web = rng.uniform(0.006, 0.009)
    fl_w = rng.uniform(12.0, 16.0)  # flange width along the beam, cm
    # Two main I-beams along x (webs face the beam, flanges lie along it).
    cv.rect(FE, x0, x1, deck - flange, deck, 2 * fl_w * STEEL)
    cv.rect(FE, x0 + 0.3, x1 - 0.2, deck - beam_h, deck - beam_h + flange, 2 * fl_w * STEEL)
    cv.rect(FE, x0 + 0.3, x1 - 0.2, deck - beam_h + flange, deck - flange, 2 * web * 100 * STEEL)
    # Cross-members and bolsters at regular spacing (tubes along the beam).
    pitch = rng.uniform(0.9, 1.4)
    x = x0 + 0.2
    while x < x1 - 0.1:
        cv.rect(FE, x, x + 0.006, deck - 0.16, deck - flange, 240 * STEEL * 0.9)
        cv.rect(FE, x + 0.1, x + 0.106, deck - 0.16, deck - flange, 240 * STEEL * 0.9)
        cv.rect(FE, x, x + 0.106, deck - 0.166, deck - 0.16, 240 * STEEL * 0.9)
        x += pitch
    # Axle group at the rear: tandem or tri-axle, own wheel sizes.
    n_axles = int(rng.choice([2, 3], p=[0.45, 0.55]))
    r_tyre = rng.uniform(0.44, 0.53)
    spread = rng.uniform(1.25, 1.42)
    dual = bool(rng.random() < 0.45)
    rear = (
        x0 + 1.1 + rng.uniform(0.0, 0.5) if front_left is False else x1 - 1.1 - rng.uniform(0, 0.5)
    )
    direction = 1 if front_left is False else -1
    axles = [rear + direction * k * spread for k in range(n_axles)]
    for ax in axles:
        _wheel(cv, ax, r_tyre, dual, rng)
        # Suspension: air spring (rubber bellows) and trailing arm.
        cv.rect(ORG, ax + 0.25, ax + 0.5, r_tyre + 0.05, deck - beam_h, 2 * 4.0 * RUBBER)
        cv.rect(FE, ax - 0.55, ax + 0.55, r_tyre - 0.05, r_tyre + 0.05, 2 * 3.0 * STEEL)
        # Mudguard (a thin plastic shell over the wheel, mostly along the beam at its top).
        cv.rect(
            ORG, ax - r_tyre - 0.05, ax + r_tyre + 0.05, r_tyre * 2 + 0.04, r_tyre * 2 + 0.05, 60
        )
    # Landing legs near the front.
    front = x1 - 2.4 if front_left is False else x0 + 2.4
    for dx in (0.0,):
        cv.rect(FE, front + dx, front + dx + 0.09, 0.25, deck - beam_h, 2 * 2 * 0.6 * STEEL)
        cv.rect(FE, front - 0.08, front + 0.17, 0.2, 0.25, 2 * 20 * STEEL)
    # Rear under-run bar.
    xr = x0 if front_left is False else x1 - 0.12
    cv.rect(FE, xr, xr + 0.12, 0.45, 0.57, 240 * STEEL * 0.05)
    return {"axles": n_axles, "tyre_radius_m": round(r_tyre, 3), "dual": dual}


def _cab(cv: Canvas, x0: float, x1: float, rng: np.random.Generator, facing_left: bool) -> None:
    """A cab-over tractor between x0 and x1 (front of the cab at x0 if facing_left)."""
    length = x1 - x0
    floor = rng.uniform(1.25, 1.45)
    roof = rng.uniform(3.3, 3.9)
    sheet = rng.uniform(0.08, 0.12)  # cm
    cab_len = rng.uniform(1.9, 2.3)
    f = (lambda d: x0 + d) if facing_left else (lambda d: x1 - d)

    def rect(m, d0, d1, z0, z1, areal):
        a, b = sorted((f(d0), f(d1)))
        cv.rect(m, a, b, z0, z1, areal)

    # Cab shell: planes along the beam (roof, floor, front and back walls) are dark lines.
    rect(FE, 0.05, cab_len, roof - 0.004, roof, 230 * sheet / 0.4 * STEEL * 0.5)
    rect(FE, 0.05, cab_len, floor, floor + 0.004, 230 * sheet / 0.4 * STEEL)
    rect(FE, cab_len - 0.004, cab_len, floor, roof, 230 * sheet / 0.4 * STEEL)
    rect(FE, 0.05, 0.054, floor, roof - 0.9, 230 * sheet / 0.4 * STEEL)
    rect(FE, 0.05, cab_len, floor, roof, 2 * sheet * STEEL)  # side doors and panels

    # Windscreen: an inclined glass plane along the beam.
    def windscreen(xs, zs):
        d = np.abs(xs - f(0.05)) - (zs - (roof - 0.9)) * 0.25
        return np.where(np.abs(d) < 0.004, 230 * 0.6 * GLASS * 0.6, 0.0)

    a, b = sorted((f(0.0), f(0.4)))
    cv.paint(MIN, a, b, roof - 0.9, roof - 0.05, windscreen)
    # Seats, dashboard, bunk.
    rect(ORG, 0.35, 0.9, floor + 0.35, floor + 0.9, 2 * 50 * 0.08)
    rect(FE, 0.4, 0.85, floor + 0.3, floor + 0.4, 2 * 1.0 * STEEL)
    rect(ORG, 0.1, 0.4, roof - 1.3, roof - 0.9, 220 * 0.12)
    rect(ORG, cab_len - 0.8, cab_len - 0.05, floor + 0.6, floor + 0.75, 200 * 0.1)
    # Steering wheel (a steel-cored rim seen almost edge-on) and its column.
    tilt = 1.1 if facing_left else -1.1
    cv.rotated_rect(FE, f(0.55), floor + 0.95, 0.42, 0.035, tilt, 4 * 0.6 * STEEL)
    cv.rotated_rect(FE, f(0.4), floor + 0.7, 0.5, 0.04, tilt - 0.4, 2 * 1.5 * STEEL)
    # Batteries (lead plates) and air tanks on the frame behind the cab.
    rect(FE, cab_len + 0.15, cab_len + 0.65, 0.55, 0.85, 50 * 1.6)
    for zt in (0.62, 0.95):
        a, b = sorted((f(cab_len + 0.75), f(cab_len + 1.55)))
        cv.paint(
            FE,
            a,
            b,
            zt - 0.12,
            zt + 0.12,
            lambda xs, zs, zt=zt: 0 * xs + _ring_chord(zs - zt, 0.12, 0.116) * 100 * STEEL * 0.5,
        )
    # Engine block under the cab and gearbox behind it.
    eng_z = floor - 0.05
    rect(FE, 0.3, 1.25, eng_z - 0.85, eng_z, 70 * 7.2 * rng.uniform(0.25, 0.35))
    rect(FE, 0.4, 1.15, eng_z - 0.75, eng_z - 0.1, 50 * 7.2 * 0.2)
    rect(MIN, 1.25, 1.85, eng_z - 0.7, eng_z - 0.25, 45 * ALU * 0.35)
    rect(MIN, -0.05, 0.05, 0.6, 1.3, 200 * ALU * 0.15)  # radiator
    # Frame rails along x, fifth wheel plate, fuel tank, air tanks, exhaust.
    rect(FE, 0.0, length, 0.85, 0.88, 2 * 9 * STEEL)
    rect(FE, 0.0, length, 1.12, 1.15, 2 * 9 * STEEL)
    rect(FE, 0.2, length, 0.88, 1.12, 2 * 0.8 * STEEL)
    fw = length - rng.uniform(0.9, 1.3)
    rect(FE, fw - 0.45, fw + 0.45, 1.15, 1.2, 90 * STEEL * 0.5)
    tank_c = cab_len + 0.1 + rng.uniform(0.0, 0.3)
    r_tank = rng.uniform(0.28, 0.34)
    fill = rng.uniform(0.3, 0.95)
    a, b = sorted((f(tank_c), f(tank_c + 1.0)))
    zc = 0.75

    def tank(xs, zs):
        ch = _chord(zs - zc, r_tank)
        liquid = np.where(zs < zc - r_tank + 2 * r_tank * fill, ch * 100 * 0.84, 0.0)
        return liquid + 0 * xs

    cv.paint(ORG, a, b, zc - r_tank, zc + r_tank, tank)
    cv.paint(
        MIN,
        a,
        b,
        zc - r_tank,
        zc + r_tank,
        lambda xs, zs: 0 * xs + _ring_chord(zs - zc, r_tank, r_tank - 0.004) * 100 * ALU,
    )
    rect(
        FE, cab_len + 0.05, cab_len + 0.15, roof - 1.2, roof + 0.25, 2 * 0.3 * STEEL
    )  # exhaust stack
    # Steer axle (single tyres) and drive axle(s).
    r_f = rng.uniform(0.48, 0.53)
    _wheel(cv, f(0.55), r_f, False, rng)
    n_drive = int(rng.choice([1, 2]))
    for k in range(n_drive):
        _wheel(cv, f(fw - 0.1 + (k - 0.5 * (n_drive - 1)) * 1.35), r_f, True, rng)


# ---------------------------------------------------------------------------
# Containers: own structural models.
# ---------------------------------------------------------------------------
@dataclass
class Box3:
    """A container's interior in projection, where cargo goes."""

    x0: float
    x1: float
    z0: float  # top of the floor
    z1: float  # underside of the roof
    width_cm: float  # interior width along the beam
    door_at_left: bool
    kind: str


def _corrugation(x: np.ndarray, pitch: float, flat: float, angle: float) -> np.ndarray:
    """Path factor through a trapezoidal sheet crossed perpendicularly: 1 on flats, 1/cos on slopes."""
    phase = np.mod(x, pitch) / pitch
    slope_frac = (1.0 - 2 * flat) / 2
    on_slope = ((phase > flat) & (phase < flat + slope_frac)) | (phase > 1 - slope_frac)
    return np.where(on_slope, 1.0 / math.cos(angle), 1.0)


def _container(
    cv: Canvas,
    x0: float,
    length: float,
    z0: float,
    kind: str,
    height: float,
    door_at_left: bool,
    rng: np.random.Generator,
) -> Box3:
    """Paint a container's structure; return the interior for cargo."""
    x1 = x0 + length
    top = z0 + height
    beam_cm = 243.8
    t_wall = rng.uniform(0.16, 0.2)  # cm
    floor_t = rng.uniform(0.026, 0.030)
    sill = rng.uniform(0.14, 0.17)  # bottom side rail height
    floor_top = z0 + sill
    roof_drop = 0.0 if kind in ("opentop", "flatrack", "tank") else rng.uniform(0.02, 0.035)
    inner_w = 229.0 if kind == "reefer" else 235.0
    post_w = rng.uniform(0.13, 0.18)
    door_x = x0 if door_at_left else x1  # the door end
    front_x = x1 if door_at_left else x0

    if kind == "tank":
        return _tank_container(cv, x0, x1, z0, top, door_at_left, rng)

    # Corner castings and posts at both ends (beam crosses a post on each side).
    for xe, sgn in ((x0, 1), (x1, -1)):
        a, b = sorted((xe, xe + sgn * post_w))
        cv.rect(FE, a, b, z0, top, 2 * 0.6 * STEEL)
        e0, e1 = sorted((xe, xe + sgn * 0.007))
        cv.rect(FE, e0, e1, z0, top, 2 * 12 * STEEL)
        e0, e1 = sorted((xe + sgn * (post_w - 0.006), xe + sgn * post_w))
        cv.rect(FE, e0, e1, z0, top, 2 * 10 * STEEL)
        for zc in (z0, top - 0.118):
            a, b = sorted((xe, xe + sgn * 0.178))
            cv.rect(FE, a, b, zc, zc + 0.118, 2 * 5.5 * STEEL)
    # Bottom side rails (C-sections along x) and the floor: plywood plane along the beam.
    cv.rect(FE, x0, x1, z0, z0 + sill, 2 * 0.45 * STEEL)
    cv.rect(FE, x0, x1, z0, z0 + 0.0045, 2 * 5.0 * STEEL)
    cv.rect(FE, x0, x1, z0 + sill - 0.0045, z0 + sill, 2 * 5.0 * STEEL)
    if kind == "reefer":
        # Aluminium T-bar floor: T-sections along x crossed by the beam.
        cv.rect(MIN, x0 + 0.05, x1 - 0.05, floor_top - 0.06, floor_top, 90 * 0.3 * ALU)
        cv.rect(MIN, x0 + 0.05, x1 - 0.05, floor_top - 0.004, floor_top, inner_w * 0.55 * ALU)
        cv.rect(ORG, x0 + 0.05, x1 - 0.05, z0 + 0.02, floor_top - 0.06, inner_w * 0.04 * 0.7)
    else:
        cv.rect(ORG, x0 + 0.02, x1 - 0.02, floor_top - floor_t, floor_top, inner_w * WOOD)
    # Floor cross-members: C-sections along the beam, own pitch.
    pitch = rng.uniform(0.27, 0.36)
    cm_h = sill - floor_t - 0.01
    x = x0 + 0.15 + rng.uniform(0, pitch)
    tunnel = (x0 + 0.3, x0 + 3.3) if (length > 10 and rng.random() < 0.6) else None
    if tunnel and not door_at_left:
        tunnel = (x1 - 3.3, x1 - 0.3)
    while x < x1 - 0.15:
        if tunnel and tunnel[0] < x < tunnel[1]:
            x += pitch
            continue
        web_t = 0.0045
        cv.rect(FE, x, x + web_t, floor_top - floor_t - cm_h, floor_top - floor_t, beam_cm * STEEL)
        cv.rect(
            FE,
            x - 0.02,
            x + 0.025,
            floor_top - floor_t - cm_h,
            floor_top - floor_t - cm_h + 0.0045,
            beam_cm * STEEL,
        )
        x += pitch
    if tunnel:
        cv.rect(FE, tunnel[0], tunnel[1], z0 + 0.03, z0 + 0.036, beam_cm * STEEL * 0.4)

    # Door end: door panels (sheets along the beam), locking bars, header and sill.
    if kind != "flatrack":
        sgn = 1 if door_at_left else -1
        d0, d1 = sorted((door_x + sgn * 0.02, door_x + sgn * 0.06))
        cv.rect(FE, d0, d1, z0 + 0.1, top - 0.1, beam_cm * 0.2 * STEEL / 4 * 0.9)
        cv.rect(
            FE, *sorted((door_x, door_x + sgn * 0.2)), top - 0.24, top, 2 * 1.2 * STEEL
        )  # header
        bar_r = rng.uniform(0.0135, 0.017)
        bar_x = door_x - sgn * rng.uniform(0.045, 0.065)
        a, b = bar_x - bar_r, bar_x + bar_r
        cv.paint(
            FE,
            a,
            b,
            z0 + 0.05,
            top - 0.05,
            lambda xs, zs: 0 * zs + 4 * _ring_chord(xs - bar_x, bar_r, bar_r - 0.004) * 100 * STEEL,
        )
        for zc in (z0 + 0.25, z0 + 1.1, top - 0.3):
            cv.rect(FE, min(bar_x, door_x), max(bar_x, door_x), zc, zc + 0.05, 4 * 1.5 * STEEL)
        # Front wall: a corrugated sheet along the beam.
        e0, e1 = sorted((front_x - sgn * 0.01, front_x - sgn * 0.055))
        cv.rect(FE, e0, e1, z0 + 0.1, top - 0.1, beam_cm * 0.2 * STEEL / 4.5 * 1.3)

    # Side walls: corrugated sheets crossed perpendicularly; reefers have flat insulated walls.
    wall_top = top - (0.0 if kind == "opentop" else 0.06)
    if kind == "reefer":
        cv.rect(FE, x0 + 0.05, x1 - 0.05, floor_top, top - 0.08, 2 * 0.08 * STEEL)
        cv.rect(MIN, x0 + 0.05, x1 - 0.05, floor_top, top - 0.08, 2 * 0.1 * ALU)
        cv.rect(ORG, x0 + 0.05, x1 - 0.05, floor_top, top - 0.08, 2 * 8.5 * 0.04)
    elif kind != "flatrack":
        w_pitch = rng.uniform(0.24, 0.31)
        w_flat = rng.uniform(0.15, 0.3)
        w_angle = math.radians(rng.uniform(50, 68))
        phase = rng.uniform(0, w_pitch)
        areal = 2 * t_wall * STEEL
        cv.paint(
            FE,
            x0 + post_w,
            x1 - post_w,
            z0 + sill,
            wall_top,
            lambda xs, zs: areal * _corrugation(xs + phase, w_pitch, w_flat, w_angle) + 0 * zs,
        )
        # Weld seams between panels.
        panel = rng.uniform(1.0, 1.25)
        xp = x0 + post_w + panel
        while xp < x1 - post_w:
            cv.rect(FE, xp, xp + 0.006, z0 + sill, wall_top, 2 * 0.6 * STEEL)
            xp += panel

    # Roof / top rails.
    rail_h = rng.uniform(0.05, 0.07)
    cv.rect(FE, x0, x1, top - rail_h, top, 2 * 0.8 * STEEL)
    cv.rect(FE, x0, x1, top - 0.004, top, 2 * 6 * STEEL)
    cv.rect(FE, x0, x1, top - rail_h, top - rail_h + 0.004, 2 * 6 * STEEL)
    roof_under = top
    if kind in ("dry", "hc", "reefer"):
        r_pitch = rng.uniform(0.18, 0.26)
        r_depth = roof_drop
        t_roof = rng.uniform(0.0018, 0.0022)
        phase = rng.uniform(0, r_pitch)

        def roof(xs, zs):
            ph = np.mod(xs + phase, r_pitch) / r_pitch
            tri = np.abs(2 * ph - 1)  # 0..1 zig-zag
            zr = top - 0.01 - r_depth * np.clip(1.3 * tri - 0.15, 0, 1)
            return np.where(
                np.abs(zs - zr) < t_roof * 1.6,
                beam_cm * STEEL * t_roof / (2 * t_roof * 1.6) * 0.9,
                0.0,
            )

        cv.paint(FE, x0 + 0.05, x1 - 0.05, top - 0.01 - r_depth - 0.01, top, roof)
        roof_under = top - 0.01 - r_depth - 0.01
        if kind == "reefer":
            cv.rect(ORG, x0 + 0.05, x1 - 0.05, roof_under - 0.1, roof_under, inner_w * 0.04)
            cv.rect(
                MIN, x0 + 0.05, x1 - 0.05, roof_under - 0.1, roof_under - 0.097, inner_w * ALU * 0.5
            )
            roof_under -= 0.1
    elif kind == "opentop":
        # Removable roof bows and a sagging tarpaulin between them.
        n_bows = max(2, int(length / rng.uniform(1.0, 1.3)))
        bows = np.linspace(x0 + 0.3, x1 - 0.3, n_bows)
        for xb in bows:
            cv.rect(FE, xb - 0.02, xb + 0.02, top - 0.035, top - 0.003, beam_cm * STEEL * 0.12)
        sag = rng.uniform(0.03, 0.12)
        gap = bows[1] - bows[0]

        def tarp(xs, zs):
            u = np.mod(xs - bows[0], gap) / gap
            zt = top - 0.003 - sag * 4 * u * (1 - u)
            return np.where(np.abs(zs - zt) < 0.003, 240 * 0.07 * 1.3 / 0.6, 0.0)

        cv.paint(ORG, bows[0], bows[-1], top - sag - 0.02, top, tarp)
        roof_under = top - sag - 0.02
    elif kind == "flatrack":
        # Heavy end frames instead of walls; deep side beams.
        for xe, sgn in ((x0, 1), (x1, -1)):
            a, b = sorted((xe, xe + sgn * 0.35))
            cv.rect(FE, a, b, z0, top, 2 * 0.8 * STEEL + 2 * 0.4 * STEEL)
            e0, e1 = sorted((xe + sgn * 0.2, xe + sgn * 0.25))
            cv.rect(FE, e0, e1, z0 + 0.2, top - 0.1, beam_cm * 0.4 * STEEL / 5)
        cv.rect(FE, x0, x1, z0, z0 + 0.45, 2 * 1.2 * STEEL)
        cv.rect(FE, x0, x1, z0, z0 + 0.012, 2 * 15 * STEEL)
        roof_under = top

    interior = Box3(
        x0=x0 + (0.07 if kind != "flatrack" else 0.36),
        x1=x1 - (0.07 if kind != "flatrack" else 0.36),
        z0=floor_top,
        z1=roof_under - 0.02,
        width_cm=inner_w,
        door_at_left=door_at_left,
        kind=kind,
    )
    if kind == "reefer":
        interior = _reefer_unit(cv, interior, rng)
    return interior


def _reefer_unit(cv: Canvas, box: Box3, rng: np.random.Generator) -> Box3:
    """Machinery at the front end: compressor, condenser coil, fans, evaporator."""
    depth = rng.uniform(0.42, 0.55)
    front_left = not box.door_at_left
    a, b = (box.x0, box.x0 + depth) if front_left else (box.x1 - depth, box.x1)
    z0, z1 = box.z0, box.z1
    h = z1 - z0
    cv.rect(FE, a, b, z0, z1, 2 * 0.3 * STEEL)  # frame and panels
    cv.rect(FE, a + 0.02, a + 0.025, z0, z1, 220 * 0.15 * STEEL)
    cv.rect(FE, b - 0.025, b - 0.02, z0, z1, 220 * 0.15 * STEEL)
    # Compressor: cast iron block low in the unit.
    cx = a + depth * rng.uniform(0.35, 0.65)
    cv.rect(FE, cx - 0.17, cx + 0.17, z0 + 0.05, z0 + 0.45, 45 * 7.2 * 0.45)
    cv.rect(FE, cx - 0.12, cx + 0.12, z0 + 0.12, z0 + 0.4, 30 * 7.2 * 0.3)

    # Condenser coil: copper tubes in aluminium fins (a fine grid).
    def coil(xs, zs):
        grid = 0.6 + 0.4 * (np.cos(2 * np.pi * zs / 0.025) > 0.6)
        return 120 * (0.08 * ALU) * grid + 0 * xs

    cv.paint(MIN, a + 0.05, b - 0.05, z0 + 0.5, z0 + 0.5 + 0.35 * h, coil)
    cv.paint(
        FE,
        a + 0.05,
        b - 0.05,
        z0 + 0.5,
        z0 + 0.5 + 0.35 * h,
        lambda xs, zs: 120 * 0.012 * 8.9 * (np.cos(2 * np.pi * zs / 0.025) > 0.8) + 0 * xs,
    )
    # Fan motors (discs seen along their axes, which run along the beam).
    for zf in (z0 + 0.55 + 0.18 * h, z1 - 0.35):
        _disc(cv, FE, (a + b) / 2, zf, 0.09, 0.0, 25 * STEEL * 0.5)
        _disc(cv, MIN, (a + b) / 2, zf, 0.22, 0.2, 40 * ALU)
    # Evaporator (upper) and control box.
    cv.paint(MIN, a + 0.05, b - 0.05, z1 - 0.7, z1 - 0.1, coil)
    cv.rect(FE, a + 0.05, a + 0.2, z0 + 0.6 * h, z0 + 0.6 * h + 0.25, 20 * STEEL * 0.1)
    if front_left:
        return Box3(b + 0.05, box.x1, z0, z1, box.width_cm, box.door_at_left, box.kind)
    return Box3(box.x0, a - 0.05, z0, z1, box.width_cm, box.door_at_left, box.kind)


def _tank_container(
    cv: Canvas, x0: float, x1: float, z0: float, top: float, door_at_left: bool, rng
) -> Box3:
    """An ISO tank: a cylinder along x in a frame, filled to a level with a liquid."""
    r = rng.uniform(1.0, 1.15)
    zc = z0 + 0.1 + r
    head = rng.uniform(0.3, 0.42)
    a, b = x0 + 0.25, x1 - 0.25
    t_shell = rng.uniform(0.4, 0.6)  # cm
    fill = float(rng.choice([0.0, rng.uniform(0.5, 0.95)], p=[0.3, 0.7]))
    rho = rng.uniform(0.75, 1.35)
    level = zc - r + 2 * r * fill

    def radius(xs):
        u = np.clip(np.maximum(a + head - xs, xs - (b - head)) / head, 0, 1)
        return r * np.sqrt(1 - u**2)

    def shell(xs, zs):
        rr = radius(xs)
        d = np.abs(zs - zc)
        ch = 2 * np.sqrt(np.maximum(rr**2 - d**2, 0))
        chi = 2 * np.sqrt(np.maximum((rr - t_shell / 100) ** 2 - d**2, 0))
        return (ch - chi) * 100 * STEEL

    def liquid(xs, zs):
        rr = radius(xs) - t_shell / 100
        ch = 2 * np.sqrt(np.maximum(rr**2 - (zs - zc) ** 2, 0))
        return np.where(zs < level, ch * 100 * rho, 0.0)

    cv.paint(FE, a, b, zc - r, zc + r, shell)
    if fill > 0:
        cv.paint(ORG, a, b, zc - r, zc + r, liquid)
    cv.paint(
        ORG,
        a,
        b,
        zc - r - 0.05,
        zc + r + 0.05,
        lambda xs, zs: (
            0.6 * shell(xs, zs) / STEEL * 0 + 0.05 * 100 * 0.5 * (np.abs(zs - zc) < r) + 0 * xs
        ),
    )
    # Frame: corner posts, top and bottom rails, end diagonals, walkway.
    for xe in (x0, x1 - 0.16):
        cv.rect(FE, xe, xe + 0.16, z0, top, 2 * 0.8 * STEEL)
        cv.rect(FE, xe, xe + 0.01, z0, top, 2 * 14 * STEEL)
    for zr in (z0, top - 0.15):
        cv.rect(FE, x0, x1, zr, zr + 0.15, 2 * 0.8 * STEEL)
        cv.rect(FE, x0, x1, zr, zr + 0.006, 2 * 12 * STEEL)
    for xe, sgn in ((x0 + 0.16, 1), (x1 - 0.16, -1)):
        for k in range(2):
            zz0 = z0 + 0.15 if k == 0 else top - 0.15 - 0.9
            cv.rotated_rect(
                FE,
                xe + sgn * 0.2,
                zz0 + 0.45,
                1.0,
                0.08,
                sgn * (0.9 if k == 0 else -0.9),
                2 * 0.8 * STEEL,
            )
    cv.rect(MIN, a + 1.0, b - 1.0, top - 0.02, top, 60 * 0.3 * ALU)  # walkway
    cv.rect(FE, (a + b) / 2 - 0.3, (a + b) / 2 + 0.3, zc + r, top - 0.02, 2 * 0.8 * STEEL)  # manlid
    return Box3(x0, x1, z0, zc + r, 0.0, door_at_left, "tank")


# ---------------------------------------------------------------------------
# Cargo models.
# ---------------------------------------------------------------------------
COMMODITIES = [
    # name, material, bulk density range (g/cm^3 of the loaded volume), item pattern
    ("textiles", ORG, (0.10, 0.22), None),
    ("paper", ORG, (0.35, 0.6), None),
    ("fruit", ORG, (0.28, 0.45), "round"),
    ("frozen meat", ORG, (0.35, 0.55), None),
    ("beverages", MIN, (0.35, 0.55), "bottles"),
    ("canned food", FE, (0.04, 0.07), "cans"),  # the steel of the cans; contents added as organic
    ("electronics", ORG, (0.12, 0.25), "parts"),
    ("furniture flat-pack", ORG, (0.25, 0.45), "boards"),
    ("foam goods", ORG, (0.03, 0.08), None),
    ("ceramic tiles", MIN, (0.4, 0.9), "boards"),
]


def _cartons(
    cv: Canvas, x0: float, x1: float, box: Box3, rng, slots: list[Slot], reefer: bool
) -> str:
    """Palletised cartons: pallets along x, carton stacks with cardboard edges and item patterns."""
    pick = rng.choice([2, 2, 3]) if reefer else rng.integers(len(COMMODITIES))
    name, mat, (lo, hi), pattern = COMMODITIES[int(pick)]
    depth = box.width_cm * rng.uniform(0.75, 0.97)
    carton_w = rng.uniform(0.3, 0.6)
    carton_h = rng.uniform(0.22, 0.45)
    pallet = rng.choice([1.0, 1.2])
    stack_h = min(box.z1 - box.z0 - 0.05, rng.uniform(1.2, 2.3))
    tex = cv.texture(x0, x1, box.z0, box.z1)
    x = x0 + rng.uniform(0.0, 0.05)
    period = rng.uniform(0.06, 0.12)
    while x + pallet <= x1:
        # Pallet: deck boards (planes along the beam) and blocks.
        z = box.z0
        if rng.random() < 0.85:
            cv.rect(ORG, x, x + pallet, z + 0.122, z + 0.144, depth * WOOD * 0.75)
            cv.rect(ORG, x, x + pallet, z, z + 0.022, depth * WOOD * 0.45)
            for xb in (x, x + pallet / 2 - 0.05, x + pallet - 0.1):
                cv.rect(ORG, xb, xb + 0.1, z + 0.022, z + 0.122, 3 * 10 * WOOD)
            z += 0.144
        h_here = stack_h * rng.uniform(0.8, 1.0)
        rho = rng.uniform(lo, hi)
        ncx = max(1, round(pallet / carton_w))
        cw = pallet / ncx
        ncz = max(1, int((h_here) / carton_h))
        ch = h_here / ncz
        cells = []
        for i in range(ncx):
            for j in range(ncz):
                cx0, cz0 = x + i * cw, z + j * ch
                r_c = rho * rng.uniform(0.85, 1.15)
                f_tex = tex

                def content(xs, zs, r_c=r_c, f_tex=f_tex, z_layer=cz0):
                    v = depth * r_c * (1 + 0.12 * f_tex(xs, zs))
                    # Items seen through several rows across the beam: partly averaged out.
                    if pattern == "bottles":  # standing cylinders in layers
                        v = v * (0.75 + 0.5 * np.abs(np.cos(np.pi * xs / period)))
                        v = v * (1 - 0.25 * (np.mod(zs - z_layer, 2.5 * period) < 0.015))
                    elif pattern == "cans":
                        v = v * (0.8 + 0.4 * np.sqrt(np.abs(np.cos(np.pi * xs / period))))
                        v = v * (1 - 0.3 * (np.mod(zs - z_layer, 1.2 * period) < 0.01))
                    elif pattern == "round":  # fruit, balls
                        v = v * (
                            0.85
                            + 0.3
                            * np.abs(np.cos(np.pi * xs / period) * np.cos(np.pi * zs / period))
                        )
                    elif pattern == "boards":
                        v = v * (0.85 + 0.3 * (np.mod(zs, period / 3) < period / 9))
                    return v

                cv.paint(mat, cx0, cx0 + cw, cz0, cz0 + ch, content)
                if name == "canned food":  # the contents of the cans
                    cv.paint(
                        ORG,
                        cx0,
                        cx0 + cw,
                        cz0,
                        cz0 + ch,
                        lambda xs, zs, r_c=r_c: depth * r_c * 9 * (1 + 0 * xs * zs),
                    )
                if pattern == "parts" and rng.random() < 0.5:  # transformers, motors
                    for _ in range(rng.integers(1, 4)):
                        px, pz = (
                            cx0 + rng.uniform(0.05, cw - 0.05),
                            cz0 + rng.uniform(0.05, ch - 0.05),
                        )
                        cv.rect(
                            FE,
                            px - 0.03,
                            px + 0.03,
                            pz - 0.02,
                            pz + 0.02,
                            rng.uniform(5, 25) * STEEL,
                        )
                # Cardboard edges: carton walls along the beam, partly aligned across the width.
                edge = depth * 0.55 * rng.uniform(0.12, 0.4)
                cv.rect(ORG, cx0, cx0 + 0.006, cz0, cz0 + ch, edge)
                cv.rect(ORG, cx0, cx0 + cw, cz0 + ch - 0.006, cz0 + ch, edge)
                cells.append((cx0, cx0 + cw, cz0, cz0 + ch))
        host_rho = rho * (9 if name == "canned food" else 1)
        host_m = ORG if name == "canned food" else mat
        slots.append(
            Slot(
                "cartons",
                x,
                x + pallet,
                z,
                z + h_here,
                host_m,
                rho if mat == ORG else host_rho,
                depth,
                cells if mat == ORG else [],
            )
        )
        x += pallet + rng.uniform(0.02, 0.08)
    return f"cartons ({name})"


def _bags(cv: Canvas, x0, x1, box: Box3, rng, slots) -> str:
    """Sacks in a brick bond (pillow profiles), or jumbo bags."""
    mineral = rng.random() < 0.4
    mat = MIN if mineral else ORG
    rho = rng.uniform(0.45, 0.8) if mineral else rng.uniform(0.35, 0.65)
    depth = box.width_cm * rng.uniform(0.6, 0.95)
    top = box.z0 + min(box.z1 - box.z0 - 0.1, rng.uniform(0.9, 1.8))
    tex = cv.texture(x0, x1, box.z0, top)
    if rng.random() < 0.3:  # jumbo bags, ~1 m cubes
        x = x0
        while x + 1.0 < x1:
            w = rng.uniform(0.9, 1.1)
            h = rng.uniform(0.8, min(1.3, top - box.z0))

            def jumbo(xs, zs, x=x, w=w, h=h):
                u = (xs - x - w / 2) / (w / 2)
                v = (zs - box.z0 - h / 2) / (h / 2)
                prof = np.sqrt(
                    np.clip(1 - np.abs(u) ** 6, 0, 1) * np.clip(1 - np.abs(v) ** 8, 0, 1)
                )
                return depth * rho * prof * (1 + 0.1 * tex(xs, zs))

            cv.paint(mat, x, x + w, box.z0, box.z0 + h, jumbo)
            slots.append(
                Slot("cargo", x + 0.1, x + w - 0.1, box.z0 + 0.1, box.z0 + h - 0.1, mat, rho, depth)
            )
            x += w + rng.uniform(0.03, 0.15)
        return "jumbo bags"
    bag_l, bag_h = rng.uniform(0.7, 1.0), rng.uniform(0.12, 0.2)
    z = box.z0
    layer = 0
    while z + bag_h <= top:
        off = (layer % 2) * bag_l / 2
        x = x0 - off
        while x < x1:
            a, b = max(x, x0), min(x + bag_l, x1)

            def pillow(xs, zs, x=x, z=z):
                u = (xs - x - bag_l / 2) / (bag_l / 2)
                v = (zs - z - bag_h / 2) / (bag_h / 2)
                return (
                    depth
                    * rho
                    * 1.25
                    * np.sqrt(np.clip(1 - u**4, 0, 1) * np.clip(1 - v**2, 0.05, 1))
                    * (1 + 0.1 * tex(xs, zs))
                )

            if b - a > 0.1:
                cv.paint(mat, a, b, z, z + bag_h, pillow)
            x += bag_l
        z += bag_h * 0.92
        layer += 1
    slots.append(Slot("cargo", x0, x1, box.z0 + 0.05, z, mat, rho, depth))
    return "bagged goods"


def _drums(cv: Canvas, x0, x1, box: Box3, rng, slots) -> str:
    """200 l steel drums (or IBC totes) on pallets, liquid levels visible."""
    if rng.random() < 0.3:
        return _ibcs(cv, x0, x1, box, rng, slots)
    r, h = 0.293, 0.88
    n_across = int(rng.integers(1, 4))
    rho = rng.uniform(0.75, 1.3)
    layers = 2 if (box.z1 - box.z0) > 2.0 and rng.random() < 0.5 else 1
    x = x0
    while x + 2 * r < x1:
        for k in range(layers):
            zb = box.z0 + 0.144 + k * (h + 0.16)
            if k == 0 or rng.random() < 0.9:
                cv.rect(ORG, x, x + 2 * r + 0.02, zb - 0.144, zb, 3 * 10 * WOOD * 0.6)
            fill = rng.uniform(0.55, 0.97) if rng.random() < 0.85 else 0.0
            cx = x + r
            level = zb + fill * (h - 0.02)
            if fill > 0:
                cv.paint(
                    ORG,
                    cx - r,
                    cx + r,
                    zb,
                    level,
                    lambda xs, zs, cx=cx: (
                        n_across * _chord(xs - cx, r - 0.002) * 100 * rho + 0 * zs
                    ),
                )
            cv.paint(
                FE,
                cx - r,
                cx + r,
                zb,
                zb + h,
                lambda xs, zs, cx=cx: (
                    n_across * _ring_chord(xs - cx, r, r - 0.0012) * 100 * STEEL + 0 * zs
                ),
            )
            for zh in (zb, zb + h - 0.004):  # heads: discs along the beam
                cv.paint(
                    FE,
                    cx - r,
                    cx + r,
                    zh,
                    zh + 0.004,
                    lambda xs, zs, cx=cx: (
                        n_across * _chord(xs - cx, r) * 100 * STEEL * 0.3 + 0 * zs
                    ),
                )
            for zh in (zb + h / 3, zb + 2 * h / 3):  # rolling hoops
                cv.rect(
                    FE, cx - r - 0.005, cx + r + 0.005, zh, zh + 0.012, n_across * 2 * 1.0 * STEEL
                )
            slots.append(
                Slot(
                    "cargo",
                    cx - r,
                    cx + r,
                    zb,
                    zb + h,
                    ORG,
                    rho * fill * 0.8,
                    n_across * 2 * r * 100 * 0.8,
                )
            )
        x += 2 * r + rng.uniform(0.02, 0.1)
    return "drums"


def _ibcs(cv: Canvas, x0, x1, box: Box3, rng, slots) -> str:
    size = 1.0
    x = x0
    rho = rng.uniform(0.8, 1.25)
    depth = 2 * 100 * 1.0
    while x + size + 0.2 < x1:
        zb = box.z0 + 0.15
        fill = rng.uniform(0.3, 0.95)
        cv.rect(FE, x, x + 1.2, box.z0, zb, 2 * 8 * STEEL * 0.3)
        cv.rect(ORG, x + 0.05, x + 1.15, zb, zb + fill * 0.95, depth * 0.95 * rho)
        cv.rect(ORG, x + 0.05, x + 1.15, zb, zb + 0.97, 2 * 2 * 0.4 * 0.95)  # HDPE bottle walls
        # Steel cage: a grid of tubes crossing the beam and along it.
        for xc in np.arange(x + 0.05, x + 1.15, 0.16):
            cv.rect(FE, xc, xc + 0.012, zb, zb + 1.0, 4 * 0.2 * STEEL)
        for zc in np.arange(zb, zb + 1.0, 0.16):
            cv.rect(FE, x + 0.05, x + 1.15, zc, zc + 0.012, 2 * 100 * 0.15 * STEEL * 0.3)
        slots.append(Slot("cargo", x + 0.1, x + 1.1, zb, zb + fill * 0.95, ORG, rho, depth))
        x += 1.2 + rng.uniform(0.02, 0.08)
    return "IBC totes"


def _timber(cv: Canvas, x0, x1, box: Box3, rng, slots) -> str:
    depth = box.width_cm * rng.uniform(0.55, 0.95)
    rho = rng.uniform(0.42, 0.62)
    plank = rng.uniform(0.025, 0.06)
    gap = rng.uniform(0.0, 0.008)
    top = box.z0 + min(box.z1 - box.z0 - 0.05, rng.uniform(1.0, 2.2))
    x = x0
    while x < x1 - 0.5:
        length = min(rng.uniform(2.4, 6.0), x1 - x)
        z = box.z0
        cv.rect(ORG, x + 0.2, x + 0.3, z, z + 0.08, depth * WOOD * 0.9)
        cv.rect(ORG, x + length - 0.3, x + length - 0.2, z, z + 0.08, depth * WOOD * 0.9)
        z += 0.08
        tex = cv.texture(x, x + length, z, top)

        def wood(xs, zs, z=z, tex=tex):
            inside = np.mod(zs - z, plank + gap) < plank
            grain = 1 + 0.08 * tex(xs, zs)
            return depth * rho * grain * inside

        cv.paint(ORG, x + rng.uniform(0, 0.05), x + length - rng.uniform(0, 0.05), z, top, wood)
        for xs_ in np.arange(
            x + 0.4, x + length - 0.2, rng.uniform(0.9, 1.5)
        ):  # steel straps around the bundle
            cv.rect(FE, xs_, xs_ + 0.003, z, top, 2 * 1.0 * STEEL)
        slots.append(Slot("cargo", x + 0.1, x + length - 0.1, z, top, ORG, rho * 0.9, depth))
        x += length + rng.uniform(0.02, 0.3)
    return "timber"


def _scrap(cv: Canvas, x0, x1, box: Box3, rng, slots) -> str:
    """A heap of scrap: plates, sections and pipes in random orientations."""
    heap_h = min(box.z1 - box.z0 - 0.1, rng.uniform(0.8, 1.8))
    depth = box.width_cm * rng.uniform(0.6, 0.9)
    fines = rng.uniform(0.04, 0.12)  # g/cm^3 of iron in the small debris filling the heap
    tex = cv.texture(x0, x1, box.z0, box.z0 + heap_h)
    lumps = rng.uniform(0.25, 0.6)

    def heap_top(xs):
        u = (xs - x0) / (x1 - x0)
        return box.z0 + heap_h * (0.55 + 0.45 * np.clip(np.sin(np.pi * u), 0, 1) ** 0.6)

    def mound(xs, zs):
        below = np.clip((heap_top(xs) - zs) / 0.15, 0, 1)
        return depth * fines * below * np.clip(1 + lumps * tex(xs, zs), 0.2, None)

    cv.paint(FE, x0, x1, box.z0, box.z0 + heap_h, mound)
    n = int((x1 - x0) * rng.uniform(50, 90))
    for _ in range(n):
        cx = rng.uniform(x0 + 0.1, x1 - 0.1)
        u = (cx - x0) / (x1 - x0)
        h_here = heap_h * (0.55 + 0.45 * math.sin(math.pi * u) ** 0.6)
        cz = box.z0 + h_here * rng.beta(1.3, 2.0)
        length = rng.uniform(0.1, 1.0)
        height = rng.uniform(0.005, 0.25)
        kind = rng.random()
        if kind < 0.55:  # plate face-on (a few cm of steel) or edge-on (tens of cm)
            areal = rng.uniform(0.3, 2.5) * STEEL if height > 0.03 else rng.uniform(8, 40) * STEEL
        elif kind < 0.8:  # section
            areal = rng.uniform(1.0, 6.0) * STEEL
        else:  # pipe: a chord profile across its diameter
            rad = height / 4 + 0.01
            wall = rng.uniform(0.3, 1.0)

            def areal(u_, v_, rad=rad, wall=wall):
                return _ring_chord(v_, rad, rad * 0.8) * 100 * STEEL * wall

        cv.rotated_rect(FE, cx, cz, length, height, rng.uniform(0, math.pi), areal)
    slots.append(
        Slot(
            "cargo",
            x0 + 0.2,
            x1 - 0.2,
            box.z0 + 0.05,
            box.z0 + heap_h * 0.5,
            FE,
            fines + 0.1,
            depth,
        )
    )
    return "scrap metal"


def _machinery(cv: Canvas, x0, x1, box: Box3, rng, slots) -> str:
    """One or two machines on skids: housings, motors, gearboxes, flanges."""
    x = x0 + rng.uniform(0.0, 0.3)
    while x + 1.5 < x1:
        length = min(rng.uniform(1.5, 4.0), x1 - x)
        height = min(box.z1 - box.z0 - 0.1, rng.uniform(0.8, 2.1))
        depth = rng.uniform(80, 180)
        z = box.z0
        cv.rect(FE, x, x + length, z, z + 0.12, 2 * 1.2 * STEEL)
        cv.rect(FE, x, x + length, z, z + 0.01, depth * STEEL * 0.5)
        cv.rect(FE, x, x + length, z + 0.11, z + 0.12, depth * STEEL * 0.5)
        z += 0.12
        # Housing: a steel box (walls along the beam are dark).
        cv.rect(FE, x + 0.05, x + length - 0.05, z, z + height, 2 * rng.uniform(0.4, 1.2) * STEEL)
        for xe in (x + 0.05, x + length - 0.06):
            cv.rect(FE, xe, xe + 0.01, z, z + height, depth * STEEL)
        cv.rect(FE, x + 0.05, x + length - 0.05, z + height - 0.01, z + height, depth * STEEL)
        # Motor (cylinder along the beam) and gearbox block, a shaft and flanges.
        mx = x + rng.uniform(0.3, 0.5) * length
        mr = rng.uniform(0.15, min(0.4, height / 3))
        _disc(cv, FE, mx, z + mr + 0.1, mr, 0.0, rng.uniform(20, 60) * STEEL * 0.5)
        _disc(cv, FE, mx, z + mr + 0.1, mr, mr - 0.02, depth * 0.2 * STEEL)
        gx = x + rng.uniform(0.6, 0.85) * length
        cv.rect(
            FE,
            gx - 0.2,
            gx + 0.2,
            z + 0.05,
            z + min(0.6, height * 0.6),
            rng.uniform(15, 40) * STEEL,
        )
        cv.rect(FE, mx, gx, z + mr + 0.08, z + mr + 0.12, 60 * STEEL)
        for _ in range(int(rng.integers(3, 9))):  # pipes and brackets
            cv.rotated_rect(
                FE,
                rng.uniform(x + 0.2, x + length - 0.2),
                z + rng.uniform(0.1, height - 0.1),
                rng.uniform(0.2, 1.0),
                0.04,
                rng.uniform(0, math.pi),
                rng.uniform(1, 4) * STEEL,
            )
        slots.append(
            Slot(
                "cargo",
                x + 0.1,
                x + length - 0.1,
                z + 0.05,
                z + height - 0.05,
                FE,
                0.03,
                depth * 0.8,
            )
        )
        x += length + rng.uniform(0.1, 0.6)
    return "machinery"


def _tyres(cv: Canvas, x0, x1, box: Box3, rng, slots) -> str:
    """Tyres standing in rows (axis along the beam): concentric rings."""
    r_out = rng.uniform(0.3, 0.55)
    r_in = r_out * rng.uniform(0.55, 0.7)
    n = int(box.width_cm / rng.uniform(22, 32) * rng.uniform(0.8, 0.95))
    x = x0 + r_out
    while x + r_out < x1:
        z = box.z0 + r_out
        while z + r_out < box.z1:
            _disc(cv, ORG, x, z, r_out, r_in, n * 2 * 1.4 * RUBBER)
            _disc(cv, ORG, x, z, r_out, r_out - 0.025, n * 22 * RUBBER * 0.5)
            _disc(cv, FE, x, z, r_in + 0.012, r_in, n * 2 * 0.8 * STEEL)
            z += 2 * r_out + 0.005
        x += 2 * r_out + rng.uniform(0.005, 0.03)
    slots.append(
        Slot("cargo", x0 + 0.2, x1 - 0.2, box.z0 + 0.1, box.z1 - 0.2, ORG, 0.25, box.width_cm * 0.9)
    )
    return "tyres"


def _cars(cv: Canvas, x0, x1, box: Box3, rng, slots) -> str:
    """Passenger cars seen from the side (near and far wheels overlap)."""
    x = x0 + rng.uniform(0.1, 0.4)
    count = 0
    while x + 3.8 < x1:
        length = min(rng.uniform(3.8, 4.8), x1 - x - 0.02)
        height = rng.uniform(1.4, min(1.75, box.z1 - box.z0 - 0.1))
        wr = rng.uniform(0.29, 0.34)
        zg = box.z0
        floor = zg + wr + 0.02
        front_left = rng.random() < 0.5

        def f(d, x=x, length=length, front_left=front_left):
            return x + d if front_left else x + length - d

        def rect(m, d0, d1, z0, z1, areal, f=f):
            a, b = sorted((f(d0), f(d1)))
            cv.rect(m, a, b, z0, z1, areal)

        width = rng.uniform(165, 185)
        rect(FE, 0.1, length - 0.1, floor, floor + 0.003, width * STEEL * 0.8)  # floor pan
        rect(FE, 0.1, length - 0.1, floor, floor + 0.65, 2 * 0.08 * STEEL)  # door skins
        hood = rng.uniform(0.8, 1.1)
        rect(FE, 0.05, hood, floor + 0.62, floor + 0.625, width * STEEL * 0.4)
        rect(
            FE, hood + 0.7, length - 0.5, zg + height - 0.004, zg + height, width * STEEL * 0.4
        )  # roof
        rect(FE, length - 0.5, length - 0.05, floor + 0.65, floor + 0.654, width * STEEL * 0.4)
        # Engine and gearbox (aluminium or iron block), seats, fuel tank.
        rect(rng.choice([FE, MIN]), 0.2, 0.2 + 0.55, floor + 0.05, floor + 0.55, 55 * 0.35 * 7.0)
        rect(FE, 0.75, 1.05, floor + 0.02, floor + 0.3, 40 * 0.25 * STEEL)
        for d in (hood + 0.6, hood + 1.4):
            rect(ORG, d, d + 0.5, floor + 0.15, floor + 0.6, width * 0.06)
            rect(FE, d, d + 0.5, floor + 0.12, floor + 0.16, 4 * 0.4 * STEEL)
        rect(
            FE,
            length - 1.1,
            length - 0.5,
            floor - 0.05,
            floor + 0.2,
            70 * 0.05 * STEEL + 70 * 0.6 * 0.74,
        )
        # Windows: inclined glass along the beam.
        for d0, d1 in ((hood, hood + 0.65), (length - 0.5, length - 0.85)):
            a, b = sorted((f(d0), f(d1)))
            z_a, z_b = floor + 0.65, zg + height
            slope = (z_b - z_a) / (f(d1) - f(d0))

            x_a = f(d0)

            def glass(xs, zs, x_a=x_a, z_a=z_a, slope=slope, width=width):
                zl = z_a + (xs - x_a) * slope
                return np.where(np.abs(zs - zl) < 0.006, width * 0.5 * GLASS * 0.5, 0.0)

            cv.paint(MIN, a, b, z_a, z_b, glass)
        for d in (0.8, length - 0.85):
            xc = f(d)
            _disc(cv, ORG, xc, zg + wr, wr, wr * 0.62, 2 * 2 * 1.2 * RUBBER)
            _disc(cv, ORG, xc, zg + wr, wr, wr - 0.02, 2 * 18 * RUBBER * 0.5)
            _disc(cv, MIN, xc, zg + wr, wr * 0.62, 0.0, 2 * 1.5 * ALU)
            _disc(cv, FE, xc, zg + wr, 0.14, 0.12, 2 * 6 * STEEL)
        slots.append(
            Slot(
                "cargo",
                min(f(hood + 0.5), f(length - 0.5)),
                max(f(hood + 0.5), f(length - 0.5)),
                floor + 0.05,
                floor + 0.9,
                ORG,
                0.05,
                120,
            )
        )
        count += 1
        x += length + rng.uniform(0.15, 0.5)
    return f"{count} cars"


CARGO = {
    "cartons": _cartons,
    "bags": _bags,
    "drums": _drums,
    "timber": _timber,
    "scrap": _scrap,
    "machinery": _machinery,
    "tyres": _tyres,
    "cars": _cars,
}


def _load(cv: Canvas, box: Box3, rng: np.random.Generator, slots: list[Slot]) -> list[str]:
    """Fill a container interior: empty, one cargo kind or a mixed load; leaves a door gap."""
    if box.kind == "tank":
        return ["liquid"]
    length = box.x1 - box.x0
    if rng.random() < 0.08:
        # Empty: maybe a few airbags or loose dunnage.
        slots.append(Slot("free", box.x0 + 0.5, box.x1 - 0.5, box.z0, box.z0 + 0.8, ORG, 0.0, 230))
        return ["empty"]
    door_gap = rng.uniform(0.05, 1.2) if rng.random() < 0.7 else rng.uniform(1.5, length * 0.5)
    a, b = (box.x0 + door_gap, box.x1) if box.door_at_left else (box.x0, box.x1 - door_gap)
    if door_gap > 0.3:
        da, db = (box.x0, a) if box.door_at_left else (b, box.x1)
        slots.append(Slot("door", da + 0.02, db - 0.02, box.z0, box.z0 + 1.2, ORG, 0.0, 230))
    if box.kind == "reefer":
        kinds = ["cartons"]
    elif box.kind == "flatrack":
        kinds = [str(rng.choice(["machinery", "timber", "cars", "drums"]))]
    else:
        weights = np.array([0.34, 0.12, 0.08, 0.08, 0.06, 0.12, 0.1, 0.1])
        n_parts = int(rng.choice([1, 2, 3], p=[0.55, 0.3, 0.15]))
        kinds = [str(k) for k in rng.choice(list(CARGO), size=n_parts, p=weights / weights.sum())]
    cuts = np.sort(rng.uniform(a, b, size=len(kinds) - 1))
    edges = [a, *cuts, b]
    done = []
    for kind, s0, s1 in zip(kinds, edges[:-1], edges[1:], strict=True):
        if s1 - s0 < 1.3:
            continue
        if kind == "cars" and s1 - s0 < 4.3:
            kind = "cartons"
        fn = CARGO[kind]
        if kind == "cartons":
            done.append(fn(cv, s0, s1, box, rng, slots, reefer=box.kind == "reefer"))
        else:
            done.append(fn(cv, s0, s1, box, rng, slots))
    return done


# ---------------------------------------------------------------------------
# Threats.
# ---------------------------------------------------------------------------
@dataclass
class Threat:
    category: str
    concealment: str
    bbox: tuple[int, int, int, int]  # x, y, w, h in pixels
    area: int
    delta: float  # mean attenuation added over the footprint (noise-free, high energy)
    mass_kg: float


def _footprint_box(
    sl: tuple[slice, slice], mask: np.ndarray
) -> tuple[tuple[int, int, int, int], int] | None:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    r0, r1 = sl[0].start + rows[0], sl[0].start + rows[-1] + 1
    c0, c1 = sl[1].start + cols[0], sl[1].start + cols[-1] + 1
    return (int(c0), int(r0), int(c1 - c0), int(r1 - r0)), int(mask.sum())


def _insert(
    cv: Canvas,
    x0: float,
    x1: float,
    z0: float,
    z1: float,
    thickness: Callable[[np.ndarray, np.ndarray], np.ndarray],  # cm along the beam
    mat: int,
    rho: float,
    slot: Slot,
    min_delta: float,
) -> tuple[tuple[int, int, int, int], int, float] | None:
    """Put an object of ``thickness`` (cm) and density ``rho`` in place of the host material.

    Returns (bbox, area, mean added attenuation) or None when it would not add ``min_delta``.
    """
    win = cv.window(x0, x1, z0, z1)
    if win is None:
        return None
    sl, xs, zs, cov = win
    t = np.broadcast_to(thickness(xs, zs), cov.shape).astype(np.float32) * cov
    mask = t > 0.05
    if mask.sum() < 12:
        return None
    before = np.tensordot(MU_HIGH, cv.maps[(slice(None), *sl)], axes=1)
    removed = np.minimum(slot.host_rho * t, cv.maps[slot.host_m][sl])
    delta_map = MU_HIGH[mat] * rho * t - MU_HIGH[slot.host_m] * removed
    delta = float(delta_map[mask].mean())
    if delta < min_delta:
        return None
    cv.maps[slot.host_m][sl] -= removed
    cv.maps[mat][sl] += rho * t
    after = np.tensordot(MU_HIGH, cv.maps[(slice(None), *sl)], axes=1)
    found = _footprint_box(sl, mask)
    assert found is not None
    bbox, area = found
    return bbox, area, float((after - before)[mask].mean())


def _drug_shape(rng, w: float, h: float, depth_cm: float, cx: float, cz: float, bag: bool):
    """Bricks of ~20 x 11 cm with wrapping seams, stacked in a block or soft bag."""
    bw, bh = rng.uniform(0.18, 0.24), rng.uniform(0.09, 0.13)
    seam = rng.uniform(0.12, 0.3)

    def thickness(xs, zs):
        u = (xs - cx) / (w / 2)
        v = (zs - cz) / (h / 2)
        if bag:
            inside = np.clip((1 - u**2 - v**2) * 6, 0, 1) * np.sqrt(
                np.clip(1 - 0.6 * (u**2 + v**2), 0, 1)
            )
        else:
            inside = ((np.abs(u) <= 1) & (np.abs(v) <= 1)).astype(np.float32)
        seams = (np.mod(xs - cx + w / 2, bw) < 0.012) | (np.mod(zs - cz + h / 2, bh) < 0.012)
        return depth_cm * inside * (1 - seam * seams)

    return thickness


def _place_drugs(cv: Canvas, slot: Slot, rng) -> Threat | None:
    """A block or soft bag of bricks; its depth along the beam follows from mass and footprint."""
    for _ in range(25):
        rho = float(rng.uniform(1.0, 1.4))
        mass = float(rng.uniform(5, 25) if slot.kind == "floor" else rng.uniform(5, 60))
        if slot.kind == "floor":  # flat in the cavity between cross-members
            h = float((slot.z1 - slot.z0) * rng.uniform(0.7, 1.0))
        else:
            h = float(rng.uniform(0.2, 1.0))
        if slot.kind == "wall":  # a lining a few cm deep over a larger area
            depth = float(rng.uniform(4, 10))
            w = float(np.clip(mass / (10 * rho * depth * h), 0.2, 1.0))
        else:
            w = float(rng.uniform(0.2, 1.0))
        w, h = min(w, slot.x1 - slot.x0), min(h, slot.z1 - slot.z0)
        if w < 0.2 or h < 0.08:
            return None
        if slot.kind == "wall":
            mass = 10 * rho * depth * w * h
        else:
            depth = mass / (10 * rho * w * h)  # cm: kg / (g/cm^3 * m^2)
        max_depth = slot.depth_cm * 0.8 if slot.kind == "floor" else min(slot.depth_cm * 0.8, 60)
        if not 1.5 <= depth <= max_depth:
            continue
        cx = float(rng.uniform(slot.x0 + w / 2, slot.x1 - w / 2))
        cz = float(rng.uniform(slot.z0 + h / 2, slot.z1 - h / 2))
        bag = slot.kind in ("door", "free", "cab") and rng.random() < 0.7
        if slot.kind in ("door", "free"):
            cz = slot.z0 + h / 2  # on the floor
        shape = _drug_shape(rng, w, h, depth, cx, cz, bag)
        got = _insert(
            cv, cx - w / 2, cx + w / 2, cz - h / 2, cz + h / 2, shape, ORG, rho, slot, 0.06
        )
        if got:
            return Threat("drugs", slot.kind, got[0], got[1], got[2], mass)
    return None


def _place_cigarettes(cv: Canvas, slot: Slot, rng) -> Threat | None:
    """Master cases of cigarettes in place of a block of cartons."""
    if not slot.cells:
        return None
    cells = slot.cells
    xs_ = sorted({c[0] for c in cells})
    zs_ = sorted({c[2] for c in cells})
    nx, nz = int(rng.integers(1, len(xs_) + 1)), int(rng.integers(1, min(len(zs_), 4) + 1))
    i0, j0 = int(rng.integers(0, len(xs_) - nx + 1)), int(rng.integers(0, len(zs_) - nz + 1))
    chosen = [
        c
        for c in cells
        if xs_[i0] <= c[0] <= xs_[i0 + nx - 1] and zs_[j0] <= c[2] <= zs_[j0 + nz - 1]
    ]
    x0, x1 = min(c[0] for c in chosen), max(c[1] for c in chosen)
    z0, z1 = min(c[2] for c in chosen), max(c[3] for c in chosen)
    rho = float(rng.uniform(0.24, 0.32))
    depth = slot.depth_cm * float(rng.choice([1.0, rng.uniform(0.4, 0.8)]))
    period = rng.uniform(0.045, 0.06)

    def thickness(xs, zs):
        rows = 0.9 + 0.1 * (np.mod(zs - z0, period) > 0.006)
        return depth * rows * ((xs >= x0) & (xs < x1) & (zs >= z0) & (zs < z1))

    mass = rho * depth * (x1 - x0) * (z1 - z0) * 1e4 / 1000
    got = _insert(cv, x0, x1, z0, z1, thickness, ORG, rho, slot, 0.06)
    if got:
        return Threat("cigarettes", "cartons", got[0], got[1], got[2], mass)
    return None


def _place_weapon(cv: Canvas, slot: Slot, rng) -> Threat | None:
    """A firearm: barrel, receiver, magazine, stock or grip, in the plane of the image."""
    rifle = rng.random() < 0.6
    length = float(rng.uniform(0.7, 1.0) if rifle else rng.uniform(0.25, 0.35))
    if length > slot.x1 - slot.x0 - 0.05 and length > slot.z1 - slot.z0 - 0.05:
        return None
    angle = float(
        rng.uniform(-0.5, 0.5) if rng.random() < 0.7 else rng.uniform(-math.pi / 2, math.pi / 2)
    )
    half = 0.5 * length
    ext_x, ext_z = abs(half * math.cos(angle)) + 0.1, abs(half * math.sin(angle)) + 0.1
    if slot.x1 - slot.x0 < 2 * ext_x or slot.z1 - slot.z0 < 2 * ext_z:
        return None
    cx = float(rng.uniform(slot.x0 + ext_x, slot.x1 - ext_x))
    cz = float(rng.uniform(slot.z0 + ext_z, slot.z1 - ext_z))
    if slot.kind in ("door", "free"):
        cz = slot.z0 + ext_z
    ca, sa = math.cos(angle), math.sin(angle)
    bore = 0.0045
    barrel_r = rng.uniform(0.010, 0.014)
    rec_len = length * (0.3 if rifle else 0.75)
    rec_h = rng.uniform(0.045, 0.07) if rifle else 0.03
    rec_t = rng.uniform(1.6, 2.6)  # cm of steel-equivalent
    # Steel parts in local coordinates (u along the gun, v up).
    steel_parts = []
    steel_parts.append((-half + rec_len, half, 0.0, barrel_r))  # barrel (u0, u1, v centre, radius)

    def steel_t(xs, zs):
        dx, dz = xs - cx, zs - cz
        u = dx * ca + dz * sa
        v = -dx * sa + dz * ca
        t = np.zeros(np.broadcast_shapes(u.shape, v.shape), np.float32)
        u0, u1, vc, rr = steel_parts[0]
        on = (u >= u0) & (u <= u1)
        t += on * (_chord(v - vc, rr) - _chord(v - vc, bore)) * 100
        ru0 = -half + (0.3 * length if rifle else 0.0)
        in_rec = (u >= ru0) & (u <= ru0 + rec_len) & (np.abs(v) <= rec_h / 2)
        t += in_rec * rec_t
        mag_u = ru0 + rec_len * 0.45
        mag = (
            (np.abs(u - mag_u - 0.1 * (-v - rec_h / 2)) <= 0.02)
            & (v < -rec_h / 2)
            & (v > -rec_h / 2 - (0.2 if rifle else 0.11))
        )
        t += mag * 0.7
        trig = (
            (np.abs(u - (ru0 + rec_len * 0.75)) < 0.015)
            & (v < -rec_h / 2)
            & (v > -rec_h / 2 - 0.04)
        )
        t += trig * 0.4
        return t

    def stock_t(xs, zs):
        dx, dz = xs - cx, zs - cz
        u = dx * ca + dz * sa
        v = -dx * sa + dz * ca
        if rifle:
            s = (
                (u >= -half)
                & (u < -half + 0.3 * length)
                & (v < rec_h / 2)
                & (v > -rec_h / 2 - 0.1 * (u + half - 0.3 * length) / (0.3 * length) * -1 - 0.02)
            )
            return s * 4.0
        g = (
            (np.abs(u - (-half + 0.1 * length) - 0.25 * (v + rec_h / 2)) < 0.018)
            & (v < -rec_h / 2)
            & (v > -rec_h / 2 - 0.1)
        )
        return g * 2.5

    r_ext = half + 0.25
    box = (cx - r_ext, cx + r_ext, cz - r_ext, cz + r_ext)
    got = _insert(cv, *box, steel_t, FE, STEEL, slot, 0.1)
    if not got:
        return None
    bbox, area, delta = got
    win = cv.window(*box)
    sl, xs, zs, cov = win
    st = np.broadcast_to(stock_t(xs, zs), cov.shape) * cov
    cv.maps[ORG][sl] += 1.1 * st
    stock_box = _footprint_box(sl, st > 0.05)
    if stock_box:
        (sx, sy, sw, sh), _ = stock_box
        x0_, y0_ = min(bbox[0], sx), min(bbox[1], sy)
        x1_, y1_ = max(bbox[0] + bbox[2], sx + sw), max(bbox[1] + bbox[3], sy + sh)
        bbox = (x0_, y0_, x1_ - x0_, y1_ - y0_)
    return Threat("weapon", slot.kind, bbox, area, delta, 3.5 if rifle else 0.9)


def _structural_slots(box: Box3, slots: list[Slot], rng) -> None:
    """Floor cavity, side-wall linings; concealment in the structure rather than the cargo."""
    if box.kind in ("tank", "flatrack"):
        return
    slots.append(
        Slot("floor", box.x0 + 0.3, box.x1 - 0.3, box.z0 - 0.16, box.z0 - 0.035, ORG, 0.0, 200)
    )
    slots.append(Slot("wall", box.x0 + 0.3, box.x1 - 0.3, box.z0 + 0.1, box.z1 - 0.1, ORG, 0.0, 10))
    if box.kind == "reefer":
        front_left = not box.door_at_left
        a = box.x0 - 0.45 if front_left else box.x1 + 0.05
        slots.append(Slot("reefer", a, a + 0.4, box.z0 + 0.5, box.z1 - 0.3, ORG, 0.04, 60))


def _add_threats(cv: Canvas, slots: list[Slot], n: int, rng) -> list[Threat]:
    threats: list[Threat] = []
    used: list[tuple[int, int, int, int]] = []
    tries = 0
    while len(threats) < n and tries < 60:
        tries += 1
        kind = str(rng.choice(["drugs", "cigarettes", "weapon"], p=[0.5, 0.25, 0.25]))
        if kind == "cigarettes":
            cands = [s for s in slots if s.cells and s.host_rho < 0.32]
        elif kind == "weapon":
            cands = [s for s in slots if s.kind in ("cargo", "cartons", "door", "free", "wall")]
        else:
            cands = [s for s in slots if s.kind != "floor" or rng.random() < 0.5]
        if not cands:
            continue
        slot = cands[int(rng.integers(len(cands)))]
        placer = {"drugs": _place_drugs, "cigarettes": _place_cigarettes, "weapon": _place_weapon}[
            kind
        ]
        snapshot = cv.maps.copy() if used else None
        threat = placer(cv, slot, rng)
        if threat is None:
            continue
        x, y, w, h = threat.bbox
        if any(
            x < ux + uw and ux < x + w and y < uy + uh and uy < y + h for ux, uy, uw, uh in used
        ):
            cv.maps[...] = snapshot  # overlapping an earlier object: undo
            continue
        used.append(threat.bbox)
        threats.append(threat)
    return threats


# ---------------------------------------------------------------------------
# A scan: the scene, then the acquisition chain, then the vendor's file.
# ---------------------------------------------------------------------------
def _scene(
    writer: Writer, rng: np.random.Generator, threat_rng: np.random.Generator | None, n_threats: int
):
    """Build the vehicle and its load on the writer's pixel grid; returns (canvas, threats, info)."""
    kind = str(
        rng.choice(
            ["dry", "hc", "reefer", "opentop", "flatrack", "tank"],
            p=[0.36, 0.22, 0.15, 0.1, 0.07, 0.1],
        )
    )
    if kind == "tank":
        lengths = [6.058]
    elif kind in ("dry", "reefer") and rng.random() < 0.45:
        lengths = [6.058] if rng.random() < 0.6 else [6.058, 6.058]
    elif kind == "hc" and rng.random() < 0.2:
        lengths = [13.716]
    else:
        lengths = [12.192]
    height = {"hc": 2.896, "flatrack": 2.3}.get(kind, 2.591)
    if kind == "reefer" and rng.random() < 0.5:
        height = 2.896
    cab = bool(rng.random() < 0.45)
    cab_len = rng.uniform(5.6, 6.2) if cab else 0.0
    trailer_len = max(
        sum(lengths) + 0.05 * (len(lengths) - 1), 12.5 if len(lengths) > 1 else sum(lengths) + 0.1
    )
    margin_a, margin_b = rng.uniform(0.2, 1.2), rng.uniform(0.2, 1.2)
    overlap = 1.4 if cab else 0.0  # the trailer's front sits over the tractor
    scene_len = margin_a + cab_len - overlap + trailer_len + margin_b
    col_m = rng.uniform(*writer.col_mm) / 1000
    cols = round(scene_len / col_m)
    if cols > 3000:
        col_m = scene_len / 3000
        if col_m > 0.0065:
            col_m = 0.0065
        cols = 3000
    if cols < 1500:
        extra = 1500 * col_m - scene_len
        margin_a += extra / 2
        margin_b += extra / 2
        cols = 1500
    row_m = writer.row_pitch_mm / 1000
    rows = writer.rows
    z_top = writer.z_bottom_m + rows * row_m
    deck = min(rng.uniform(1.18, 1.42), z_top - 0.35 - height)
    cv = Canvas(rows, cols, row_m, col_m, z_top)
    # Smooth texture field for cargo variation (cheap: coarse noise, blurred, zoomed).
    coarse = rng.standard_normal((rows // 8 + 2, cols // 8 + 2)).astype(np.float32)
    coarse = ndimage.gaussian_filter(coarse, 1.2)
    coarse /= coarse.std() + 1e-6
    cv.tex = ndimage.zoom(coarse, 8, order=1)[:rows, :cols]
    grain = rng.standard_normal((rows // 2 + 1, cols // 2 + 1)).astype(np.float32)
    grain = ndimage.gaussian_filter(grain, 0.8)
    grain /= grain.std() + 1e-6
    cv.fine = np.repeat(np.repeat(grain, 2, axis=0), 2, axis=1)[:rows, :cols]

    # Lay out left to right with the tractor (if any) at the front; flip later for direction.
    x = margin_a
    if cab:
        _cab(cv, x, x + cab_len, rng, facing_left=True)
        x += cab_len - overlap
    trailer_x0 = x
    trailer_info = _trailer(cv, trailer_x0, trailer_x0 + trailer_len, deck, rng, front_left=True)
    slots: list[Slot] = []
    if cab:
        slots.append(
            Slot("cab", margin_a + 0.3, margin_a + 1.9, deck + 0.2, deck + 1.4, ORG, 0.0, 150)
        )
    loads = []
    xc = trailer_x0 + (trailer_len - sum(lengths) - 0.05 * (len(lengths) - 1)) / 2
    for length in lengths:
        door_left = bool(rng.random() < 0.1)  # doors normally face the rear (right)
        box = _container(cv, xc, length, deck, kind, height, door_left, rng)
        loads.extend(_load(cv, box, rng, slots))
        _structural_slots(box, slots, rng)
        xc += length + 0.05
    threats = (
        _add_threats(cv, slots, n_threats, threat_rng)
        if threat_rng is not None and n_threats
        else []
    )
    info = {
        "container": kind,
        "lengths_m": lengths,
        "cab": cab,
        "cargo": loads,
        **trailer_info,
    }
    return cv, threats, info


def _acquire(
    cv: Canvas, writer: Writer, rng: np.random.Generator
) -> tuple[np.ndarray, dict[str, Any]]:
    """Beer-Lambert, beam, scatter, PSF, photon noise, gains: stored pixel values."""
    rows, cols = cv.rows, cv.cols
    attenuation = np.tensordot(MU_HIGH, cv.maps, axes=1).astype(np.float32)
    i0 = float(math.exp(rng.uniform(math.log(writer.i0[0]), math.log(writer.i0[1]))))
    droop = rng.uniform(*writer.profile_droop)
    rr = (np.arange(rows, dtype=np.float32) - rows * rng.uniform(0.4, 0.6)) / rows
    profile = 1.0 - droop * 4 * rr**2 + rng.uniform(-0.01, 0.01) * rr
    dose = (
        1.0 + writer.dose_residual * ndimage.gaussian_filter1d(rng.standard_normal(cols), 1.5) * 2
    )
    quanta = np.exp(-attenuation)
    quanta *= np.float32(i0)
    quanta *= profile[:, None].astype(np.float32)
    quanta *= dose[None, :].astype(np.float32)
    # Scatter glow (wide, weak) at quarter resolution, then the detector PSF.
    small = quanta[::4, ::4]
    glow = ndimage.gaussian_filter(small, 6.0)
    glow = ndimage.zoom(glow, 4, order=1)[:rows, :cols]
    quanta *= np.float32(1 - writer.glow)
    quanta += np.float32(writer.glow) * glow[: quanta.shape[0], : quanta.shape[1]]
    s_r, s_c = writer.psf_sigma
    quanta = ndimage.gaussian_filter(
        quanta, (s_r * rng.uniform(0.9, 1.1), s_c * rng.uniform(0.9, 1.1)), truncate=3.0
    )
    # Photon noise (Gaussian with the Poisson variance, plus electronic noise).
    noise = rng.standard_normal((rows, cols), dtype=np.float32)
    quanta += np.sqrt(quanta + 4.0) * noise
    # Row gains left after calibration (streaks).
    gains = 1.0 + writer.gain_residual * rng.standard_normal(rows).astype(np.float32)
    quanta *= gains[:, None]
    t_meas = quanta / np.float32(i0)
    max_stored = 2**writer.bits_stored - 1
    meta: dict[str, Any] = {"i0": round(i0), "profile_droop": round(float(droop), 4)}
    if writer.relationship == "LIN":
        level = float(rng.uniform(*writer.open_level))
        values = t_meas * np.float32(level * max_stored) + np.float32(writer.dark_counts)
        values = np.clip(np.rint(values), 0, max_stored)
        if writer.sign < 0:
            values = max_stored - values
        meta["open_level"] = round(level, 4)
    else:
        floor = writer.dark_counts / i0
        a_meas = -np.log(np.maximum(t_meas, np.float32(floor)))
        k = max_stored / (writer.log_max - writer.log_intercept)
        stored = (a_meas - np.float32(writer.log_intercept)) * np.float32(k)
        stored = np.clip(np.rint(stored), 0, max_stored)
        values = max_stored - stored if writer.sign > 0 else stored
        meta["log_scale"] = k
    return values.astype(np.uint16), meta


def _uid(seed: int, index: int, what: str) -> str:
    return generate_uid(entropy_srcs=[f"scanml-foreign/{seed}/{index}/{what}"])


def _write_dicom(
    path: Path, pixels: np.ndarray, writer: Writer, cv: Canvas, scan_id: str, seed: int, index: int
) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = writer.sop_class
    meta.MediaStorageSOPInstanceUID = _uid(seed, index, "sop")
    meta.TransferSyntaxUID = writer.transfer_uncompressed
    meta.ImplementationClassUID = "1.2.826.0.1.3680043.8.498.4242"
    meta.ImplementationVersionName = "FOREIGN_SCANS_1"
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = writer.sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = _uid(seed, index, "study")
    ds.SeriesInstanceUID = _uid(seed, index, "series")
    ds.Modality = "DX"
    ds.Manufacturer = writer.manufacturer
    ds.ManufacturerModelName = writer.model
    ds.InstitutionName = writer.site
    ds.StationName = writer.site.split("-")[0].upper()
    ds.SeriesDescription = scan_id
    ds.ContentDate = "20260301"
    ds.ContentTime = f"{8 + index % 10:02d}{index % 60:02d}00"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.SeriesNumber = 1
    ds.InstanceNumber = index + 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = writer.photometric
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 16
    ds.BitsStored = writer.bits_stored
    ds.HighBit = writer.bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PixelIntensityRelationship = writer.relationship
    ds.PixelIntensityRelationshipSign = writer.sign
    spacing = [round(cv.row_m * 1000, 4), round(cv.col_m * 1000, 4)]
    for tag in writer.spacing_tags:
        setattr(ds, tag, spacing)
    max_stored = 2**writer.bits_stored - 1
    if writer.relationship == "LOG":
        slope = (writer.log_max - writer.log_intercept) / max_stored
        ds.RescaleSlope = f"{slope:.10g}"[:16]
        ds.RescaleIntercept = f"{writer.log_intercept:g}"
        ds.RescaleType = "LOG_E"
    elif writer.rescale_lin is not None:
        ds.RescaleSlope = f"{writer.rescale_lin[0]:g}"
        ds.RescaleIntercept = f"{writer.rescale_lin[1]:g}"
        ds.RescaleType = "US"
    # The VOI window is in modality-LUT output units (after RescaleSlope/Intercept).
    slope = float(ds.get("RescaleSlope", 1.0))
    intercept = float(ds.get("RescaleIntercept", 0.0))
    lo = float(pixels.min()) * slope + intercept
    hi = float(pixels.max()) * slope + intercept
    ds.WindowCenter = f"{(lo + hi) / 2:.6g}"
    ds.WindowWidth = f"{max(hi - lo, slope):.6g}"
    if writer.rle:
        ds.PixelData = pixels.tobytes()
        try:
            ds.compress(
                RLELossless, pixels, encoding_plugin="pylibjpeg", generate_instance_uid=False
            )
        except (RuntimeError, ValueError, ImportError):
            ds.compress(RLELossless, pixels, generate_instance_uid=False)
    else:
        ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)


def _seeds(
    seed: int, index: int
) -> tuple[np.random.Generator, np.random.Generator, np.random.Generator]:
    ss = np.random.SeedSequence([seed, index, 0x5CA7])
    a, b, c = ss.spawn(3)
    return np.random.default_rng(a), np.random.default_rng(b), np.random.default_rng(c)


def _plan(n_scans: int, seed: int) -> list[tuple[int, str, int]]:
    """(scene, writer site, number of threats) per pair of scans.

    Scans come in pairs: one with 1-3 threats and its clean twin, the same
    vehicle, load and acquisition without them (:func:`render_scan`). So the
    clean and the anomalous scans show one distribution of scenes, and a
    detector that scores a kind of cargo or container high cannot rank the
    anomalous scans above the clean ones by it. An odd ``n_scans`` ends with
    a clean scene of its own (threat count 0).
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xF0E1]))
    n_pairs, single = divmod(n_scans, 2)
    sites = list(WRITERS)
    writers = [sites[i % len(sites)] for i in range(n_pairs + single)]
    rng.shuffle(writers)
    counts = [int(rng.choice([1, 2, 3], p=[0.55, 0.3, 0.15])) for _ in range(n_pairs)]
    return [(i, writers[i], counts[i] if i < n_pairs else 0) for i in range(n_pairs + single)]


def render_scan(seed: int, index: int, site: str, n_threats: int, with_threats: bool = True):
    """One scan's stored pixels, threats and scene description (deterministic).

    ``with_threats=False`` renders the same vehicle, load and noise without the
    threats: the clean twin a test can subtract.
    """
    writer = WRITERS[site]
    scene_rng, threat_rng, acq_rng = _seeds(seed, index)
    flip = bool(scene_rng.random() < 0.5)  # driving direction through the portal
    cv, threats, info = _scene(writer, scene_rng, threat_rng if with_threats else None, n_threats)
    if flip:
        cv.maps = cv.maps[:, :, ::-1].copy()
        threats = [
            Threat(
                t.category,
                t.concealment,
                (cv.cols - t.bbox[0] - t.bbox[2], t.bbox[1], t.bbox[2], t.bbox[3]),
                t.area,
                t.delta,
                t.mass_kg,
            )
            for t in threats
        ]
    pixels, acq = _acquire(cv, writer, acq_rng)
    info.update(acq)
    info["flipped"] = flip
    return pixels, cv, threats, info


# A scene whose load leaves no place for a threat is redrawn under another
# key, up to this many times, so every pair carries threats.
_REDRAWS = 8
_REDRAW_STRIDE = 1_000_003


def _write(out_dir: Path, seed: int, number: int, site: str, rendered) -> dict[str, Any]:
    pixels, cv, threats, info = rendered
    scan_id = f"foreign-{seed}-{number:04d}"
    rel = f"scans/{scan_id}.dcm"
    _write_dicom(out_dir / rel, pixels, WRITERS[site], cv, scan_id, seed, number)
    return {
        "scan_id": scan_id,
        "path": rel,
        "label": int(bool(threats)),
        "site": site,
        "height": cv.rows,
        "width": cv.cols,
        "spacing": (cv.row_m * 1000, cv.col_m * 1000),
        "threats": [t.__dict__ for t in threats],
        "info": info,
    }


def render_with_threats(seed: int, scene: int, site: str, n_threats: int):
    """(key, render_scan's result) for the first draw of ``scene`` whose load takes a threat.

    ``render_scan(seed, key, site, n_threats, with_threats=False)`` is its clean twin.
    """
    for redraw in range(_REDRAWS + 1):
        key = scene + redraw * _REDRAW_STRIDE
        rendered = render_scan(seed, key, site, n_threats)
        if rendered[2]:
            break
    return key, rendered


def _one(args: tuple[Path, int, int, str, int]) -> list[dict[str, Any]]:
    """One planned scene: the scan with its threats and its clean twin, or a clean scan alone."""
    out_dir, seed, scene, site, n_threats = args
    if not n_threats:
        return [_write(out_dir, seed, 2 * scene, site, render_scan(seed, scene, site, 0))]
    key, rendered = render_with_threats(seed, scene, site, n_threats)
    anomalous = _write(out_dir, seed, 2 * scene, site, rendered)
    twin = _write(
        out_dir, seed, 2 * scene + 1, site, render_scan(seed, key, site, n_threats, False)
    )
    anomalous["twin"], twin["twin"] = twin["scan_id"], anomalous["scan_id"]
    return [anomalous, twin]


def generate_foreign_dataset(
    out_dir: str | os.PathLike[str], n_scans: int = 200, seed: int = 0, workers: int = 2
) -> Path:
    """Write ``n_scans`` foreign scans, ``manifest.csv`` and ``annotations.json`` under ``out_dir``.

    Deterministic for a seed, whatever ``workers`` is. The scans come in
    pairs (:func:`_plan`): ``foreign-<seed>-<2k>`` carries threats and
    ``foreign-<seed>-<2k+1>`` is its clean twin (the manifest's ``twin`` column
    names the other). A scene whose load leaves no place for a threat is
    redrawn; should every redraw fail, the pair is written as two clean scans
    of that scene, so labels always agree with the boxes.
    """
    out = Path(out_dir)
    (out / "scans").mkdir(parents=True, exist_ok=True)
    jobs = [(out, seed, i, site, n) for i, site, n in _plan(n_scans, seed)]
    if workers > 1:
        ctx = multiprocessing.get_context(
            "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        )
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            pairs = list(pool.map(_one, jobs, chunksize=1))
    else:
        pairs = [_one(job) for job in jobs]
    results = [scan for pair in pairs for scan in pair]
    with open(out / "manifest.csv", "w", newline="", encoding="utf-8") as handle:
        w = csv.writer(handle)
        w.writerow(
            [
                "scan_id",
                "path",
                "label",
                "site",
                "split",
                "row_spacing_mm",
                "col_spacing_mm",
                "container",
                "cargo",
                "twin",
            ]
        )
        for r in results:
            w.writerow(
                [
                    r["scan_id"],
                    r["path"],
                    r["label"],
                    r["site"],
                    "test",
                    f"{r['spacing'][0]:.4f}",
                    f"{r['spacing'][1]:.4f}",
                    r["info"]["container"],
                    ";".join(r["info"]["cargo"]),
                    r.get("twin", ""),
                ]
            )
    coco: dict[str, Any] = {
        "info": {
            "description": "scanml foreign domain-shift test set (benchmarks/foreign_scans.py)",
            "seed": seed,
        },
        "images": [],
        "annotations": [],
        "categories": [{"id": k + 1, "name": name} for k, name in enumerate(CATEGORIES)],
    }
    cat_id = {name: k + 1 for k, name in enumerate(CATEGORIES)}
    for image_id, r in enumerate(results, start=1):
        coco["images"].append(
            {"id": image_id, "file_name": r["path"], "width": r["width"], "height": r["height"]}
        )
        for t in r["threats"]:
            coco["annotations"].append(
                {
                    "id": len(coco["annotations"]) + 1,
                    "image_id": image_id,
                    "category_id": cat_id[t["category"]],
                    "bbox": list(t["bbox"]),
                    "area": t["area"],
                    "iscrowd": 0,
                    "concealment": t["concealment"],
                    "attenuation_delta": round(t["delta"], 4),
                    "mass_kg": round(t["mass_kg"], 2),
                }
            )
    (out / "annotations.json").write_text(json.dumps(coco, indent=1), encoding="utf-8")
    (out / "scenes.json").write_text(
        json.dumps({r["scan_id"]: r["info"] for r in results}, indent=1, default=float),
        encoding="utf-8",
    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--n-scans", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    out = generate_foreign_dataset(args.out, args.n_scans, args.seed, args.workers)
    print(f"{args.n_scans} scans in {time.perf_counter() - start:.1f} s -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
