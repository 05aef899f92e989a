"""Legitimate loads: what fills the container, with the texture of real cargo.

A load is never a flat rectangle. Pallets hold grids of cartons whose walls
parallel to the beam show as faint lines, whose contents settle to different
levels and vary in density; bottles and cans are rows of cylinders, sacks are
pillows laid in interlocking courses, tyres are stacks of rubber annuli with
steel belts, machines are hollow housings around dense parts. Every hostable
region (organic goods in cartons or sacks) is returned as a
:class:`CargoSlot` with the exact path function used to draw it, so that a
concealment placed there can displace precisely the cargo it replaces.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from scanml.physics import MATERIALS, Material
from scanml.synth.container import ContainerGeometry
from scanml.synth.render import Canvas, PathFunction
from scanml.synth.shapes import (
    cylinder_along_x,
    member_across_ray,
    pillow,
    tyre,
    upright_cylinders,
)

__all__ = [
    "CARGO_TYPES",
    "CARGO_WEIGHTS",
    "GOODS",
    "VARIED_CARGO_WEIGHTS",
    "CargoLoad",
    "CargoSlot",
    "Good",
    "load_cargo",
]

CARGO_TYPES = (
    "empty",
    "palletised",
    "bulk",
    "machinery",
    "liquids",
    "tyres",
    "textile_rolls",
    "mixed",
    "vehicles",
)
# How often each load turns up at a port (roughly: general cargo dominates),
# over the first eight kinds: the scenes every dataset has drawn so far.
CARGO_WEIGHTS = (0.07, 0.33, 0.1, 0.1, 0.1, 0.07, 0.07, 0.16)
# With scene variety, over every kind: used cars are a large share of the
# exports from Antwerp and Rotterdam.
VARIED_CARGO_WEIGHTS = (0.06, 0.3, 0.09, 0.09, 0.09, 0.07, 0.07, 0.15, 0.08)

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
BOARD_CM = 0.5  # corrugated board wall of a carton


@dataclass(frozen=True)
class Good:
    """A kind of carton-packed good: what is in the cartons and how it is packed."""

    name: str
    material: str
    density: tuple[float, float]  # bulk density range of the carton contents, g/cm3
    carton: tuple[float, float, float]  # width (x), height (y), depth (along the ray), cm
    style: Literal["bulk", "bottles", "cans", "boards", "parts"]
    texture: tuple[float, float]  # fine, coarse relative density variation
    max_stack_cm: float = 230.0
    hostable: bool = True  # a plausible cover load for bricks


GOODS: dict[str, Good] = {
    g.name: g
    for g in (
        Good("fruit", "produce", (0.42, 0.62), (40.0, 24.0, 30.0), "bulk", (0.12, 0.22)),
        Good("vegetables", "produce", (0.35, 0.55), (50.0, 30.0, 40.0), "bulk", (0.15, 0.2)),
        Good("frozen_meat", "water", (0.65, 0.85), (50.0, 16.0, 35.0), "bulk", (0.05, 0.1)),
        Good("clothing", "textile", (0.12, 0.3), (60.0, 40.0, 40.0), "bulk", (0.2, 0.15)),
        Good("paper", "paper", (0.55, 0.85), (42.0, 28.0, 30.0), "bulk", (0.03, 0.05)),
        Good("plastic_goods", "plastic", (0.06, 0.18), (50.0, 40.0, 40.0), "bulk", (0.3, 0.3)),
        Good("coffee", "grain", (0.55, 0.7), (60.0, 20.0, 40.0), "bulk", (0.06, 0.1)),
        Good("electronics", "plastic", (0.08, 0.16), (50.0, 35.0, 40.0), "parts", (0.25, 0.2)),
        Good("beverages", "water", (0.9, 1.0), (30.0, 32.0, 22.0), "bottles", (0.0, 0.0)),
        Good("canned_food", "water", (0.85, 1.0), (36.0, 24.0, 27.0), "cans", (0.0, 0.0)),
        Good(
            "tiles", "ceramic", (1.7, 2.0), (60.0, 8.0, 60.0), "boards", (0.02, 0.03), 100.0, False
        ),
        Good("furniture", "wood", (0.45, 0.65), (120.0, 40.0, 60.0), "boards", (0.05, 0.1)),
        Good(
            "car_parts",
            "plastic",
            (0.05, 0.12),
            (60.0, 40.0, 40.0),
            "parts",
            (0.2, 0.2),
            180.0,
            False,
        ),
    )
}
_REEFER_GOODS = ("fruit", "vegetables", "frozen_meat")


@dataclass(frozen=True)
class CargoSlot:
    """A region of hostable cargo: where bricks or cases can hide and what they displace.

    ``path`` is the very function the cargo was drawn with (cm of
    ``material`` along the ray at each pixel centre, before ``texture``), so
    a concealment can remove exactly ``min(its own depth, path)`` of it.
    """

    x0: float
    x1: float
    y0: float
    y1: float
    good: str
    material: Material
    density: float
    depth: float  # typical cm of the good along the ray
    path: PathFunction
    texture: tuple[float, float]


@dataclass
class CargoLoad:
    """What was loaded: its type, where a concealment could hide, and the load's skyline."""

    cargo_type: str
    slots: list[CargoSlot] = field(default_factory=list)
    blocks: list[tuple[float, float, float]] = field(default_factory=list)  # x0, x1, top

    def top_at(self, x0: float, x1: float, floor: float) -> float:
        """Highest point of the load over ``[x0, x1]`` (``floor`` when nothing is there)."""
        tops = [top for bx0, bx1, top in self.blocks if bx0 < x1 and bx1 > x0]
        return max(tops, default=floor)

    @property
    def end_x(self) -> float:
        """Where the load stops towards the doors."""
        return max((bx1 for _, bx1, _ in self.blocks), default=-np.inf)


