"""Contraband and where smugglers put it, with the tight box an analyst would draw.

The placements follow what customs report: bricks of cocaine inside cartons
of a legitimate cover load (fruit, paper, frozen goods), "rip-on/rip-off"
duffel bags just behind the doors, packages in structural voids (the floor's
cross-member cavity, the side walls' corrugation, the reefer machinery),
cigarette master cases among other cartons, and firearms in boxes or bags.

Where contraband sits inside cargo it *displaces* it: the cargo's path is
reduced by exactly the contraband's (``min(contraband path, cargo path)``
with the cargo's own path function) before the contraband is added. The net
change can therefore be small or even negative (cigarettes replacing paper);
in the common case (compressed powder among produce) it is positive.
Quantities are drawn log-uniformly, so contrasts range from obvious to
barely above the noise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from scanml.physics import MATERIALS, Material
from scanml.synth.cargo import CargoLoad, CargoSlot
from scanml.synth.container import ContainerGeometry
from scanml.synth.render import Canvas, Footprint, PathFunction
from scanml.synth.shapes import pillow

__all__ = ["CATEGORIES", "Annotation", "brick_stack_attenuation", "conceal"]

CATEGORIES = ("drugs", "weapon", "cigarettes", "other")
_CATEGORY_WEIGHTS = (0.5, 0.15, 0.2, 0.15)

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

# Net attenuation (high energy, before noise) below which a concealment is
# not thinned further: about the photon noise of one 8 mm pixel behind
# 20-30 cm of cargo, so a box is never drawn around nothing.
MIN_CONTRAST = 0.06


@dataclass(frozen=True)
class Annotation:
    """One concealment: its tight box in scan pixels and what an analyst would note.

    ``contrast`` is the mean attenuation (high energy, before noise) that the
    concealment changed inside its box: the net of what it added and the
    cargo it displaced. It measures difficulty; it is never an input.
    """

    bbox: tuple[int, int, int, int]  # x, y, w, h (COCO, scan pixels)
    category: str
    concealment: str
    material: str
    mass_kg: float
    contrast: float


@dataclass(frozen=True)
class _Placed:
    """What an object renderer reports back: its material and mass."""

    material: str
    mass_kg: float


def conceal(
    canvas: Canvas,
    geometry: ContainerGeometry,
    load: CargoLoad,
    rng: np.random.Generator,
    *,
    strength: tuple[float, float] = (1.0, 1.0),
    min_contrast: float = MIN_CONTRAST,
) -> list[Annotation]:
    """Hide one to three concealments in the scene and annotate each.

    ``strength`` is the range (log-uniform) of a factor on each
    concealment's thickness along the ray: below 1 the same object is
    thinner (fewer bricks deep), so its contrast against the cargo falls in
    proportion. A concealment is never thinned below ``min_contrast`` of net
    attenuation (what an annotator could still point at); one already that
    faint at full thickness is kept as drawn. The default ``(1, 1)`` draws
    exactly what earlier versions drew, byte for byte.
    """
    low, high = strength
    if not 0.0 < low <= high <= 1.0:
        raise ValueError(f"strength must satisfy 0 < low <= high <= 1, got {strength}")
    annotations: list[Annotation] = []
    for _ in range(1 if rng.random() < 0.7 else int(rng.integers(2, 4))):
        category = str(rng.choice(CATEGORIES, p=_CATEGORY_WEIGHTS))
        method, place = _choose_method(category, geometry, load, rng)
        if (low, high) == (1.0, 1.0):
            annotation = _place(canvas, geometry, load, rng, category, method, place, 1.0)
        else:
            target = _log_uniform(rng, low, high) if low < high else low
            annotation = _place_thinned(
                canvas, geometry, load, rng, category, method, place, target, min_contrast
            )
        if annotation is not None:
            annotations.append(annotation)
    return annotations


def _place(
    canvas: Canvas,
    geometry: ContainerGeometry,
    load: CargoLoad,
    rng: np.random.Generator,
    category: str,
    method: str,
    place: _Place,
    strength: float,
) -> Annotation | None:
    footprint = canvas.record(strength)
    try:
        placed = place(canvas, geometry, load, rng)
    finally:
        canvas.stop_recording()
    return _annotate(canvas, footprint, category, method, placed, strength)


def _place_thinned(
    canvas: Canvas,
    geometry: ContainerGeometry,
    load: CargoLoad,
    rng: np.random.Generator,
    category: str,
    method: str,
    place: _Place,
    target: float,
    min_contrast: float,
) -> Annotation | None:
    """Place at full thickness, then replay the same draw thinned to ``target`` (floored)."""
    seed = int(rng.integers(2**63))
    before = canvas.attenuation.copy()
    full = _place(canvas, geometry, load, np.random.default_rng(seed), category, method, place, 1.0)
    if full is None or abs(full.contrast) <= min_contrast:
        return full
    factor = max(target, min_contrast / abs(full.contrast))
    if factor >= 1.0:
        return full
    canvas.attenuation[...] = before
    return _place(
        canvas, geometry, load, np.random.default_rng(seed), category, method, place, factor
    )


def brick_stack_attenuation(
    rng: np.random.Generator,
    spacing_mm: tuple[float, float],
    channels: Sequence[str],
    category: str,
) -> tuple[np.ndarray, str]:
    """Attenuation ``[C, h, w]`` (float32) of one concealment object alone, for threat projection.

    The object (a brick stack, cigarette master cases, firearms, or banknote
    bundles / copper for ``other``) is drawn on an empty canvas at the scan's
    ``spacing_mm`` (row, column) and cropped to its tight box; add it to a
    clean scan's attenuation (Beer-Lambert is additive) to insert a threat.
    """
    row_cm, col_cm = spacing_mm[0] / 10.0, spacing_mm[1] / 10.0
    size_cm = 260.0
    canvas = Canvas.blank(
        int(size_cm / row_cm) + 1,
        int(size_cm / col_cm) + 1,
        channels=tuple(channels),  # type: ignore[arg-type]
        row_cm=row_cm,
        col_cm=col_cm,
        y_top_cm=size_cm,
        rng=rng,
    )
    footprint = canvas.record()
    _OBJECTS[category](canvas, 10.0, 10.0, size_cm - 20.0, size_cm - 20.0, rng)
    canvas.stop_recording()
    box = footprint.bbox(canvas.shape)
    if box is None:
        return np.zeros((len(channels), 1, 1), np.float32), category
    r0, r1, c0, c1 = box
    return np.ascontiguousarray(canvas.attenuation[:, r0:r1, c0:c1]), category


_Place = Callable[[Canvas, ContainerGeometry, CargoLoad, np.random.Generator], _Placed]


def _choose_method(
    category: str, geometry: ContainerGeometry, load: CargoLoad, rng: np.random.Generator
) -> tuple[str, _Place]:
    """Pick a placement that this scene allows, weighted by how often customs find it."""
    in_cargo = bool(load.slots)
    options: dict[str, tuple[float, _Place]] = {
        "drugs": {
            "cargo_bricks": (0.45 * in_cargo, _drugs_in_cargo),
            "rip_on": (0.25, _rip_on_bags),
            "floor": (0.12, _floor_cavity),
            "wall": (0.1, _wall_cavity),
            "reefer": (0.25 * (geometry.reefer_unit is not None), _reefer_unit),
        },
        "cigarettes": {
            "master_cases": (0.65 * in_cargo, _cigarettes_in_cargo),
            "rip_on": (0.2, _cigarette_cases_at_doors),
            "floor": (0.1, _floor_cavity_cigarettes),
        },
        "weapon": {
            "in_cargo": (0.6 * in_cargo, _weapons_in_cargo),
            "rip_on": (0.4, _weapons_in_bag),
        },
        "other": {
            "in_cargo": (0.6 * in_cargo, _other_in_cargo),
            "rip_on": (0.4, _other_at_doors),
        },
    }[category]
    names = [name for name, (weight, _) in options.items() if weight > 0]
    weights = np.array([options[name][0] for name in names])
    name = str(rng.choice(names, p=weights / weights.sum()))
    return name, options[name][1]


def _annotate(
    canvas: Canvas,
    footprint: Footprint,
    category: str,
    method: str,
    placed: _Placed,
    strength: float = 1.0,
) -> Annotation | None:
    """The tight box of what was deposited and the net attenuation change inside it."""
    box = footprint.bbox(canvas.shape)
    added = footprint.added(canvas.shape)
    if box is None or added is None:
        return None
    r0, r1, c0, c1 = box
    return Annotation(
        bbox=(c0, r0, c1 - c0, r1 - r0),
        category=category,
        concealment=method,
        material=placed.material,
        mass_kg=round(placed.mass_kg * strength, 2),
        contrast=round(float(added[r0:r1, c0:c1].mean()), 4),
    )


# --- placements --------------------------------------------------------------------


def _drugs_in_cargo(
    canvas: Canvas, geometry: ContainerGeometry, load: CargoLoad, rng: np.random.Generator
) -> _Placed:
    """Bricks replacing part of the contents of a few cartons of the cover load."""
    slot = _pick_slot(load.slots, rng)
    w, h = _log_uniform(rng, 20.0, 140.0), _log_uniform(rng, 8.0, 90.0)
    x0, y0, w, h = _inside(slot, w, h, rng)
    depth = slot.depth * rng.uniform(0.1, 0.9)
    return _bricks(canvas, x0, y0, w, h, depth, rng, material=COCAINE, host=slot)


def _rip_on_bags(
    canvas: Canvas, geometry: ContainerGeometry, load: CargoLoad, rng: np.random.Generator
) -> _Placed:
    """One to four duffel bags of bricks just inside the doors, on the floor or on top of the load."""
    n_bags = int(rng.integers(1, 5))
    mass = 0.0
    x1 = geometry.inner_x1 - rng.uniform(2.0, 40.0)
    for _ in range(n_bags):
        w, h = rng.uniform(55.0, 85.0), rng.uniform(28.0, 40.0)
        x0 = x1 - w - rng.uniform(0.0, 60.0)
        y0 = _resting_height(geometry, load, x0, x0 + w, h)
        placed = _bag_of_bricks(canvas, x0, y0, w, h, rng)
        mass += placed.mass_kg
    return _Placed("cocaine", mass)


def _floor_cavity(
    canvas: Canvas, geometry: ContainerGeometry, load: CargoLoad, rng: np.random.Generator
) -> _Placed:
    """Flat packages pushed into the floor between the cross-members."""
    y0, y1 = geometry.floor_cavity
    w = _log_uniform(rng, 40.0, 400.0)
    x0 = rng.uniform(geometry.inner_x0, geometry.inner_x1 - w)
    depth = _log_uniform(rng, 25.0, 0.9 * geometry.inner_width)
    return _bricks(
        canvas, x0, y0, w, y1 - y0, depth, rng, material=COCAINE, brick=(rng.uniform(20, 32), 4.5)
    )


def _floor_cavity_cigarettes(
    canvas: Canvas, geometry: ContainerGeometry, load: CargoLoad, rng: np.random.Generator
) -> _Placed:
    """Cartons of cigarettes packed flat into the floor cavity."""
    y0, y1 = geometry.floor_cavity
    w = _log_uniform(rng, 60.0, 500.0)
    x0 = rng.uniform(geometry.inner_x0, geometry.inner_x1 - w)
    depth = rng.uniform(60.0, 0.95 * geometry.inner_width)
    return _cases(canvas, x0, y0, w, y1 - y0, depth, rng, case=(27.0, 4.6))


def _wall_cavity(
    canvas: Canvas, geometry: ContainerGeometry, load: CargoLoad, rng: np.random.Generator
) -> _Placed:
    """Packages in the side walls' corrugation recesses or behind a false panel: thin, wide."""
    w, h = _log_uniform(rng, 40.0, 300.0), _log_uniform(rng, 30.0, 0.8 * geometry.inner_height)
    x0 = rng.uniform(geometry.inner_x0 + 20.0, geometry.inner_x1 - w - 20.0)
    y0 = rng.uniform(geometry.inner_y0, geometry.inner_y1 - h)
    depth = rng.uniform(2.5, 4.0) * (1 if rng.random() < 0.6 else 2)
    panel = _bricks(
        canvas,
        x0,
        y0,
        w,
        h,
        depth,
        rng,
        material=COCAINE,
        brick=(rng.uniform(15, 30), rng.uniform(10, 25)),
    )
    canvas.box(STEEL, x0, x0 + w, y0, y0 + h, 0.15)
    return panel


