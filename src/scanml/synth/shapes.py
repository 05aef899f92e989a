"""Path-length shapes shared by the vehicle, the container and the cargo.

Each function deposits one kind of solid onto a :class:`~scanml.synth.render.Canvas`
by the length of its chord along the ray (``z``), so cylinders come out
brighter at their rims than at their centres and steel members seen along
their length come out as thin dark outlines, as they do on real scans.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from scanml.physics import MATERIALS, Material
from scanml.synth.render import Canvas

__all__ = [
    "cylinder_along_x",
    "member_across_ray",
    "member_along_ray",
    "pillow",
    "tyre",
    "upright_cylinders",
]

STEEL = MATERIALS["steel"]
RUBBER = MATERIALS["rubber"]


def member_along_ray(
    canvas: Canvas,
    material: Material,
    x0: float,
    x1: float,
    y0: float,
    y1: float,
    *,
    length: float,
    wall: float,
    sides: str = "tblr",
) -> None:
    """A hollow steel section whose axis runs along the ray (cross-members, headers, sills).

    A ray inside the section meets no steel; a ray through a wall travels
    the section's whole ``length`` in it. The projection is an outline of
    the walls named in ``sides`` (top, bottom, left, right).
    """
    strips = {
        "t": (x0, x1, y1 - wall, y1),
        "b": (x0, x1, y0, y0 + wall),
        "l": (x0, x0 + wall, y0, y1),
        "r": (x1 - wall, x1, y0, y1),
    }
    for side in sides:
        sx0, sx1, sy0, sy1 = strips[side]
        canvas.box(material, sx0, sx1, sy0, sy1, length)


def member_across_ray(
    canvas: Canvas,
    material: Material,
    x0: float,
    x1: float,
    y0: float,
    y1: float,
    *,
    depth: float,
    wall: float,
    axis: Literal["x", "y"],
    count: int = 1,
) -> None:
    """``count`` hollow box sections of ``depth`` (along the ray) whose axis is across it.

    Rails along the vehicle (``axis="x"``) and posts (``axis="y"``): every
    ray crosses the two walls facing the beam, and the two walls parallel to
    the ray show as lines of the section's full depth.
    """
    canvas.box(material, x0, x1, y0, y1, 2 * wall * count)
    inner = (depth - 2 * wall) * count
    if axis == "x":
        canvas.box(material, x0, x1, y1 - wall, y1, inner)
        canvas.box(material, x0, x1, y0, y0 + wall, inner)
    else:
        canvas.box(material, x0, x0 + wall, y0, y1, inner)
        canvas.box(material, x1 - wall, x1, y0, y1, inner)


def cylinder_along_x(
    canvas: Canvas,
    material: Material,
    x0: float,
    x1: float,
    yc: float,
    radius: float,
    *,
    count: float = 1.0,
    fill_to: float | None = None,
    density: float | None = None,
    texture: tuple[float, float] = (0.0, 0.0),
) -> None:
    """Horizontal cylinders lying along the vehicle (tanks, pipes, rolls): chord in ``y``.

    ``fill_to`` is the height (cm) of a liquid's surface: above it the
    cylinder holds nothing of ``material``.
    """

    def chord(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        length = 2.0 * count * np.sqrt(np.maximum(radius**2 - (ys - yc) ** 2, 0.0))
        if fill_to is not None:
            length = np.where(ys <= fill_to, length, 0.0)
        return length

    canvas.box(material, x0, x1, yc - radius, yc + radius, chord, density=density, texture=texture)


def upright_cylinders(
    canvas: Canvas,
    material: Material,
    x0: float,
    x1: float,
    y0: float,
    y1: float,
    *,
    radius: float,
    pitch: float,
    count_deep: float,
    shell: float | None = None,
    density: float | None = None,
    texture: tuple[float, float] = (0.0, 0.0),
) -> None:
    """A row of vertical cylinders every ``pitch`` cm, ``count_deep`` of them behind each other.

    Bottles, cans, drums. With ``shell`` only the wall of that thickness is
    deposited: its chord peaks at the cylinder's rim, which is why a can or a
    drum shows bright-edged outlines.
    """

    def chords(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        offset = np.mod(xs - x0, pitch) - 0.5 * pitch
        outer = np.sqrt(np.maximum(radius**2 - offset**2, 0.0))
        if shell is None:
            return 2.0 * count_deep * outer
        inner = np.sqrt(np.maximum((radius - shell) ** 2 - offset**2, 0.0))
        return 2.0 * count_deep * (outer - inner)

    canvas.box(material, x0, x1, y0, y1, chords, density=density, texture=texture)


def pillow(
    canvas: Canvas,
    material: Material,
    x0: float,
    x1: float,
    y0: float,
    y1: float,
    *,
    depth: float,
    density: float | None = None,
    texture: tuple[float, float] = (0.0, 0.0),
    squareness: float = 4.0,
) -> None:
    """A soft filled bag (sack, big bag, duffel bag): flat in the middle, rounded at the seams."""
    xc, yc, ax, ay = 0.5 * (x0 + x1), 0.5 * (y0 + y1), 0.5 * (x1 - x0), 0.5 * (y1 - y0)

    def bulge(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        u = np.abs(xs - xc) / ax
        v = np.abs(ys - yc) / ay
        return depth * np.sqrt(np.maximum(1.0 - u**squareness - v**squareness, 0.0))

    canvas.box(material, x0, x1, y0, y1, bulge, density=density, texture=texture)


def tyre(
    canvas: Canvas,
    xc: float,
    yc: float,
    *,
    radius: float,
    rim_radius: float,
    width: float,
    count: int,
    wheel: bool = True,
) -> None:
    """``count`` tyres behind each other along the ray, seen along their axis.

    Rubber between rim and tread and a steel belt under the tread (a thin
    cylinder shell, seen end-on as a dark ring). A road ``wheel`` adds the
    steel rim, the hub and brake drum and the axle, which a ray crosses
    along its full length: wheels are among the darkest features of a truck
    scan.
    """
    canvas.disc(RUBBER, xc, yc, radius, width * count, r_in=rim_radius)
    canvas.disc(STEEL, xc, yc, radius - 2.0, 0.25 * width * count, r_in=radius - 3.2)
    if not wheel:
        return
    canvas.disc(STEEL, xc, yc, rim_radius, 1.0 * count, r_in=rim_radius - 2.5)
    canvas.disc(STEEL, xc, yc, rim_radius - 2.5, 0.8 * count)
    canvas.disc(STEEL, xc, yc, 0.75 * rim_radius, 6.0 * count, r_in=0.6 * rim_radius)
    canvas.disc(STEEL, xc, yc, 7.0, 180.0)