@dataclass(frozen=True)
class _Bay:
    """A stretch of the cargo space handed to one loader."""

    x0: float
    x1: float
    y0: float
    y1: float
    depth: float

    @property
    def length(self) -> float:
        return self.x1 - self.x0


def load_cargo(
    canvas: Canvas, geometry: ContainerGeometry, cargo_type: str, rng: np.random.Generator
) -> CargoLoad:
    """Fill the container with a load of ``cargo_type`` (one of :data:`CARGO_TYPES`)."""
    load = CargoLoad(cargo_type)
    if rng.random() < 0.45:
        _door_end_clutter(canvas, geometry, rng)
    if cargo_type == "empty":
        return load
    fill = 1.0 if rng.random() < 0.35 else rng.uniform(0.45, 0.97)
    bay = _Bay(
        geometry.inner_x0 + rng.uniform(0.0, 6.0),
        geometry.inner_x0 + fill * geometry.inner_length - rng.uniform(0.0, 4.0),
        geometry.inner_y0,
        geometry.inner_y1 - rng.uniform(3.0, 15.0),
        geometry.inner_width,
    )
    if geometry.spec.reefer:
        _pallets(canvas, bay, [GOODS[rng.choice(_REEFER_GOODS)]], load, rng)
    elif cargo_type == "mixed":
        _mixed(canvas, bay, load, rng)
    else:
        _LOADERS[cargo_type](canvas, bay, load, rng)
    return load


def _door_end_clutter(
    canvas: Canvas, geometry: ContainerGeometry, rng: np.random.Generator
) -> None:
    """Legitimate odds and ends at the doors: bracing timber, dunnage bags, straps, a spare pallet.

    Clean scans need them as much as loaded ones: otherwise "anything just
    inside the doors" would be a shortcut to the rip-on concealments.
    """
    x1 = geometry.inner_x1 - rng.uniform(1.0, 10.0)
    y0, y1 = geometry.inner_y0, geometry.inner_y1
    if rng.random() < 0.5:
        for _ in range(int(rng.integers(1, 4))):
            bx = x1 - rng.uniform(5.0, 15.0)
            canvas.box(
                WOOD, bx, bx + 10.0, y0, rng.uniform(y0 + 60.0, y1), geometry.inner_width * 0.9
            )
    if rng.random() < 0.4:
        by = rng.uniform(y0, y1 - 80.0)
        pillow(
            canvas,
            PLASTIC,
            x1 - 30.0,
            x1,
            by,
            by + rng.uniform(40.0, 80.0),
            depth=180.0,
            density=0.02,
        )
    if rng.random() < 0.35:
        px = x1 - rng.uniform(100.0, 130.0)
        canvas.box(WOOD, px, px + 120.0, y0, y0 + 2.2, 45.0)
        canvas.box(WOOD, px, px + 120.0, y0 + 12.2, y0 + 14.4, 70.0)
    if rng.random() < 0.3:
        sx, sy = x1 - rng.uniform(20.0, 150.0), y0 + rng.uniform(0.0, 40.0)
        canvas.box(
            STEEL,
            sx,
            sx + rng.uniform(10.0, 40.0),
            sy,
            sy + rng.uniform(5.0, 20.0),
            rng.uniform(0.5, 3.0),
        )


