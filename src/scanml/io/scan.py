"""The scan as every later step sees it, and what a format reader hands back."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Scan:
    """A container scan in log-attenuation, on the file's own pixel grid.

    Attenuation (``-ln(I / I0)``: 0 is air, larger is denser) rather than
    transmission, because attenuations of objects on one ray add up, which
    is what threat image projection and the model's fixed scaling rely on.
    """

    attenuation: np.ndarray  # float32 [C, H, W]
    spacing_mm: tuple[float, float]  # (row, column) millimetres per pixel
    channels: list[str]  # one name per energy, e.g. ["high", "low"]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.attenuation.ndim != 3:
            raise ValueError(f"attenuation must be [C, H, W], got shape {self.attenuation.shape}")
        if len(self.channels) != self.attenuation.shape[0]:
            raise ValueError(
                f"{len(self.channels)} channel names for {self.attenuation.shape[0]} channels"
            )
        if len(self.spacing_mm) != 2 or not all(np.isfinite(s) and s > 0 for s in self.spacing_mm):
            raise ValueError(f"spacing_mm must be two positive numbers, got {self.spacing_mm}")

    @property
    def height(self) -> int:
        """Detector rows."""
        return int(self.attenuation.shape[1])

    @property
    def width(self) -> int:
        """Time columns, along the container."""
        return int(self.attenuation.shape[2])

    @property
    def megapixels(self) -> float:
        """Pixels per channel, in millions: the unit of reading cost."""
        return self.height * self.width / 1e6

    @property
    def transmission(self) -> np.ndarray:
        """``I / I0`` per pixel, float32 [C, H, W]: what LIN files and 16-bit exports hold."""
        return np.exp(-self.attenuation)


@dataclass
class DecodedImage:
    """What one format reader found in a file, before the common checks.

    ``spacing_mm`` and ``channels`` are None when the file does not say;
    :func:`scanml.io.read_scan` then takes them from its arguments.
    """

    attenuation: np.ndarray  # float32 [C, H, W], not yet checked for NaN nor clipped
    spacing_mm: tuple[float, float] | None
    channels: list[str] | None
    meta: dict[str, Any]