def _reefer_unit(
    canvas: Canvas, geometry: ContainerGeometry, load: CargoLoad, rng: np.random.Generator
) -> _Placed:
    """Packages stuffed into the free space of the reefer's machinery compartment."""
    assert geometry.reefer_unit is not None
    ux0, ux1, uy0, uy1 = geometry.reefer_unit
    w = min(ux1 - ux0, rng.uniform(15.0, 34.0))
    h = _log_uniform(rng, 15.0, 0.9 * (uy1 - uy0))
    x0, y0 = rng.uniform(ux0, ux1 - w), rng.uniform(uy0, uy1 - h)
    depth = _log_uniform(rng, 10.0, 120.0)
    return _bricks(
        canvas, x0, y0, w, h, depth, rng, material=COCAINE, brick=(w / max(1, round(w / 15.0)), 5.0)
    )


def _cigarettes_in_cargo(
    canvas: Canvas, geometry: ContainerGeometry, load: CargoLoad, rng: np.random.Generator
) -> _Placed:
    """Master cases replacing cartons of the declared goods: a few, or most of a pallet."""
    slot = _pick_slot(load.slots, rng)
    w = _log_uniform(rng, 58.0, max(60.0, slot.x1 - slot.x0))
    h = _log_uniform(rng, 28.0, max(30.0, slot.y1 - slot.y0))
    x0, y0, w, h = _inside(slot, w, h, rng)
    depth = slot.depth * rng.uniform(0.3, 1.0)
    return _cases(canvas, x0, y0, w, h, depth, rng, host=slot)