def _palletised(canvas: Canvas, bay: _Bay, load: CargoLoad, rng: np.random.Generator) -> None:
    """A full load of one or two goods on pallets."""
    names = list(GOODS)
    goods = [GOODS[rng.choice(names)]]
    if rng.random() < 0.3:
        goods.append(GOODS[rng.choice(names)])
    _pallets(canvas, bay, goods, load, rng)


def _pallets(
    canvas: Canvas, bay: _Bay, goods: list[Good], load: CargoLoad, rng: np.random.Generator
) -> None:
    """Rows of pallets, two or three across the beam, each with its own stack height."""
    length = rng.choice([120.0, 100.0, 80.0])
    across = [120.0, 100.0] if length != 120.0 else [100.0, 100.0]
    if length == 80.0:
        across = [120.0, 100.0]
    x = bay.x0
    while x + length <= bay.x1 + 1.0:
        for depth in across:
            good = goods[int(rng.integers(len(goods)))]
            jitter = rng.uniform(-4.0, 4.0)
            _pallet(canvas, bay, good, x + max(jitter, 0.0), length - abs(jitter), depth, load, rng)
        x += length + rng.uniform(1.0, 8.0)


def _pallet(
    canvas: Canvas,
    bay: _Bay,
    good: Good,
    x0: float,
    length: float,
    depth: float,
    load: CargoLoad,
    rng: np.random.Generator,
) -> None:
    """One pallet: the wooden base, then a grid of cartons of ``good``."""
    y0 = bay.y0
    x1 = x0 + length
    canvas.box(WOOD, x0, x1, y0, y0 + 2.2, 0.45 * depth)
    for bx in (x0, 0.5 * (x0 + x1) - 7.0, x1 - 14.0):
        canvas.box(WOOD, bx, bx + 14.0, y0 + 2.2, y0 + 12.2, 3.0 * 12.0)
    canvas.box(WOOD, x0, x1, y0 + 12.2, y0 + PALLET_HEIGHT_CM, 0.7 * depth)
    base = y0 + PALLET_HEIGHT_CM
    room = min(bay.y1 - base, good.max_stack_cm)
    height = room if rng.random() < 0.4 else rng.uniform(0.45, 1.0) * room
    slot = carton_stack(canvas, good, x0 + 1.0, x1 - 1.0, base, base + height, depth - 4.0, rng)
    load.blocks.append((x0, x1, base + height))
    if slot is not None and good.hostable:
        load.slots.append(slot)


