"""Loads that hide nothing: machines, liquids, tyres, textile rolls and cars.

None of them is hostable (no :class:`~scanml.synth.load_base.CargoSlot`):
they are the dense, edged, repetitive scenes a detector must learn to
leave alone. Palletised goods and sacks, where concealments go, are in
:mod:`scanml.synth.cargo`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scanml.physics import MATERIALS
from scanml.synth.load_base import Bay, CargoLoad
from scanml.synth.load_base import log_uniform as _log_uniform
from scanml.synth.render import Canvas
from scanml.synth.shapes import cylinder_along_x, member_across_ray, pillow, tyre, upright_cylinders

__all__ = ["liquids", "machinery", "textile_rolls", "tyres", "vehicles"]

STEEL = MATERIALS["steel"]
WOOD = MATERIALS["wood"]
CARDBOARD = MATERIALS["cardboard"]
PLASTIC = MATERIALS["plastic"]
GLASS = MATERIALS["glass"]
WATER = MATERIALS["water"]
COPPER = MATERIALS["copper"]
ALUMINIUM = MATERIALS["aluminium"]
FOAM = MATERIALS["foam"]
RUBBER = MATERIALS["rubber"]
TEXTILE = MATERIALS["textile"]
PALLET_HEIGHT_CM = 14.4


def machinery(canvas: Canvas, bay: Bay, load: CargoLoad, rng: np.random.Generator) -> None:
    """Machines on skids, some crated: hollow steel housings around dense motors and castings."""
    x = bay.x0
    while x < bay.x1 - 80.0:
        length = min(rng.uniform(80.0, 320.0), bay.x1 - x)
        height = rng.uniform(60.0, min(220.0, bay.y1 - bay.y0))
        depth = rng.uniform(80.0, 220.0)
        _machine(canvas, x, x + length, bay.y0, bay.y0 + height, depth, rng)
        load.blocks.append((x, x + length, bay.y0 + height))
        x += length + rng.uniform(10.0, 80.0)


def _machine(
    canvas: Canvas,
    x0: float,
    x1: float,
    y0: float,
    y1: float,
    depth: float,
    rng: np.random.Generator,
) -> None:
    """One machine: skid, housing, motor, gearbox, shafts and pipes, maybe a wooden crate."""
    member_across_ray(
        canvas, STEEL, x0, x1, y0, y0 + 15.0, depth=depth, wall=0.8, axis="x", count=2
    )
    member_across_ray(
        canvas,
        STEEL,
        x0 + 5.0,
        x1 - 5.0,
        y0 + 15.0,
        y1 - 5.0,
        depth=depth,
        wall=rng.uniform(0.2, 0.6),
        axis="y",
    )
    for _ in range(int(rng.integers(2, 7))):
        w = rng.uniform(10.0, 0.5 * (x1 - x0))
        h = rng.uniform(10.0, 0.6 * (y1 - y0))
        px = rng.uniform(x0 + 5.0, x1 - 5.0 - w)
        py = rng.uniform(y0 + 15.0, max(y0 + 15.0, y1 - 5.0 - h))
        steel = _log_uniform(rng, 2.0, 30.0)
        if rng.random() < 0.4:
            # A motor: steel frame, copper windings, a shaft.
            r = 0.5 * min(w, h)
            canvas.disc(STEEL, px + r, py + r, r, steel, r_in=0.8 * r)
            canvas.disc(COPPER, px + r, py + r, 0.8 * r, 0.3 * steel, r_in=0.3 * r)
            canvas.disc(STEEL, px + r, py + r, 0.3 * r, 0.5 * steel)
        else:
            # A casting: thick walls around cavities, so it is darker at its rims.
            canvas.box(STEEL, px, px + w, py, py + h, steel, texture=(0.05, 0.15))
            inset = rng.uniform(0.1, 0.3)
            canvas.box(
                STEEL,
                px + inset * w,
                px + (1 - inset) * w,
                py + inset * h,
                py + (1 - inset) * h,
                -steel * rng.uniform(0.3, 0.7),
            )
    for _ in range(int(rng.integers(0, 4))):
        py = rng.uniform(y0 + 20.0, y1 - 10.0)
        cylinder_along_x(canvas, STEEL, x0 + 5.0, x1 - 5.0, py, rng.uniform(1.5, 6.0), count=0.15)
    if rng.random() < 0.5:
        member_across_ray(
            canvas, WOOD, x0 - 3.0, x1 + 3.0, y0, y1 + 3.0, depth=depth + 6.0, wall=2.2, axis="y"
        )
        canvas.box(WOOD, x0 - 3.0, x1 + 3.0, y1, y1 + 3.0, depth + 6.0)


def liquids(canvas: Canvas, bay: Bay, load: CargoLoad, rng: np.random.Generator) -> None:
    """Drums on pallets, IBC totes, or one flexitank filling the floor."""
    style = rng.choice(["drums", "ibc", "flexitank"], p=[0.45, 0.35, 0.2])
    liquid = [WATER, MATERIALS["diesel"], PLASTIC][int(rng.integers(3))]
    if style == "flexitank":
        height = rng.uniform(90.0, 150.0)
        x0, x1 = bay.x0 + 20.0, bay.x1 - 40.0
        pillow(
            canvas,
            liquid,
            x0,
            x1,
            bay.y0 - height,
            bay.y0 + height,
            depth=0.9 * bay.depth,
            squareness=2.5,
        )
        canvas.box(WOOD, x1 + 5.0, x1 + 10.0, bay.y0, bay.y0 + height + 30.0, bay.depth)
        load.blocks.append((x0, x1, bay.y0 + height))
        return
    x = bay.x0
    unit = 120.0 if style == "ibc" else 118.0
    while x + unit <= bay.x1:
        for tier in range(2):
            y = bay.y0 + tier * (PALLET_HEIGHT_CM + 120.0)
            if y + 110.0 > bay.y1 or (tier and rng.random() < 0.3):
                break
            canvas.box(
                WOOD if style == "drums" else STEEL,
                x,
                x + unit,
                y,
                y + PALLET_HEIGHT_CM,
                0.5 * bay.depth if style == "drums" else 2.0,
            )
            base = y + PALLET_HEIGHT_CM
            if style == "drums":
                fill_to = base + rng.uniform(0.8, 0.95) * 88.0
                for dx in (0.0, 59.0):
                    upright_cylinders(
                        canvas,
                        liquid,
                        x + dx,
                        x + dx + 58.5,
                        base,
                        fill_to,
                        radius=29.0,
                        pitch=58.5,
                        count_deep=4.0,
                    )
                    upright_cylinders(
                        canvas,
                        STEEL,
                        x + dx,
                        x + dx + 58.5,
                        base,
                        base + 88.0,
                        radius=29.0,
                        pitch=58.5,
                        count_deep=4.0,
                        shell=0.12,
                    )
                    canvas.box(
                        STEEL, x + dx, x + dx + 58.5, base + 28.0, base + 31.0, 4 * 58.5 * 0.02
                    )
                    canvas.box(
                        STEEL, x + dx, x + dx + 58.5, base + 58.0, base + 61.0, 4 * 58.5 * 0.02
                    )
            else:
                fill_to = base + rng.uniform(0.6, 0.95) * 100.0
                canvas.box(liquid, x + 3.0, x + unit - 3.0, base, fill_to, 2 * 95.0)
                canvas.box(PLASTIC, x + 3.0, x + unit - 3.0, base, base + 102.0, 2 * 2 * 0.2)
                cage = np.arange(x + 2.0, x + unit, 16.0)
                for cx in cage:
                    canvas.box(STEEL, cx, cx + 2.0, base, base + 105.0, 2 * 2 * 0.3)
                for cy in np.arange(base + 5.0, base + 105.0, 25.0):
                    canvas.box(STEEL, x, x + unit, cy, cy + 2.0, 2 * 2 * 0.3)
            load.blocks.append((x, x + unit, base + 110.0))
        x += unit + rng.uniform(2.0, 10.0)


def tyres(canvas: Canvas, bay: Bay, load: CargoLoad, rng: np.random.Generator) -> None:
    """New tyres: stacked flat in columns, or stood up in rows (laced)."""
    outer = rng.uniform(30.0, 52.0)
    inner = outer * rng.uniform(0.55, 0.72)
    section = rng.uniform(17.0, 32.0)
    if rng.random() < 0.6:
        n_deep = int(bay.depth // (2.0 * outer + 2.0))
        top = bay.y0 + min(bay.y1 - bay.y0, section * int(rng.integers(5, 13)))
        pitch = 2.0 * outer + rng.uniform(0.5, 4.0)
        shape = _TyreStacks(bay.x0, bay.y0, outer, inner, section, pitch, n_deep)
        canvas.box(RUBBER, bay.x0, bay.x1, bay.y0, top, shape.rubber)
        canvas.box(STEEL, bay.x0, bay.x1, bay.y0, top, shape.belts)
        load.blocks.append((bay.x0, bay.x1, top))
        return
    per_row = int(bay.depth // section)
    x = bay.x0 + outer
    while x + outer <= bay.x1:
        for level in range(int((bay.y1 - bay.y0) // (2.0 * outer))):
            yc = bay.y0 + outer + level * 2.0 * outer
            tyre(
                canvas,
                x,
                yc,
                radius=outer,
                rim_radius=inner,
                width=section * 0.8,
                count=per_row,
                wheel=False,
            )
        load.blocks.append((x - outer, x + outer, bay.y1))
        x += 2.0 * outer + rng.uniform(0.0, 3.0)


@dataclass(frozen=True)
class _TyreStacks:
    """Columns of tyres lying flat: rubber annuli, steel belts under the tread, bead wires."""

    x0: float
    y0: float
    outer: float
    inner: float
    section: float
    pitch: float
    n_deep: int

    def _offsets(self, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        offset = np.mod(xs - self.x0, self.pitch) - self.outer
        v = np.mod(ys - self.y0, self.section) / self.section * 2.0 - 1.0
        return offset, v

    def rubber(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        offset, v = self._offsets(xs, ys)
        chord = _annulus_chord(offset, self.outer, self.inner)
        return self.n_deep * chord * (1.0 - 0.6 * np.abs(v) ** 6)

    def belts(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        offset, v = self._offsets(xs, ys)
        belt = _annulus_chord(offset, self.outer - 1.5, self.outer - 1.8) * (np.abs(v) < 0.7)
        bead = _annulus_chord(offset, self.inner + 1.0, self.inner) * (np.abs(v) > 0.75) * 0.3
        return self.n_deep * (belt + bead)


def _annulus_chord(offset: np.ndarray, outer: float, inner: float) -> np.ndarray:
    """Chord through a ring between ``inner`` and ``outer`` radius at ``offset`` from its axis."""
    return 2.0 * (
        np.sqrt(np.maximum(outer**2 - offset**2, 0.0))
        - np.sqrt(np.maximum(inner**2 - offset**2, 0.0))
    )


def textile_rolls(canvas: Canvas, bay: Bay, load: CargoLoad, rng: np.random.Generator) -> None:
    """Fabric rolls, seen end-on (lying across) or lying along the container."""
    radius = rng.uniform(10.0, 24.0)
    rho = rng.uniform(0.35, 0.6)
    if rng.random() < 0.5:
        roll_length = rng.uniform(150.0, 185.0)
        x = bay.x0 + radius
        while x + radius <= bay.x1:
            n_high = int((bay.y1 - bay.y0) // (2.0 * radius)) - int(rng.integers(0, 3))
            for level in range(max(n_high, 1)):
                yc = bay.y0 + radius + level * 2.0 * radius * 0.97
                canvas.disc(TEXTILE, x, yc, radius, roll_length, r_in=4.0, density=rho)
                canvas.disc(CARDBOARD, x, yc, 4.0, roll_length * 3.0, r_in=3.2)
            load.blocks.append((x - radius, x + radius, bay.y0 + max(n_high, 1) * 2.0 * radius))
            x += 2.0 * radius + rng.uniform(0.0, 2.0)
        return
    n_deep = int(bay.depth // (2.0 * radius))
    top = bay.y0 + 2.0 * radius * int((bay.y1 - bay.y0) * rng.uniform(0.5, 1.0) // (2.0 * radius))
    segment = rng.uniform(150.0, 185.0)
    x = bay.x0
    while x + segment <= bay.x1:
        for yc in np.arange(bay.y0 + radius, top, 2.0 * radius):
            cylinder_along_x(
                canvas,
                TEXTILE,
                x,
                x + segment,
                float(yc),
                radius,
                count=n_deep,
                density=rho,
                texture=(0.05, 0.05),
            )
        load.blocks.append((x, x + segment, top))
        x += segment + rng.uniform(1.0, 10.0)


def vehicles(canvas: Canvas, bay: Bay, load: CargoLoad, rng: np.random.Generator) -> None:
    """Used cars driven in nose to tail, some on a second tier above another car.

    A car is mostly air in a thin steel shell: the roof, floor pan and sills
    run along the ray and show as dark lines, the side panels are crossed
    twice and are faint, while the engine and gearbox, the four wheels and
    the axles are among the densest things in a container. Nothing is
    hostable: cars are a scene a detector must learn to leave alone.
    """
    x = bay.x0 + rng.uniform(5.0, 30.0)
    while x < bay.x1 - 330.0:
        length = rng.uniform(360.0, 480.0)
        if x + length > bay.x1:
            break
        _car(canvas, x, x + length, bay.y0, bay.depth, rng)
        height = 140.0 + rng.uniform(0.0, 30.0)
        if rng.random() < 0.3 and bay.y1 - bay.y0 > 2 * height + 20.0:
            # A rack: a second car tilted nose-down above the first, on steel beams.
            member_across_ray(
                canvas,
                STEEL,
                x,
                x + length,
                bay.y0 + height,
                bay.y0 + height + 12.0,
                depth=bay.depth,
                wall=0.6,
                axis="x",
                count=2,
            )
            _car(canvas, x + 10.0, x + length - 10.0, bay.y0 + height + 12.0, bay.depth, rng)
            height = 2 * height + 12.0
        load.blocks.append((x, x + length, bay.y0 + height))
        x += length + rng.uniform(10.0, 60.0)


def _car(
    canvas: Canvas, x0: float, x1: float, y0: float, depth: float, rng: np.random.Generator
) -> None:
    """One car seen from the side, nose towards ``x0`` or ``x1`` at random."""
    length = x1 - x0
    nose_left = rng.random() < 0.5
    wheel_r = rng.uniform(29.0, 35.0)
    overhang = rng.uniform(0.17, 0.22) * length
    wheels = (x0 + overhang, x1 - overhang) if nose_left else (x1 - overhang, x0 + overhang)
    width = min(depth - 20.0, rng.uniform(165.0, 190.0))
    sill = y0 + wheel_r - rng.uniform(8.0, 14.0)
    roof = y0 + rng.uniform(135.0, 165.0)
    belt = sill + rng.uniform(45.0, 60.0)
    # Floor pan and sills along the ray; side panels crossed twice.
    canvas.box(STEEL, x0 + 0.1 * length, x1 - 0.1 * length, sill, sill + 0.8, width)
    canvas.box(STEEL, x0, x1, sill, belt, 2 * 0.09, texture=(0.0, 0.1))
    # The cabin: roof and pillars, glass above the belt line.
    cabin = (x0 + 0.28 * length, x1 - 0.25 * length)
    canvas.box(STEEL, cabin[0], cabin[1], roof - 0.8, roof, width * 0.9)
    canvas.box(GLASS, cabin[0], cabin[1], belt, roof - 0.8, 2 * 0.4)
    for px in (cabin[0], 0.5 * (cabin[0] + cabin[1]), cabin[1]):
        canvas.box(STEEL, px - 4.0, px + 4.0, belt, roof, 2 * 1.5)
    # Seats: foam over spring frames, in the cabin above the floor.
    for sx in np.linspace(cabin[0] + 20.0, cabin[1] - 60.0, 2):
        canvas.box(FOAM, sx, sx + 50.0, sill + 5.0, sill + 55.0, width * 0.8, density=0.05)
        canvas.box(STEEL, sx, sx + 50.0, sill + 5.0, sill + 12.0, 3.0)
    # Engine block and gearbox over the front axle: cast iron and aluminium.
    front = wheels[0]
    block_w = rng.uniform(45.0, 65.0)
    bx = front - 0.5 * block_w + (10.0 if nose_left else -10.0)
    by = sill + rng.uniform(5.0, 15.0)
    metal = STEEL if rng.random() < 0.6 else ALUMINIUM
    canvas.box(
        metal,
        bx,
        bx + block_w,
        by,
        by + rng.uniform(45.0, 60.0),
        rng.uniform(35.0, 55.0),
        texture=(0.05, 0.2),
    )
    gx = bx + block_w if nose_left else bx - 35.0
    canvas.box(ALUMINIUM, gx, gx + 35.0, by, by + 30.0, 30.0, texture=(0.05, 0.2))
    # A fuel tank under the rear seat and an exhaust along the floor.
    canvas.box(PLASTIC, wheels[1] - 70.0, wheels[1] - 20.0, sill - 2.0, sill + 18.0, 60.0)
    cylinder_along_x(
        canvas, STEEL, x0 + 0.2 * length, x1 - 0.2 * length, sill - 4.0, 2.5, count=0.1
    )
    # Wheels with their axles, which the ray crosses from one side to the other.
    for wx in wheels:
        tyre(
            canvas,
            wx,
            y0 + wheel_r,
            radius=wheel_r,
            rim_radius=wheel_r * 0.62,
            width=rng.uniform(18.0, 24.0),
            count=2,
            wheel=False,
        )
        canvas.disc(STEEL, wx, y0 + wheel_r, wheel_r * 0.6, 2 * 1.5, r_in=wheel_r * 0.5)
        canvas.disc(STEEL, wx, y0 + wheel_r, wheel_r * 0.45, 2 * 3.0, r_in=wheel_r * 0.2)
        canvas.disc(STEEL, wx, y0 + wheel_r, 3.5, width)
