"""What carries the container through the scanner: a truck or a rail wagon.

The vehicle is a source of hard negatives a detector must learn to ignore:
wheels, axles and brake drums (among the darkest things in a scan), chassis
rails, landing legs, the tractor's fuel tank and, on scanners that image the
cab, the engine block. Layout is randomised within real dimensions so that
the container never sits at a fixed place in the image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from scanml.physics import MATERIALS
from scanml.synth.container import ContainerSpec
from scanml.synth.render import Canvas
from scanml.synth.shapes import cylinder_along_x, member_across_ray, member_along_ray, tyre

__all__ = ["Conveyance", "VehicleLayout", "plan_vehicle", "render_vehicle"]

Conveyance = Literal["truck", "rail"]

STEEL = MATERIALS["steel"]
DIESEL = MATERIALS["diesel"]
ALUMINIUM = MATERIALS["aluminium"]
PLASTIC = MATERIALS["plastic"]
GLASS = MATERIALS["glass"]
WOOD = MATERIALS["wood"]
CONCRETE = MATERIALS["concrete"]


@dataclass(frozen=True)
class VehicleLayout:
    """Where everything sits along the scan, in world cm (cab or locomotive end at x = 0)."""

    conveyance: Conveyance
    scene_length: float
    container_x: float  # the container's front (nose) end
    container_y: float  # the container's underside
    cab_x: float | None  # front of the cab when the scanner images it
    kingpin_x: float
    chassis_x1: float  # rear end of the trailer or wagon


def plan_vehicle(
    rng: np.random.Generator, spec: ContainerSpec, conveyance: Conveyance, scans_cab: bool
) -> VehicleLayout:
    """Draw a realistic layout for the container on its vehicle."""
    lead = rng.uniform(40.0, 120.0)
    if conveyance == "rail":
        wagon_extra = rng.uniform(80.0, 350.0)
        container_x = lead + 0.5 * wagon_extra
        chassis_x1 = lead + spec.length_cm + wagon_extra
        return VehicleLayout(
            conveyance=conveyance,
            scene_length=chassis_x1 + rng.uniform(40.0, 120.0),
            container_x=container_x,
            container_y=rng.uniform(112.0, 128.0),
            cab_x=None,
            kingpin_x=lead,
            chassis_x1=chassis_x1,
        )
    cab_x = lead if scans_cab else None
    # Drive-through portals switch the beam on only once the cab has passed.
    container_x = lead + 230.0 + rng.uniform(50.0, 110.0) if scans_cab else lead
    chassis_x1 = container_x + spec.length_cm + rng.uniform(5.0, 40.0)
    return VehicleLayout(
        conveyance=conveyance,
        scene_length=chassis_x1 + rng.uniform(40.0, 140.0),
        container_x=container_x,
        container_y=rng.uniform(118.0, 140.0),
        cab_x=cab_x,
        kingpin_x=container_x + rng.uniform(80.0, 110.0),
        chassis_x1=chassis_x1,
    )


def render_vehicle(
    canvas: Canvas, layout: VehicleLayout, spec: ContainerSpec, rng: np.random.Generator
) -> None:
    """Deposit the truck (tractor and trailer) or the rail wagon and track."""
    if layout.conveyance == "rail":
        _rail_wagon(canvas, layout, rng)
    else:
        _trailer(canvas, layout, spec, rng)
        _tractor(canvas, layout, rng)


def _trailer(
    canvas: Canvas, layout: VehicleLayout, spec: ContainerSpec, rng: np.random.Generator
) -> None:
    """Skeletal container chassis: two I-beam rails, landing legs, axle group, bumper."""
    top = layout.container_y
    x0, x1 = layout.container_x - 5.0, layout.chassis_x1
    rail_depth = rng.uniform(28.0, 38.0)
    # Two I-beams: webs face the beam, flanges run across it.
    canvas.box(STEEL, x0, x1, top - rail_depth, top, 2 * 0.8)
    canvas.box(STEEL, x0, x1, top - 1.6, top, 2 * 15.0)
    canvas.box(STEEL, x0, x1, top - rail_depth, top - rail_depth + 1.6, 2 * 15.0)
    for cx in np.arange(x0 + 40.0, x1 - 20.0, rng.uniform(80.0, 130.0)):
        member_along_ray(
            canvas, STEEL, cx, cx + 12.0, top - rail_depth + 4.0, top - 4.0, length=90.0, wall=0.5
        )
    leg_x = layout.container_x + rng.uniform(190.0, 300.0)
    member_across_ray(
        canvas,
        STEEL,
        leg_x,
        leg_x + 11.0,
        22.0,
        top - rail_depth,
        depth=11.0,
        wall=0.45,
        axis="y",
        count=2,
    )
    canvas.box(STEEL, leg_x - 6.0, leg_x + 17.0, 14.0, 22.0, 2 * 3.0)
    n_axles = 2 if spec.size == "20ft" else 3
    spacing = rng.uniform(125.0, 136.0)
    # A 20 ft chassis is short: its axles must clear the tractor's under the nose.
    last = x1 - (rng.uniform(60.0, 110.0) if spec.size == "20ft" else rng.uniform(90.0, 260.0))
    radius = rng.uniform(50.0, 54.0)
    for k in range(n_axles):
        _axle(
            canvas, last - k * spacing, radius, top - rail_depth, dual=rng.random() < 0.5, rng=rng
        )
    member_along_ray(canvas, STEEL, x1 - 15.0, x1 - 2.0, 42.0, 58.0, length=240.0, wall=0.5)
    canvas.box(PLASTIC, x1 - 30.0, x1, 60.0, 70.0, 50.0)


def _axle(
    canvas: Canvas,
    xc: float,
    radius: float,
    chassis_y: float,
    *,
    dual: bool,
    rng: np.random.Generator,
) -> None:
    """An axle with its wheels, suspension and mudguard."""
    tyre(
        canvas,
        xc,
        radius,
        radius=radius,
        rim_radius=0.55 * radius,
        width=28.0 if dual else 38.0,
        count=4 if dual else 2,
    )
    spring_top = min(chassis_y, 2.0 * radius + 12.0)
    canvas.box(STEEL, xc - 45.0, xc + 45.0, radius + 6.0, spring_top, 2 * 3.0)
    canvas.box(
        PLASTIC, xc - radius - 8.0, xc + radius + 8.0, 2.0 * radius + 4.0, 2.0 * radius + 6.0, 40.0
    )
    if rng.random() < 0.5:
        canvas.disc(STEEL, xc + 10.0, radius + 28.0, 12.0, 8.0, r_in=10.0)


def _tractor(canvas: Canvas, layout: VehicleLayout, rng: np.random.Generator) -> None:
    """Tractor unit: drive axles and fifth wheel under the container nose, and the cab if scanned."""
    kingpin = layout.kingpin_x
    fifth_y = layout.container_y - rng.uniform(2.0, 6.0)
    canvas.box(STEEL, kingpin - 45.0, kingpin + 45.0, fifth_y - 10.0, fifth_y, 2 * 35.0 * 0.35)
    rear = kingpin + rng.uniform(-25.0, 25.0)
    frame_x0 = 0.0 if layout.cab_x is None else layout.cab_x + 20.0
    canvas.box(STEEL, frame_x0, rear + 110.0, fifth_y - 40.0, fifth_y - 12.0, 2 * 0.9)
    canvas.box(STEEL, frame_x0, rear + 110.0, fifth_y - 14.0, fifth_y - 12.0, 2 * 9.0)
    for offset in (-68.0, 68.0):
        _axle(canvas, rear + offset, 52.0, fifth_y - 40.0, dual=True, rng=rng)
    if layout.cab_x is None:
        # Only the back of the cab-to-trailer gap is imaged: air hoses and the fuel tank's end.
        cylinder_along_x(
            canvas,
            DIESEL,
            0.0,
            min(60.0, kingpin - 120.0),
            75.0,
            28.0,
            fill_to=75.0 + rng.uniform(-20, 25),
        )
        return
    _cab(canvas, layout.cab_x, rear, fifth_y, rng)


def _cab(
    canvas: Canvas, cab_x: float, rear_axle_x: float, frame_y: float, rng: np.random.Generator
) -> None:
    """Cab-over tractor: engine, gearbox, front axle, fuel tank, cab shell with seats and glass."""
    front_axle = cab_x + rng.uniform(120.0, 150.0)
    _axle(canvas, front_axle, 52.0, frame_y - 40.0, dual=False, rng=rng)
    # Engine block: cast iron with cavities, the densest object on a truck.
    ex = front_axle - 30.0
    canvas.box(STEEL, ex, ex + 95.0, 60.0, 135.0, rng.uniform(25.0, 35.0), texture=(0.1, 0.15))
    canvas.box(ALUMINIUM, ex + 95.0, ex + 150.0, 70.0, 115.0, 30.0)
    canvas.box(STEEL, ex + 95.0, ex + 150.0, 80.0, 105.0, 6.0)
    tank_x0 = front_axle + 80.0
    cylinder_along_x(
        canvas,
        DIESEL,
        tank_x0,
        min(tank_x0 + 140.0, rear_axle_x - 130.0),
        75.0,
        30.0,
        fill_to=75.0 + rng.uniform(-25, 25),
    )
    # The tank's thin steel shell, smeared over its cross-section.
    cylinder_along_x(
        canvas, STEEL, tank_x0, min(tank_x0 + 140.0, rear_axle_x - 130.0), 75.0, 30.0, count=0.01
    )
    cab_y0, cab_y1, cab_len = 115.0, rng.uniform(340.0, 395.0), rng.uniform(200.0, 235.0)
    member_across_ray(
        canvas, STEEL, cab_x, cab_x + cab_len, cab_y0, cab_y1, depth=245.0, wall=0.12, axis="y"
    )
    canvas.box(STEEL, cab_x, cab_x + cab_len, cab_y0, cab_y0 + 4.0, 245.0 * 0.1)
    canvas.box(STEEL, cab_x, cab_x + cab_len, cab_y1 - 3.0, cab_y1, 245.0 * 0.05)
    canvas.box(GLASS, cab_x - 1.0, cab_x + 1.0, cab_y0 + 80.0, cab_y0 + 170.0, 230.0 * 0.3)
    for seat_x in (cab_x + 70.0, cab_x + 130.0):
        canvas.box(
            STEEL, seat_x, seat_x + 50.0, cab_y0 + 20.0, cab_y0 + 110.0, 2.0, texture=(0.1, 0.2)
        )
    canvas.box(
        PLASTIC, cab_x + 15.0, cab_x + 60.0, cab_y0 + 60.0, cab_y0 + 95.0, 150.0, texture=(0.2, 0.2)
    )
    canvas.box(STEEL, cab_x - 8.0, cab_x + 5.0, 40.0, 75.0, 240.0 * 0.05)


def _rail_wagon(canvas: Canvas, layout: VehicleLayout, rng: np.random.Generator) -> None:
    """Container flat wagon on two bogies, over the track and its sleepers."""
    x0, x1 = layout.kingpin_x, layout.chassis_x1
    deck = layout.container_y
    # Rails run along the vehicle: head, web and foot of two rails.
    canvas.box(STEEL, 0.0, canvas.width_cm, 13.0, 17.2, 2 * 7.0)
    canvas.box(STEEL, 0.0, canvas.width_cm, 2.0, 13.0, 2 * 1.6)
    canvas.box(STEEL, 0.0, canvas.width_cm, 0.0, 2.0, 2 * 15.0)
    for sleeper in np.arange(rng.uniform(0.0, 60.0), canvas.width_cm, 60.0):
        canvas.box(CONCRETE, sleeper, sleeper + 26.0, -20.0, 0.0, 250.0)
    # Centre sill and side sills; the deck.
    member_across_ray(
        canvas, STEEL, x0, x1, deck - 45.0, deck - 5.0, depth=50.0, wall=1.2, axis="x"
    )
    canvas.box(STEEL, x0, x1, deck - 5.0, deck, 2 * 1.5 + 250.0 * 0.02)
    for end in (x0, x1 - 40.0):
        canvas.box(STEEL, end, end + 40.0, deck - 40.0, deck - 15.0, 2 * 30.0 * 0.3)
    radius = 46.0
    for centre in (x0 + 0.15 * (x1 - x0), x0 + 0.85 * (x1 - x0)):
        member_across_ray(
            canvas,
            STEEL,
            centre - 130.0,
            centre + 130.0,
            radius - 15.0,
            radius + 30.0,
            depth=30.0,
            wall=2.0,
            axis="x",
            count=2,
        )
        for k in (-1.0, 1.0):
            wx = centre + k * 90.0
            canvas.disc(STEEL, wx, radius + 17.2, radius, 2 * 13.5, r_in=radius - 8.0)
            canvas.disc(STEEL, wx, radius + 17.2, radius - 8.0, 2 * 3.0)
            canvas.disc(STEEL, wx, radius + 17.2, 12.0, 2 * 18.0)
            canvas.disc(STEEL, wx, radius + 17.2, 8.0, 200.0)
        for spring in np.linspace(centre - 25.0, centre + 15.0, 3):
            for coil_y in np.arange(radius + 30.0, deck - 45.0, 5.0):
                canvas.box(STEEL, spring, spring + 10.0, coil_y, coil_y + 2.5, 2 * 6.0)