def _cigarette_cases_at_doors(
    canvas: Canvas, geometry: ContainerGeometry, load: CargoLoad, rng: np.random.Generator
) -> _Placed:
    """A few master cases loaded last, just behind the doors."""
    w, h = 58.0 * int(rng.integers(1, 4)), 28.0 * int(rng.integers(1, 4))
    x0 = geometry.inner_x1 - w - rng.uniform(2.0, 50.0)
    y0 = _resting_height(geometry, load, x0, x0 + w, h)
    return _cases(canvas, x0, y0, w, h, 45.0 * int(rng.integers(1, 4)), rng)


def _weapons_in_cargo(
    canvas: Canvas, geometry: ContainerGeometry, load: CargoLoad, rng: np.random.Generator
) -> _Placed:
    """Firearms hidden in cartons of the cover load."""
    slot = _pick_slot(load.slots, rng)
    x0, y0, w, h = _inside(slot, 110.0, 60.0, rng)
    return _weapons(canvas, x0, y0, w, h, rng)


def _weapons_in_bag(
    canvas: Canvas, geometry: ContainerGeometry, load: CargoLoad, rng: np.random.Generator
) -> _Placed:
    """Firearms in a bag near the doors."""
    w, h = rng.uniform(70.0, 110.0), rng.uniform(30.0, 40.0)
    x0 = geometry.inner_x1 - w - rng.uniform(2.0, 60.0)
    y0 = _resting_height(geometry, load, x0, x0 + w, h)
    pillow(canvas, TEXTILE, x0, x0 + w, y0, y0 + h, depth=35.0, density=0.08)
    return _weapons(canvas, x0 + 5.0, y0 + 3.0, w - 10.0, h - 6.0, rng)


