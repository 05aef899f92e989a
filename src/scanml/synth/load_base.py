"""What every loader shares: the cargo space it is handed and what it reports back."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from scanml.physics import Material
from scanml.synth.render import PathFunction

__all__ = ["Bay", "CargoLoad", "CargoSlot", "log_uniform", "log_uniform_or_low"]


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
class Bay:
    """A stretch of the cargo space handed to one loader."""

    x0: float
    x1: float
    y0: float
    y1: float
    depth: float

    @property
    def length(self) -> float:
        return self.x1 - self.x0


def log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    """Log-uniform between ``low`` and ``high``: thin and thick parts equally often."""
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def log_uniform_or_low(rng: np.random.Generator, low: float, high: float) -> float:
    """:func:`log_uniform`, but a range a small slot has closed (``high <= low``) gives ``low`` undrawn."""
    return low if high <= low else log_uniform(rng, low, high)