def carton_stack(
    canvas: Canvas,
    good: Good,
    x0: float,
    x1: float,
    y0: float,
    y1: float,
    depth: float,
    rng: np.random.Generator,
    *,
    density: float | None = None,
) -> CargoSlot | None:
    """A stack of cartons of ``good`` filling ``[x0, x1] x [y0, y1]``, ``depth`` cm along the ray.

    Returns the slot a concealment could use, or None when nothing fits.
    """
    # Suppliers' cartons of one good differ by a few cm, so pallets standing
    # behind each other rarely line their layers up.
    carton_w, carton_h, carton_d = (
        float(v) for v in np.asarray(good.carton) * rng.uniform(0.92, 1.08, 3)
    )
    n_cols = max(1, round((x1 - x0) / carton_w))
    n_layers = int((y1 - y0) // carton_h)
    if n_layers < 1:
        return None
    width = (x1 - x0) / n_cols
    y1 = y0 + n_layers * carton_h
    n_deep = max(1, round(depth / carton_d))
    material = MATERIALS[good.material]
    rho = rng.uniform(*good.density) if density is None else density
    # Each carton settles to its own level and holds a little more or less.
    fill = np.where(
        rng.random((n_layers, n_cols)) < 0.25, rng.uniform(0.4, 0.95, (n_layers, n_cols)), 1.0
    )
    fill = fill.astype(np.float32)
    amount = rng.normal(1.0, 0.07, (n_layers, n_cols)).astype(np.float32)
    content_depth = depth - 2.0 * BOARD_CM * n_deep
    shape = _ContentShape(
        good, x0, y0, width, carton_h, fill, amount, content_depth, n_deep, canvas.row_cm
    )
    canvas.box(material, x0, x1, y0, y1, shape, density=rho, texture=good.texture)
    _carton_walls(canvas, x0, x1, y0, y1, width, carton_h, depth, n_deep)
    if good.style in _PACKED_CYLINDERS:
        wall_material, radius, spacing, shell = _PACKED_CYLINDERS[good.style]
        upright_cylinders(
            canvas,
            wall_material,
            x0,
            x1,
            y0,
            y1,
            radius=radius,
            pitch=width / max(1, round(width / spacing)),
            count_deep=n_deep * max(1, round(carton_d / spacing)),
            shell=shell,
        )
    elif good.style == "parts":
        _dense_parts(canvas, x0, x1, y0, y1, depth, rng)
    return CargoSlot(x0, x1, y0, y1, good.name, material, rho, content_depth, shape, good.texture)


# Cartons of upright containers: (wall material, radius cm, spacing cm, wall cm).
_PACKED_CYLINDERS: dict[str, tuple[Material, float, float, float]] = {
    "bottles": (GLASS, 3.8, 8.0, 0.35),
    "cans": (STEEL, 4.2, 8.8, 0.025),
}


@dataclass(frozen=True)
class _ContentShape:
    """Path length of carton contents: settled fill levels, per-carton amount, packing style."""

    good: Good
    x0: float
    y0: float
    width: float
    height: float
    fill: np.ndarray  # [layers, columns] fraction of the carton's height that is filled
    amount: np.ndarray  # [layers, columns] relative amount of content
    depth: float
    n_deep: int
    row_cm: float

    def __call__(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        n_layers, n_cols = self.fill.shape
        col = np.clip(((xs - self.x0) // self.width).astype(np.int64), 0, n_cols - 1)
        layer = np.clip(((ys - self.y0) // self.height).astype(np.int64), 0, n_layers - 1)
        local_x = xs - self.x0 - col * self.width
        local_y = ys - self.y0 - layer * self.height
        level = self.fill[layer, col] * self.height - BOARD_CM
        filled = np.clip((level - local_y) / self.row_cm + 0.5, 0.0, 1.0)
        path = self.depth * self.amount[layer, col] * filled
        style = self.good.style
        if style in ("bottles", "cans"):
            return path * self._cylinders(local_x, local_y)
        if style == "boards":
            board = 0.9 if self.good.material == "ceramic" else 1.8
            return path * (np.mod(local_y, board + 0.15) < board)
        return path

    def _cylinders(self, local_x: np.ndarray, local_y: np.ndarray) -> np.ndarray:
        """Fraction of the carton's depth that is liquid: bottle or can chords, with necks."""
        radius = 3.8 if self.good.style == "bottles" else 4.2
        pitch = self.width / max(1, round(self.width / (2.0 * radius + 0.4)))
        offset = np.mod(local_x, pitch) - 0.5 * pitch
        neck = self.good.style == "bottles"
        tier = self.height if neck else 0.5 * self.height
        y_in = np.mod(local_y, tier)
        r = np.where(neck & (y_in > 0.62 * tier), 1.3, radius - 0.4)
        chord = 2.0 * np.sqrt(np.maximum(r**2 - offset**2, 0.0))
        liquid = y_in < (0.85 if neck else 0.95) * tier
        return chord / pitch * liquid


def _carton_walls(
    canvas: Canvas,
    x0: float,
    x1: float,
    y0: float,
    y1: float,
    width: float,
    height: float,
    depth: float,
    n_deep: int,
) -> None:
    """Carton walls: the faces across the beam add a little everywhere; the faces along
    it show as a faint grid, smeared because cartons behind each other never line up."""
    smear = 1.5

    def walls(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        dx = np.abs(np.mod(xs - x0 + 0.5 * width, width) - 0.5 * width)
        dy = np.abs(np.mod(ys - y0 + 0.5 * height, height) - 0.5 * height)
        grid = np.maximum(np.clip(1.0 - dx / smear, 0.0, 1.0), np.clip(1.0 - dy / smear, 0.0, 1.0))
        return 2.0 * BOARD_CM * n_deep + grid * depth * (2.0 * BOARD_CM / (2.0 * smear))

    canvas.box(CARDBOARD, x0, x1, y0, y1, walls)


def _dense_parts(
    canvas: Canvas,
    x0: float,
    x1: float,
    y0: float,
    y1: float,
    depth: float,
    rng: np.random.Generator,
) -> None:
    """Motors, transformers, brackets, castings: small dense objects scattered in cartons."""
    area = (x1 - x0) * (y1 - y0)
    for _ in range(rng.poisson(area / 2500.0)):
        w, h = rng.uniform(3.0, 25.0, 2)
        px, py = rng.uniform(x0, max(x0, x1 - w)), rng.uniform(y0, max(y0, y1 - h))
        material = [STEEL, COPPER, ALUMINIUM][int(rng.integers(3))]
        path = rng.uniform(1.0, 0.3 * depth) * rng.uniform(0.1, 0.5)
        if rng.random() < 0.5:
            canvas.box(material, px, px + w, py, py + h, path)
        else:
            canvas.disc(
                material,
                px + 0.5 * w,
                py + 0.5 * w,
                0.5 * w,
                path,
                r_in=0.5 * w * rng.uniform(0.0, 0.8),
            )


def _bulk(canvas: Canvas, bay: _Bay, load: CargoLoad, rng: np.random.Generator) -> None:
    """Bagged bulk goods: 25-50 kg sacks in interlocking courses, or one-tonne big bags."""
    kind = rng.choice(["grain", "plastic", "concrete"])
    material = MATERIALS[str(kind)]
    rho = {
        "grain": rng.uniform(0.6, 0.8),
        "plastic": rng.uniform(0.5, 0.6),
        "concrete": rng.uniform(1.1, 1.5),
    }[str(kind)]
    if rng.random() < 0.35:
        size = rng.uniform(90.0, 110.0)
        tiers = 1 if kind == "concrete" else int(rng.integers(1, 3))
        x = bay.x0
        while x + size <= bay.x1:
            for tier in range(tiers):
                h = rng.uniform(95.0, 125.0)
                y = bay.y0 + tier * 115.0
                if y + h > bay.y1:
                    break
                pillow(
                    canvas,
                    material,
                    x,
                    x + size,
                    y,
                    y + h,
                    depth=2 * size * 0.95,
                    density=rho,
                    texture=(0.05, 0.12),
                    squareness=3.0,
                )
                pillow(canvas, PLASTIC, x, x + size, y, y + h, depth=4 * 0.08, squareness=3.0)
            load.blocks.append((x, x + size, bay.y0 + tiers * 115.0))
            x += size + rng.uniform(2.0, 15.0)
        return
    sack_w, sack_h, sack_d = (
        rng.uniform(55.0, 90.0),
        rng.uniform(11.0, 18.0),
        rng.uniform(38.0, 50.0),
    )
    n_deep = int(bay.depth // sack_d)
    top = bay.y0 + PALLET_HEIGHT_CM + rng.uniform(0.5, 1.0) * (bay.y1 - bay.y0 - PALLET_HEIGHT_CM)
    if kind == "concrete":
        top = min(top, bay.y0 + 140.0)
    shape = _SackCourses(bay.x0, bay.y0, sack_w, sack_h, sack_d * n_deep * 0.95)
    canvas.box(material, bay.x0, bay.x1, bay.y0, top, shape, density=rho, texture=(0.06, 0.12))
    load.blocks.append((bay.x0, bay.x1, top))
    if kind == "grain":
        load.slots.append(
            CargoSlot(
                bay.x0,
                bay.x1,
                bay.y0,
                top,
                "grain_sacks",
                material,
                rho,
                shape.depth,
                shape,
                (0.06, 0.12),
            )
        )


@dataclass(frozen=True)
class _SackCourses:
    """Sacks laid flat in courses, every other course shifted by half a sack."""

    x0: float
    y0: float
    width: float
    height: float
    depth: float

    def __call__(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        course = np.floor((ys - self.y0) / self.height)
        shift = np.mod(course, 2.0) * 0.5 * self.width
        u = np.mod(xs - self.x0 + shift, self.width) / self.width * 2.0 - 1.0
        v = np.mod(ys - self.y0, self.height) / self.height * 2.0 - 1.0
        return self.depth * np.sqrt(np.maximum(1.0 - u**6, 0.0) * np.maximum(1.0 - v**2, 0.0))


def _machinery(canvas: Canvas, bay: _Bay, load: CargoLoad, rng: np.random.Generator) -> None:
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


def _liquids(canvas: Canvas, bay: _Bay, load: CargoLoad, rng: np.random.Generator) -> None:
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


def _tyres(canvas: Canvas, bay: _Bay, load: CargoLoad, rng: np.random.Generator) -> None:
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


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    """Log-uniform between ``low`` and ``high``: thin and thick parts equally often."""
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def _annulus_chord(offset: np.ndarray, outer: float, inner: float) -> np.ndarray:
    """Chord through a ring between ``inner`` and ``outer`` radius at ``offset`` from its axis."""
    return 2.0 * (
        np.sqrt(np.maximum(outer**2 - offset**2, 0.0))
        - np.sqrt(np.maximum(inner**2 - offset**2, 0.0))
    )


def _textile_rolls(canvas: Canvas, bay: _Bay, load: CargoLoad, rng: np.random.Generator) -> None:
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


def _mixed(canvas: Canvas, bay: _Bay, load: CargoLoad, rng: np.random.Generator) -> None:
    """Consolidated (LCL) cargo: consecutive stretches of different loads."""
    x = bay.x0
    while x < bay.x1 - 60.0:
        length = min(rng.uniform(120.0, 400.0), bay.x1 - x)
        part = _Bay(x, x + length, bay.y0, bay.y1, bay.depth)
        kind = rng.choice(
            [
                "palletised",
                "palletised",
                "bulk",
                "machinery",
                "liquids",
                "tyres",
                "textile_rolls",
                "loose",
            ]
        )
        if kind == "loose":
            _loose_cartons(canvas, part, load, rng)
        else:
            _LOADERS[str(kind)](canvas, part, load, rng)
        x += length + rng.uniform(0.0, 40.0)


def _loose_cartons(canvas: Canvas, bay: _Bay, load: CargoLoad, rng: np.random.Generator) -> None:
    """Floor-loaded cartons of assorted sizes, stacked to uneven heights."""
    x = bay.x0
    names = [name for name, good in GOODS.items() if good.style == "bulk"]
    while x < bay.x1 - 30.0:
        good = GOODS[rng.choice(names)]
        width = min(rng.uniform(40.0, 130.0), bay.x1 - x)
        top = bay.y0 + rng.uniform(0.3, 1.0) * (bay.y1 - bay.y0)
        slot = carton_stack(
            canvas, good, x, x + width, bay.y0, top, bay.depth * rng.uniform(0.5, 0.97), rng
        )
        if slot is not None:
            load.slots.append(slot)
            load.blocks.append((x, x + width, slot.y1))
        x += width + rng.uniform(0.0, 5.0)


def _vehicles(canvas: Canvas, bay: _Bay, load: CargoLoad, rng: np.random.Generator) -> None:
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


_LOADERS: dict[str, Callable[[Canvas, _Bay, CargoLoad, np.random.Generator], None]] = {
    "vehicles": _vehicles,
    "palletised": _palletised,
    "bulk": _bulk,
    "machinery": _machinery,
    "liquids": _liquids,
    "tyres": _tyres,
    "textile_rolls": _textile_rolls,
}