def _other_in_cargo(
    canvas: Canvas, geometry: ContainerGeometry, load: CargoLoad, rng: np.random.Generator
) -> _Placed:
    """Undeclared goods in a cover load: banknote bundles or copper."""
    slot = _pick_slot(load.slots, rng)
    x0, y0, w, h = _inside(slot, _log_uniform(rng, 20.0, 120.0), _log_uniform(rng, 10.0, 60.0), rng)
    return _other(canvas, x0, y0, w, h, rng, host=slot, depth=slot.depth * rng.uniform(0.1, 0.8))


def _other_at_doors(
    canvas: Canvas, geometry: ContainerGeometry, load: CargoLoad, rng: np.random.Generator
) -> _Placed:
    """Undeclared goods in a bag or box near the doors."""
    w, h = rng.uniform(40.0, 90.0), rng.uniform(25.0, 45.0)
    x0 = geometry.inner_x1 - w - rng.uniform(2.0, 60.0)
    y0 = _resting_height(geometry, load, x0, x0 + w, h)
    return _other(canvas, x0, y0, w, h, rng, depth=rng.uniform(20.0, 60.0))


# --- objects -----------------------------------------------------------------------


def _object_drugs(
    canvas: Canvas, x0: float, y0: float, w: float, h: float, rng: np.random.Generator
) -> _Placed:
    return _bricks(
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
) -> _Placed:
    return _cases(
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
) -> _Placed:
    return _other(
        canvas,
        x0,
        y0,
        _log_uniform(rng, 20.0, 100.0),
        _log_uniform(rng, 10.0, 50.0),
        rng,
        depth=rng.uniform(10.0, 60.0),
    )


