"""ISO containers as a side-view scanner sees them.

The beam crosses the container's width, so the structure shows in two ways:
steel that faces the beam (side walls, door panels) adds a few millimetres
of path, and steel that runs along the beam (floor cross-members, headers,
sills, the front wall's corrugation, the roof) adds its whole 2.35 m length
over a thin line. Hence the familiar picture: faint vertical corrugation
stripes over the load, a dark floor with a row of cross-member ticks under
it, dark corner posts and castings, and the door end's locking bars just
outside the rear posts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from scanml.physics import MATERIALS
from scanml.synth.render import Canvas
from scanml.synth.shapes import cylinder_along_x, member_across_ray, member_along_ray

__all__ = ["CONTAINER_SIZES", "ContainerGeometry", "ContainerSpec", "render_container"]

ContainerSize = Literal["20ft", "40ft", "40hc"]

# External length and height, internal length and height (cm), ISO 668.
CONTAINER_SIZES: dict[ContainerSize, tuple[float, float, float, float]] = {
    "20ft": (605.8, 259.1, 589.8, 239.3),
    "40ft": (1219.2, 259.1, 1203.2, 239.3),
    "40hc": (1219.2, 289.6, 1203.2, 269.8),
}
INNER_WIDTH_CM = 235.2
FLOOR_TOP_CM = 18.0  # interior floor above the container's underside
REEFER_UNIT_CM = 42.0  # depth of a reefer's machinery at the front end
REEFER_WALL_CM = 10.0  # insulated end wall behind the machinery
REEFER_INNER_WIDTH_CM = 229.0

STEEL = MATERIALS["steel"]
WOOD = MATERIALS["wood"]
ALUMINIUM = MATERIALS["aluminium"]
FOAM = MATERIALS["foam"]
COPPER = MATERIALS["copper"]


@dataclass(frozen=True)
class ContainerSpec:
    """Which container: its size, and whether it is a refrigerated one."""

    size: ContainerSize
    reefer: bool
    varied_floor: bool = False  # draw the floor's build (see _floor); off: one standard floor

    @property
    def length_cm(self) -> float:
        """External length."""
        return CONTAINER_SIZES[self.size][0]

    @property
    def height_cm(self) -> float:
        """External height."""
        return CONTAINER_SIZES[self.size][1]


@dataclass(frozen=True)
class ContainerGeometry:
    """Where the load can go, in world cm: what cargo and concealment placement need."""

    spec: ContainerSpec
    x_front: float  # outer front (nose) end
    x_rear: float  # outer rear (door) end
    y_bottom: float  # underside
    inner_x0: float
    inner_x1: float
    inner_y0: float  # top of the floor
    inner_y1: float  # underside of the roof
    inner_width: float  # along the ray
    reefer_unit: tuple[float, float, float, float] | None  # x0, x1, y0, y1 of its free space
    floor_cavity: tuple[float, float]  # y range between the cross-members, under the floor

    @property
    def inner_length(self) -> float:
        """Usable length of the cargo space."""
        return self.inner_x1 - self.inner_x0

    @property
    def inner_height(self) -> float:
        """Usable height of the cargo space."""
        return self.inner_y1 - self.inner_y0


def render_container(
    canvas: Canvas, spec: ContainerSpec, x_front: float, y_bottom: float, rng: np.random.Generator
) -> ContainerGeometry:
    """Deposit the container's structure with its nose at ``x_front`` (doors towards +x)."""
    length, height, inner_length, inner_height = CONTAINER_SIZES[spec.size]
    x_rear = x_front + length
    y_top = y_bottom + height
    inner_y0 = y_bottom + FLOOR_TOP_CM
    end_gap = 0.5 * (length - inner_length)
    inner_x0, inner_x1 = x_front + end_gap, x_rear - end_gap
    inner_width = INNER_WIDTH_CM
    reefer_unit = None
    if spec.reefer:
        inner_width = REEFER_INNER_WIDTH_CM
        reefer_unit = _reefer_machinery(canvas, x_front, y_bottom, y_top, rng)
        inner_x0 = x_front + REEFER_UNIT_CM + REEFER_WALL_CM
        _reefer_walls(canvas, inner_x0, x_rear, inner_y0, y_top, rng)
    else:
        _side_walls(canvas, x_front + 12.0, x_rear - 12.0, y_bottom + 16.0, y_top - 6.0, rng)
        _front_wall(canvas, x_front, y_bottom, y_top, rng)
    _floor(canvas, spec, x_front, x_rear, y_bottom, rng)
    _top_rails(canvas, x_front, x_rear, y_top)
    inner_y1 = inner_y0 + inner_height
    if spec.reefer:
        inner_y1 = min(inner_y1, _reefer_roof(canvas, inner_x0, x_rear - 10.0, y_top, rng))
    else:
        _roof(canvas, x_front, x_rear, y_top, rng)
    _corners(canvas, x_front, x_rear, y_bottom, y_top)
    _doors(canvas, x_rear, y_bottom, y_top, rng)
    return ContainerGeometry(
        spec=spec,
        x_front=x_front,
        x_rear=x_rear,
        y_bottom=y_bottom,
        inner_x0=inner_x0,
        inner_x1=inner_x1,
        inner_y0=inner_y0,
        inner_y1=inner_y1,
        inner_width=inner_width,
        reefer_unit=reefer_unit,
        floor_cavity=(y_bottom + 4.5, y_bottom + 15.0),
    )


