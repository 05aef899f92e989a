"""What smugglers hide, drawn on a canvas: brick stacks, cigarette cases, firearms, cash and copper.

Each renderer deposits one object into a ``w x h`` rectangle (cm), with
``depth`` cm along the ray, displacing the host cargo it sits in (a
:class:`~scanml.synth.load_base.CargoSlot`) where there is one, and reports
its material and mass. Where they are put is :mod:`scanml.synth.concealment`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from scanml.physics import MATERIALS, Material
from scanml.synth.load_base import CargoSlot
from scanml.synth.load_base import log_uniform_or_low as _log_uniform
from scanml.synth.render import Canvas, PathFunction
from scanml.synth.shapes import pillow

__all__ = ["OBJECTS", "Placed", "bag_of_bricks", "bricks", "cases", "other_goods", "weapons"]

STEEL = MATERIALS["steel"]
PLASTIC = MATERIALS["plastic"]
TEXTILE = MATERIALS["textile"]
CARDBOARD = MATERIALS["cardboard"]
COCAINE = MATERIALS["cocaine"]
TOBACCO = MATERIALS["tobacco"]
PAPER = MATERIALS["paper"]
COPPER = MATERIALS["copper"]
WOOD = MATERIALS["wood"]
BOARD = 0.5  # cm of corrugated board in a case wall
# The seams' depth between bricks, drawn log-uniformly per stack: from a slab
# whose seams barely show (staggered layers) to gaps through the whole stack.
SEAM_STRENGTH = (0.05, 1.0)


@dataclass(frozen=True)
class Placed:
    """What an object renderer reports back: its material and mass."""

    material: str
    mass_kg: float


def _object_drugs(
    canvas: Canvas, x0: float, y0: float, w: float, h: float, rng: np.random.Generator
) -> Placed:
    return bricks(
        canvas,
        x0,
        y0,
        _log_uniform(rng, 20.0, w),
        _log_uniform(rng, 8.0, 0.5 * h),
        _log_uniform(rng, 10.0, 120.0),
        rng,
        material=COCAINE,
    )


def _object_cigarettes(
    canvas: Canvas, x0: float, y0: float, w: float, h: float, rng: np.random.Generator
) -> Placed:
    return cases(
        canvas,
        x0,
        y0,
        58.0 * int(rng.integers(1, 4)),
        28.0 * int(rng.integers(1, 5)),
        45.0 * int(rng.integers(1, 5)),
        rng,
    )


def _object_other(
    canvas: Canvas, x0: float, y0: float, w: float, h: float, rng: np.random.Generator
) -> Placed:
    return other_goods(
        canvas,
        x0,
        y0,
        _log_uniform(rng, 20.0, 100.0),
        _log_uniform(rng, 10.0, 50.0),
        rng,
        depth=rng.uniform(10.0, 60.0),
    )


OBJECTS: dict[str, Callable[[Canvas, float, float, float, float, np.random.Generator], Placed]] = {
    "drugs": _object_drugs,
    "cigarettes": _object_cigarettes,
    "weapon": lambda canvas, x0, y0, w, h, rng: weapons(canvas, x0, y0, 110.0, 60.0, rng),
    "other": _object_other,
}


def bricks(
    canvas: Canvas,
    x0: float,
    y0: float,
    w: float,
    h: float,
    depth: float,
    rng: np.random.Generator,
    *,
    material: Material,
    host: CargoSlot | None = None,
    brick: tuple[float, float] | None = None,
) -> Placed:
    """A stack of wrapped bricks (about 1 kg each) filling ``w x h``, ``depth`` cm along the ray."""
    brick_w, brick_h = (
        brick if brick is not None else (rng.uniform(17.0, 32.0), rng.uniform(3.5, 8.0))
    )
    n_x, n_y = max(1, round(w / brick_w)), max(1, round(h / brick_h))
    grid = _BrickGrid(
        x0,
        y0,
        w / n_x,
        h / n_y,
        depth,
        rng.normal(1.0, 0.05, (n_y, n_x)).astype(np.float32),
        rng.uniform(0.2, 0.8),
        _log_uniform(rng, *SEAM_STRENGTH),
    )
    density = rng.uniform(0.95, 1.25) * material.density
    _deposit_with_displacement(canvas, material, x0, x0 + w, y0, y0 + h, grid, density, host)
    canvas.box(PLASTIC, x0, x0 + w, y0, y0 + h, lambda xs, ys: 0.03 * grid(xs, ys))
    fill = float(grid.amount.mean()) * (1.0 - 0.1 * grid.seam)
    return Placed(material.name, density * w * h * depth * fill / 1000.0)


def cases(
    canvas: Canvas,
    x0: float,
    y0: float,
    w: float,
    h: float,
    depth: float,
    rng: np.random.Generator,
    *,
    host: CargoSlot | None = None,
    case: tuple[float, float] = (58.0, 28.0),
) -> Placed:
    """Cigarette master cases (50 cartons each): tobacco in a regular pattern of cartons."""
    n_x, n_y = max(1, round(w / case[0])), max(1, round(h / case[1]))
    case_w, case_h = w / n_x, h / n_y
    density = rng.uniform(0.22, 0.32)
    carton = case_w / max(1, round(case_w / 5.5))

    def cartons(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        lx = np.mod(xs - x0, case_w)
        ly = np.mod(ys - y0, case_h)
        edge = (lx < 0.8) | (lx > case_w - 0.8) | (ly < 0.8) | (ly > case_h - 0.8)
        seam = np.mod(lx, carton) < 0.6
        return depth * np.where(edge, 0.0, np.where(seam, 0.8, 1.0))

    _deposit_with_displacement(canvas, TOBACCO, x0, x0 + w, y0, y0 + h, cartons, density, host)
    canvas.box(CARDBOARD, x0, x0 + w, y0, y0 + h, 2.0 * BOARD * depth / 45.0 + 0.1 * depth)
    return Placed("tobacco", density * w * h * depth * 0.92 / 1000.0)


def weapons(
    canvas: Canvas, x0: float, y0: float, w: float, h: float, rng: np.random.Generator
) -> Placed:
    """One to five pistols or rifles, turned and tilted at random within ``w x h``."""
    mass = 0.0
    for _ in range(int(rng.integers(1, 6))):
        rifle = rng.random() < 0.35
        length = rng.uniform(85.0, 105.0) if rifle else rng.uniform(17.0, 22.0)
        cx = x0 + rng.uniform(0.3, 0.7) * w
        cy = y0 + rng.uniform(0.3, 0.7) * h
        angle = rng.uniform(0.0, 2.0 * np.pi)
        # Turned about the vertical axis: shorter in projection, thicker along the ray.
        tilt = rng.uniform(0.35, 1.0)
        for part in _RIFLE if rifle else _PISTOL:
            mass += _weapon_part(canvas, cx, cy, length, angle, tilt, part)
    return Placed("steel", mass)


@dataclass(frozen=True)
class _Part:
    """A part of a firearm in units of its overall length: centre, half-sizes, thickness."""

    u: float
    v: float
    half_u: float
    half_v: float
    thickness_cm: float
    material: str
    round: bool = False  # a barrel: chord of a cylinder rather than a plate


_PISTOL = (
    _Part(0.0, 0.16, 0.5, 0.09, 2.6, "steel"),  # slide and barrel
    _Part(-0.28, -0.18, 0.12, 0.28, 2.9, "plastic"),  # grip
    _Part(-0.28, -0.18, 0.07, 0.24, 2.0, "steel"),  # magazine
    _Part(-0.05, -0.07, 0.1, 0.04, 0.6, "steel"),  # trigger guard
)
_RIFLE = (
    _Part(0.28, 0.02, 0.26, 0.012, 2.0, "steel", round=True),  # barrel
    _Part(-0.05, 0.0, 0.14, 0.045, 4.0, "steel"),  # receiver
    _Part(-0.02, -0.12, 0.035, 0.08, 2.5, "steel"),  # magazine
    _Part(-0.36, -0.02, 0.16, 0.06, 4.0, "wood"),  # stock
)


def _weapon_part(
    canvas: Canvas, cx: float, cy: float, length: float, angle: float, tilt: float, part: _Part
) -> float:
    """Deposit one part, rotated by ``angle`` and foreshortened by ``tilt``; return its mass (kg)."""
    cos, sin = np.cos(angle), np.sin(angle)
    pu, pv = part.u * length * tilt, part.v * length
    px, py = cx + pu * cos - pv * sin, cy + pu * sin + pv * cos
    half_u, half_v = part.half_u * length * tilt, part.half_v * length
    extent = abs(half_u * cos) + abs(half_v * sin), abs(half_u * sin) + abs(half_v * cos)
    pixel = 0.5 * (canvas.row_cm + canvas.col_cm)
    thickness = part.thickness_cm / tilt if not part.round else part.thickness_cm

    def shape(xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        du = (xs - px) * cos + (ys - py) * sin
        dv = -(xs - px) * sin + (ys - py) * cos
        outside = np.maximum(np.abs(du) - half_u, np.abs(dv) - half_v)
        coverage = np.clip(0.5 - outside / pixel, 0.0, 1.0)
        if part.round:
            return coverage, thickness * np.sqrt(np.maximum(1.0 - (dv / half_v) ** 2, 0.0))
        return coverage, np.full_like(coverage, thickness)

    material = MATERIALS[part.material]
    canvas.box(
        material,
        px - extent[0] - pixel,
        px + extent[0] + pixel,
        py - extent[1] - pixel,
        py + extent[1] + pixel,
        shape,
    )
    return (
        material.density * 4.0 * part.half_u * part.half_v * length**2 * part.thickness_cm / 1000.0
    )


def other_goods(
    canvas: Canvas,
    x0: float,
    y0: float,
    w: float,
    h: float,
    rng: np.random.Generator,
    *,
    depth: float,
    host: CargoSlot | None = None,
) -> Placed:
    """Banknote bundles (paper bricks) or copper wire coils."""
    if rng.random() < 0.5:
        return bricks(
            canvas,
            x0,
            y0,
            w,
            h,
            depth,
            rng,
            material=PAPER,
            host=host,
            brick=(16.0, rng.uniform(3.0, 8.0)),
        )
    radius = min(w, h) * 0.5
    n = max(1, int(w // (2.0 * radius)))
    thickness = min(depth, rng.uniform(5.0, 20.0))
    mass = 0.0
    for k in range(n):
        xc, yc = x0 + radius * (2 * k + 1), y0 + radius
        canvas.disc(COPPER, xc, yc, radius, thickness * 0.7, r_in=radius * 0.5)
        mass += COPPER.density * 0.7 * np.pi * 0.75 * radius**2 * thickness / 1000.0
    return Placed("copper", mass)


@dataclass(frozen=True)
class _BrickGrid:
    """Wrapped bricks on a grid with thin gaps and rounded edges; one amount per brick."""

    x0: float
    y0: float
    width: float
    height: float
    depth: float
    amount: np.ndarray  # [rows, columns]
    gap: float
    # How far the path drops at a seam, as a fraction of the brick's own
    # depth: 1 where every brick along the ray sits in the same column (the
    # gaps line up), near 0 where the layers are staggered or pressed
    # together and the stack projects as an almost even slab.
    seam: float = 1.0

    def __call__(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        n_y, n_x = self.amount.shape
        col = np.clip(((xs - self.x0) // self.width).astype(np.int64), 0, n_x - 1)
        row = np.clip(((ys - self.y0) // self.height).astype(np.int64), 0, n_y - 1)
        u = ((xs - self.x0 - col * self.width) / self.width) * 2.0 - 1.0
        v = ((ys - self.y0 - row * self.height) / self.height) * 2.0 - 1.0
        edge_u = 1.0 - self.gap / self.width
        edge_v = 1.0 - self.gap / self.height
        profile = np.sqrt(
            np.maximum(1.0 - (np.abs(u) / edge_u) ** 8 - (np.abs(v) / edge_v) ** 8, 0.0)
        )
        return self.depth * self.amount[row, col] * (1.0 - self.seam * (1.0 - profile))


def _deposit_with_displacement(
    canvas: Canvas,
    material: Material,
    x0: float,
    x1: float,
    y0: float,
    y1: float,
    path: PathFunction,
    density: float,
    host: CargoSlot | None,
) -> None:
    """Remove the cargo the object pushes aside (if it sits in cargo), then add the object."""
    if host is not None:
        host_path = host.path

        def displaced(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
            return -np.minimum(np.asarray(path(xs, ys)), np.asarray(host_path(xs, ys)))

        canvas.box(
            host.material, x0, x1, y0, y1, displaced, density=host.density, texture=host.texture
        )
    canvas.box(material, x0, x1, y0, y1, path, density=density, texture=(0.03, 0.04))


def bag_of_bricks(
    canvas: Canvas, x0: float, y0: float, w: float, h: float, rng: np.random.Generator
) -> Placed:
    """A duffel bag: a soft textile shell around a loose pile of bricks."""
    pillow(canvas, TEXTILE, x0, x0 + w, y0, y0 + h, depth=rng.uniform(30.0, 40.0), density=0.08)
    return bricks(
        canvas, x0 + 3.0, y0 + 2.0, w - 6.0, h - 6.0, rng.uniform(20.0, 32.0), rng, material=COCAINE
    )