_OBJECTS: dict[
    str, Callable[[Canvas, float, float, float, float, np.random.Generator], _Placed]
] = {
    "drugs": _object_drugs,
    "cigarettes": _object_cigarettes,
    "weapon": lambda canvas, x0, y0, w, h, rng: _weapons(canvas, x0, y0, 110.0, 60.0, rng),
    "other": _object_other,
}


def _bricks(
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
) -> _Placed:
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
    )
    density = rng.uniform(0.95, 1.25) * material.density
    _deposit_with_displacement(canvas, material, x0, x0 + w, y0, y0 + h, grid, density, host)
    canvas.box(PLASTIC, x0, x0 + w, y0, y0 + h, lambda xs, ys: 0.03 * grid(xs, ys))
    fill = float(grid.amount.mean()) * 0.9
    return _Placed(material.name, density * w * h * depth * fill / 1000.0)


def _cases(
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
) -> _Placed:
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
    return _Placed("tobacco", density * w * h * depth * 0.92 / 1000.0)


def _weapons(
    canvas: Canvas, x0: float, y0: float, w: float, h: float, rng: np.random.Generator
) -> _Placed:
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
    return _Placed("steel", mass)


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


def _other(
    canvas: Canvas,
    x0: float,
    y0: float,
    w: float,
    h: float,
    rng: np.random.Generator,
    *,
    depth: float,
    host: CargoSlot | None = None,
) -> _Placed:
    """Banknote bundles (paper bricks) or copper wire coils."""
    if rng.random() < 0.5:
        return _bricks(
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
    return _Placed("copper", mass)


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
        return self.depth * self.amount[row, col] * profile


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


def _bag_of_bricks(
    canvas: Canvas, x0: float, y0: float, w: float, h: float, rng: np.random.Generator
) -> _Placed:
    """A duffel bag: a soft textile shell around a loose pile of bricks."""
    pillow(canvas, TEXTILE, x0, x0 + w, y0, y0 + h, depth=rng.uniform(30.0, 40.0), density=0.08)
    return _bricks(
        canvas, x0 + 3.0, y0 + 2.0, w - 6.0, h - 6.0, rng.uniform(20.0, 32.0), rng, material=COCAINE
    )


def _pick_slot(slots: list[CargoSlot], rng: np.random.Generator) -> CargoSlot:
    """A cargo slot, larger ones more likely (smugglers use the cover load's bulk)."""
    areas = np.array([(s.x1 - s.x0) * (s.y1 - s.y0) for s in slots])
    return slots[int(rng.choice(len(slots), p=areas / areas.sum()))]


def _inside(
    slot: CargoSlot, w: float, h: float, rng: np.random.Generator
) -> tuple[float, float, float, float]:
    """A ``w x h`` rectangle inside the slot (shrunk to fit), lower positions more likely."""
    w = min(w, slot.x1 - slot.x0 - 2.0)
    h = min(h, slot.y1 - slot.y0 - 2.0)
    x0 = rng.uniform(slot.x0 + 1.0, slot.x1 - 1.0 - w)
    y0 = slot.y0 + 1.0 + (slot.y1 - slot.y0 - 2.0 - h) * rng.random() ** 1.5
    return x0, y0, w, h


def _resting_height(
    geometry: ContainerGeometry, load: CargoLoad, x0: float, x1: float, h: float
) -> float:
    """Where an object put in last rests: on the load there, or on the floor; below the roof."""
    top = load.top_at(x0, x1, geometry.inner_y0)
    return top if top + h <= geometry.inner_y1 else geometry.inner_y0


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    """Log-uniform between ``low`` and ``high``: as many small concealments as large ones."""
    if high <= low:
        return low
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))