def _side_walls(
    canvas: Canvas, x0: float, x1: float, y0: float, y1: float, rng: np.random.Generator
) -> None:
    """Two trapezoidal corrugated steel panels facing the beam: the vertical stripes.

    A ray crosses each panel once; where the panel is inclined (the webs of
    the trapezoid) the path through the plate is longer by ``1 / cos``,
    and the two walls' corrugations are out of phase.
    """
    thickness = rng.choice([0.16, 0.20])
    pitch = rng.uniform(27.0, 28.6)
    incline = np.deg2rad(rng.uniform(45.0, 62.0))
    phases = rng.uniform(0.0, pitch, 2)

    def path(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        total = np.zeros_like(xs)
        for phase in phases:
            position = np.mod(xs - x0 + phase, pitch) / pitch
            # Flats fill 52 % of a period, the two webs the rest.
            web = (np.abs(position - 0.26) < 0.12) | (np.abs(position - 0.76) < 0.12)
            total = total + np.where(web, thickness / np.cos(incline), thickness)
        return total

    canvas.box(STEEL, x0, x1, y0, y1, path)
    # Dents and repair patches: real walls are rarely pristine.
    for _ in range(rng.poisson(2.0)):
        px = rng.uniform(x0, x1 - 60.0)
        py = rng.uniform(y0, y1 - 60.0)
        canvas.box(STEEL, px, px + rng.uniform(20, 60), py, py + rng.uniform(20, 60), 0.3)


def _front_wall(
    canvas: Canvas, x_front: float, y_bottom: float, y_top: float, rng: np.random.Generator
) -> None:
    """The front wall lies along the beam: its corrugation shows as a dark double line."""
    depth = rng.uniform(3.6, 4.6)
    x0 = x_front + 1.5
    flats = 0.28 * INNER_WIDTH_CM
    canvas.box(STEEL, x0, x0 + depth, y_bottom + 16.0, y_top - 6.0, 2.0 * 8.5 * 0.25)
    canvas.box(STEEL, x0, x0 + 0.2, y_bottom + 16.0, y_top - 6.0, flats)
    canvas.box(STEEL, x0 + depth - 0.2, x0 + depth, y_bottom + 16.0, y_top - 6.0, flats)


def _reefer_walls(
    canvas: Canvas, x0: float, x1: float, y0: float, y1: float, rng: np.random.Generator
) -> None:
    """Smooth insulated sandwich walls: stainless skin, foam, aluminium lining, seams."""
    canvas.box(STEEL, x0, x1, y0, y1, 2 * 0.1)
    canvas.box(ALUMINIUM, x0, x1, y0, y1, 2 * 0.12)
    canvas.box(FOAM, x0, x1, y0, y1, 2 * 9.0)
    seam_pitch = rng.uniform(90.0, 130.0)
    for seam in np.arange(x0 + seam_pitch, x1 - 10.0, seam_pitch):
        canvas.box(ALUMINIUM, seam, seam + 1.2, y0, y1, 4.0)
    # The T-bar aluminium floor: many thin webs along the vehicle, crossed by the ray.
    canvas.box(ALUMINIUM, x0, x1, y0, y0 + 6.5, REEFER_INNER_WIDTH_CM * 0.12)


def _reefer_machinery(
    canvas: Canvas, x_front: float, y_bottom: float, y_top: float, rng: np.random.Generator
) -> tuple[float, float, float, float]:
    """Compressor, condenser coil, fans and frame at the front end; returns its open space."""
    x0, x1 = x_front + 2.0, x_front + REEFER_UNIT_CM
    base = y_bottom + 15.0
    member_across_ray(
        canvas, STEEL, x0, x1, base, y_top - 8.0, depth=INNER_WIDTH_CM, wall=0.4, axis="y"
    )
    # Compressor: a dense cast-iron block low in the unit.
    cx = x0 + rng.uniform(4.0, 10.0)
    canvas.box(
        STEEL, cx, cx + 28.0, base + 5.0, base + 45.0, rng.uniform(18.0, 30.0), texture=(0.05, 0.1)
    )
    # Condenser coil: copper tubes in aluminium fins over most of the height.
    coil_y0, coil_y1 = base + 50.0, base + 50.0 + rng.uniform(70.0, 95.0)
    tube_pitch = 2.5
    for ty in np.arange(coil_y0, coil_y1, tube_pitch):
        cylinder_along_x(canvas, COPPER, x0 + 5.0, x1 - 5.0, ty, 0.5, count=12.0)
    canvas.box(ALUMINIUM, x0 + 5.0, x1 - 5.0, coil_y0, coil_y1, 10.0)
    # Fan motors and the control box.
    for fy in (coil_y1 + 25.0, y_top - 45.0):
        canvas.disc(STEEL, x0 + 0.5 * REEFER_UNIT_CM, fy, 9.0, 25.0)
    canvas.box(STEEL, x1 - 14.0, x1 - 2.0, base + 5.0, base + 40.0, 3.0)
    canvas.box(FOAM, x1, x1 + REEFER_WALL_CM, base, y_top - 8.0, INNER_WIDTH_CM)
    canvas.box(STEEL, x1 + REEFER_WALL_CM - 0.3, x1 + REEFER_WALL_CM, base, y_top - 8.0, 60.0)
    return x0 + 4.0, x1 - 4.0, base + 48.0, y_top - 20.0


@dataclass(frozen=True)
class _FloorBuild:
    """How one builder made a floor; heights in cm above the container's underside."""

    plywood_bottom: float = 15.2  # 28 mm plywood up to the floor top at 18 cm
    wood_density: float = 0.72
    rail_wall: float = 0.45
    member_bottom: float = 3.0  # cross-members from here up to 15.2 cm
    member_wall: float = 0.4
    max_pitch: float = 33.0

    @classmethod
    def draw(cls, rng: np.random.Generator) -> _FloorBuild:
        """Plywood 24-40 mm of 0.6-0.95 g/cm3, rails and cross-members of other gauges."""
        return cls(
            plywood_bottom=18.0 - rng.uniform(2.4, 4.0),
            wood_density=rng.uniform(0.6, 0.95),
            rail_wall=rng.uniform(0.4, 0.6),
            member_bottom=15.2 - rng.uniform(9.0, 12.2),
            member_wall=rng.uniform(0.3, 0.6),
            max_pitch=36.0,
        )


def _floor(
    canvas: Canvas,
    spec: ContainerSpec,
    x_front: float,
    x_rear: float,
    y_bottom: float,
    rng: np.random.Generator,
) -> None:
    """Plywood floor seen along its plane, bottom rails, and the cross-member ticks beneath.

    Without ``spec.varied_floor`` one builder's floor (every dataset before
    scene variety). With it, floors differ between builders and ages
    (plywood thickness and wood, a protective layer of board or plastic over
    part of it, rails and cross-members of different gauges), so that the
    floor's darkness alone says nothing: a floor-cavity concealment shows as
    a local change along it, not as a darker floor than one builder's.
    """
    floor_wood = 0.0 if spec.reefer else INNER_WIDTH_CM
    build = _FloorBuild.draw(rng) if spec.varied_floor else _FloorBuild()
    canvas.box(
        WOOD,
        x_front + 10.0,
        x_rear - 10.0,
        y_bottom + build.plywood_bottom,
        y_bottom + 18.0,
        floor_wood,
        density=build.wood_density,
    )
    if spec.varied_floor and floor_wood and rng.random() < 0.25:
        # A protective layer (board, plastic sheet, dunnage mats) over a stretch of the floor.
        x0 = rng.uniform(x_front + 10.0, x_rear - 150.0)
        x1 = min(x_rear - 10.0, x0 + rng.uniform(100.0, x_rear - x_front))
        material = MATERIALS["cardboard"] if rng.random() < 0.6 else MATERIALS["plastic"]
        canvas.box(
            material,
            x0,
            x1,
            y_bottom + 18.0,
            y_bottom + 18.0 + rng.uniform(0.3, 2.0),
            INNER_WIDTH_CM * rng.uniform(0.5, 1.0),
        )
    # Bottom side rails: 160 mm channels along the vehicle on both sides.
    member_across_ray(
        canvas,
        STEEL,
        x_front,
        x_rear,
        y_bottom + 1.0,
        y_bottom + 16.0,
        depth=2 * 4.5,
        wall=build.rail_wall,
        axis="x",
    )
    pitch = rng.uniform(25.0, build.max_pitch)
    start = x_front + 15.0 + rng.uniform(0.0, pitch)
    for xc in np.arange(start, x_rear - 20.0, pitch):
        member_along_ray(
            canvas,
            STEEL,
            xc,
            xc + 4.5,
            y_bottom + build.member_bottom,
            y_bottom + 15.2,
            length=INNER_WIDTH_CM,
            wall=build.member_wall,
            sides="tbl",
        )
    if spec.size != "20ft":
        # The gooseneck tunnel at the front of a 40 ft: a raised steel plate between the rails.
        canvas.box(STEEL, x_front + 10.0, x_front + 330.0, y_bottom + 12.0, y_bottom + 12.6, 100.0)


def _roof(
    canvas: Canvas, x_front: float, x_rear: float, y_top: float, rng: np.random.Generator
) -> None:
    """Corrugated roof panel seen edge-on: a thin zigzag line, plus the top side rails."""
    pitch = rng.uniform(18.0, 24.0)
    depth = rng.uniform(1.2, 2.0)
    plate = 0.2
    roof_y0, roof_y1 = y_top - depth - 1.5, y_top - 0.3

    def zigzag(xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        phase = np.abs(np.mod(xs - x_front, pitch) / pitch - 0.5) * 2.0
        centre = y_top - 0.5 - depth * phase
        half = 0.5 * plate * np.sqrt(1.0 + (4.0 * depth / pitch) ** 2)
        row_half = 0.5 * canvas.row_cm
        overlap = np.minimum(ys + row_half, centre + half) - np.maximum(
            ys - row_half, centre - half
        )
        return np.clip(overlap / canvas.row_cm, 0.0, 1.0), np.full_like(centre, INNER_WIDTH_CM)

    canvas.box(STEEL, x_front + 10.0, x_rear - 10.0, roof_y0, roof_y1, zigzag)


def _top_rails(canvas: Canvas, x_front: float, x_rear: float, y_top: float) -> None:
    """The top side rails along both sides, whatever the roof."""
    member_across_ray(
        canvas, STEEL, x_front, x_rear, y_top - 6.5, y_top - 0.5, depth=2 * 6.0, wall=0.3, axis="x"
    )


def _reefer_roof(
    canvas: Canvas, x0: float, x1: float, y_top: float, rng: np.random.Generator
) -> float:
    """An insulated roof panel seen edge-on; returns the underside of its lining.

    The two skins of the sandwich lie along the beam, so each shows as a
    bright line across the whole box (a ray travels the box's width in the
    sheet), with the foam as a faint band between them: the picture a reefer
    gives instead of a corrugated roof's thin zigzag.
    """
    skin = y_top - rng.uniform(0.5, 1.5)
    foam = rng.uniform(8.0, 14.0)
    canvas.box(ALUMINIUM, x0, x1, skin - rng.uniform(0.08, 0.15), skin, REEFER_INNER_WIDTH_CM)
    canvas.box(FOAM, x0, x1, skin - foam, skin, REEFER_INNER_WIDTH_CM)
    lining_y = skin - foam
    if rng.random() < 0.6:
        lining, thickness = ALUMINIUM, rng.uniform(0.1, 0.2)
    else:
        lining, thickness = STEEL, rng.uniform(0.05, 0.1)  # stainless
    canvas.box(lining, x0, x1, lining_y - thickness, lining_y, REEFER_INNER_WIDTH_CM)
    return lining_y - thickness


def _corners(canvas: Canvas, x_front: float, x_rear: float, y_bottom: float, y_top: float) -> None:
    """Corner posts (both sides overlap in projection) and the eight castings."""
    for x0, x1, wall in ((x_front, x_front + 15.0, 0.6), (x_rear - 15.0, x_rear, 0.8)):
        member_across_ray(
            canvas, STEEL, x0, x1, y_bottom, y_top, depth=12.0, wall=wall, axis="y", count=2
        )
        for cy0 in (y_bottom, y_top - 11.8):
            cx0 = x0 if x0 == x_front else x1 - 17.8
            canvas.box(STEEL, cx0, cx0 + 17.8, cy0, cy0 + 11.8, 2 * 16.2 * 0.42)
        # Headers and sills run along the ray at both ends.
        member_along_ray(
            canvas, STEEL, x0, x1, y_top - 18.0, y_top - 6.0, length=INNER_WIDTH_CM, wall=0.6
        )
        member_along_ray(
            canvas, STEEL, x0, x1, y_bottom + 2.0, y_bottom + 16.0, length=INNER_WIDTH_CM, wall=0.6
        )


def _doors(
    canvas: Canvas, x_rear: float, y_bottom: float, y_top: float, rng: np.random.Generator
) -> None:
    """Door leaves (horizontal corrugation seen edge-on), locking bars, cam keepers, hinges."""
    door_x0 = x_rear - 6.0
    y0, y1 = y_bottom + 16.0, y_top - 18.0
    pitch = rng.uniform(25.0, 32.0)
    for ry in np.arange(y0 + 0.5 * pitch, y1, pitch):
        canvas.box(STEEL, door_x0, door_x0 + 0.25, ry, ry + 0.25 * pitch, INNER_WIDTH_CM * 0.9)
        canvas.box(
            STEEL,
            door_x0 + 3.0,
            door_x0 + 3.25,
            ry - 0.5 * pitch,
            ry - 0.25 * pitch,
            INNER_WIDTH_CM * 0.9,
        )
    canvas.box(STEEL, door_x0, door_x0 + 3.5, y0, y1, 8.0)
    # Four locking bars, all at the same x: their chords add up.
    radius = rng.uniform(1.3, 1.7)
    bar_x = x_rear + 0.5

    def bars(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        return 4.0 * 2.0 * np.sqrt(np.maximum(radius**2 - (xs - bar_x - radius) ** 2, 0.0))

    canvas.box(STEEL, bar_x, bar_x + 2.0 * radius, y_bottom + 4.0, y_top - 4.0, bars)
    for cam_y in (y_bottom + 6.0, y_top - 14.0):
        canvas.box(STEEL, bar_x - 2.0, bar_x + 5.0, cam_y, cam_y + 8.0, 4 * 6.0)
    handle_y = y_bottom + rng.uniform(115.0, 140.0)
    canvas.box(STEEL, bar_x + 2.0, bar_x + 6.0, handle_y, handle_y + 30.0, 4 * 2.5)
    for hinge_y in np.linspace(y_bottom + 30.0, y_top - 35.0, 4):
        canvas.box(STEEL, x_rear - 2.0, x_rear + 4.5, hinge_y, hinge_y + 9.0, 2 * 7.0)
