"""The noise-free attenuation of a scene, accumulated object by object.

A :class:`Canvas` holds one attenuation image per beam energy on the scan's
own pixel grid. Every object of the scene (a corrugated wall, a wheel, a
carton of oranges, a brick of cocaine) is *deposited* onto it: the object
says how many centimetres of which material a ray crosses at each pixel, and
the canvas adds ``mu(E) * rho * path`` to every energy channel, which is
Beer-Lambert's additivity.

World coordinates are centimetres: ``x`` along the vehicle (the scan
direction), ``y`` height above the road. Rays travel across the vehicle
(``z``), so a path length is a thickness along ``z``.

Partial volume: a detector pixel integrates *intensity*, not attenuation.
Where an object covers a fraction ``c`` of a pixel the pixel sees
``A = -ln(1 - c + c exp(-a))`` rather than ``c * a``. The difference is
what keeps a 4 mm steel flange seen along its 2.35 m length (``a`` ~ 67) a
grey line instead of a saturated one, so the canvas applies it to every
anti-aliased edge.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from scanml.physics import Energy, Material

__all__ = ["Canvas", "Footprint", "PathFunction"]

# A path function maps pixel-centre world coordinates (x: [1, w], y: [h, 1],
# in cm) to the path length in cm, or to (coverage, path length) when the
# shape anti-aliases its own curved edges.
PathFunction = Callable[[np.ndarray, np.ndarray], np.ndarray | tuple[np.ndarray, np.ndarray]]

# Attenuations above this are indistinguishable from saturated on any scanner;
# capping them keeps exp(-a) finite in float32.
_MAX_LOCAL_ATTENUATION = 40.0
# Below this the partial-volume formula and linear coverage differ by < 6 %.
_LINEAR_PARTIAL_VOLUME = 0.25


@dataclass
class Footprint:
    """What a group of deposits added to the high-energy channel, for annotations."""

    deposits: list[tuple[int, int, np.ndarray]] = field(default_factory=list)
    removals: list[tuple[int, int, np.ndarray]] = field(default_factory=list)

    def bbox(
        self, shape: tuple[int, int], rel_threshold: float = 0.1
    ) -> tuple[int, int, int, int] | None:
        """Tight ``(row0, row1, col0, col1)`` of the pixels where the added attenuation is material.

        Anti-aliased edges add a little to pixels the object barely touches; a
        pixel counts when it received at least ``rel_threshold`` of the
        strongest deposit's median, so the box hugs the object as an annotator
        would draw it.
        """
        added = _sum_on(shape, self.deposits)
        if added is None:
            return None
        positive = added[added > 0]
        if positive.size == 0:
            return None
        mask = added > rel_threshold * float(np.median(positive))
        rows = np.flatnonzero(mask.any(axis=1))
        cols = np.flatnonzero(mask.any(axis=0))
        if rows.size == 0:
            return None
        return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1

    def added(self, shape: tuple[int, int]) -> np.ndarray | None:
        """Net attenuation added (deposits minus displaced cargo), full size; None when empty."""
        return _sum_on(shape, self.deposits + self.removals)


@dataclass
class Canvas:
    """Noise-free attenuation ``[C, H, W]`` of a scene on the scan's pixel grid.

    ``y_top_cm`` is the height of the upper edge of row 0 (rows run
    downwards, as in the image). ``textures`` holds two zero-mean,
    unit-variance random fields (fine: a few cm, coarse: ~10 cm) that cargo
    uses to vary its bulk density, so that no load is a flat rectangle.
    """

    attenuation: np.ndarray
    channels: tuple[Energy, ...]
    row_cm: float
    col_cm: float
    y_top_cm: float
    textures: np.ndarray
    _footprint: Footprint | None = None
    _strength: float = 1.0

    @classmethod
    def blank(
        cls,
        n_rows: int,
        n_cols: int,
        *,
        channels: tuple[Energy, ...],
        row_cm: float,
        col_cm: float,
        y_top_cm: float,
        rng: np.random.Generator,
    ) -> Canvas:
        """An empty (air) canvas with fresh texture fields."""
        textures = np.stack(
            [
                _smooth_noise(rng, (n_rows, n_cols), (2.0 / row_cm, 2.0 / col_cm)),
                _smooth_noise(rng, (n_rows, n_cols), (9.0 / row_cm, 9.0 / col_cm)),
            ]
        )
        return cls(
            attenuation=np.zeros((len(channels), n_rows, n_cols), np.float32),
            channels=channels,
            row_cm=row_cm,
            col_cm=col_cm,
            y_top_cm=y_top_cm,
            textures=textures,
        )

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns)."""
        return int(self.attenuation.shape[1]), int(self.attenuation.shape[2])

    @property
    def width_cm(self) -> float:
        """Length of the scanned scene along the vehicle."""
        return self.shape[1] * self.col_cm

    def record(self, strength: float = 1.0) -> Footprint:
        """Start collecting what every later deposit adds; :meth:`stop_recording` ends it.

        ``strength`` scales the areal density of every recorded deposit and
        removal: the same object, thinner along the ray (fewer bricks deep),
        displacing proportionally less of its host.
        """
        if not strength > 0:
            raise ValueError(f"strength must be positive, got {strength}")
        self._footprint = Footprint()
        self._strength = float(strength)
        return self._footprint

    def stop_recording(self) -> None:
        """Stop collecting deposits into the current :class:`Footprint`."""
        self._footprint = None
        self._strength = 1.0

    def box(
        self,
        material: Material,
        x0: float,
        x1: float,
        y0: float,
        y1: float,
        path: float | PathFunction,
        *,
        density: float | None = None,
        texture: tuple[float, float] = (0.0, 0.0),
    ) -> None:
        """Deposit ``material`` over the rectangle ``[x0, x1] x [y0, y1]`` (cm).

        ``path`` is the path length along the ray in cm, constant or a
        :data:`PathFunction` of the pixel centres (cylinders, corrugation,
        bulging sacks). A negative path removes material: that is how
        contraband displaces the cargo it hides in. ``texture`` gives the
        relative density variation drawn from the fine and coarse fields.
        """
        rows = _span(
            (self.y_top_cm - y1) / self.row_cm, (self.y_top_cm - y0) / self.row_cm, self.shape[0]
        )
        cols = _span(x0 / self.col_cm, x1 / self.col_cm, self.shape[1])
        if rows is None or cols is None:
            return
        (r0, r1, row_cov), (c0, c1, col_cov) = rows, cols
        coverage = row_cov[:, None] * col_cov[None, :]
        if callable(path):
            xs = ((np.arange(c0, c1, dtype=np.float32) + 0.5) * self.col_cm)[None, :]
            ys = (self.y_top_cm - (np.arange(r0, r1, dtype=np.float32) + 0.5) * self.row_cm)[
                :, None
            ]
            result = path(xs, ys)
            if isinstance(result, tuple):
                own_coverage, length = result
                coverage = coverage * own_coverage
            else:
                length = result
            length = np.broadcast_to(np.asarray(length, np.float32), coverage.shape)
        else:
            length = np.full(coverage.shape, path, np.float32)
        rho = material.density if density is None else density
        areal = rho * length
        if texture != (0.0, 0.0):
            fine, coarse = self.textures[:, r0:r1, c0:c1]
            areal = areal * np.maximum(1.0 + texture[0] * fine + texture[1] * coarse, 0.0)
        self._deposit(material, r0, c0, coverage.astype(np.float32), areal)

    def _deposit(
        self, material: Material, row0: int, col0: int, coverage: np.ndarray, areal: np.ndarray
    ) -> None:
        """Add ``mu * areal`` (areal density g/cm2) to every channel, with partial volume."""
        h, w = coverage.shape
        if self._strength != 1.0:
            areal = areal * self._strength
        partial = bool((coverage < 1.0).any())
        for index, energy in enumerate(self.channels):
            local = np.minimum(material.mu(energy) * areal, _MAX_LOCAL_ATTENUATION)
            if partial and float(np.abs(local).max()) > _LINEAR_PARTIAL_VOLUME:
                added = -np.log((1.0 - coverage) + coverage * np.exp(-local))
            else:
                added = coverage * local
            self.attenuation[index, row0 : row0 + h, col0 : col0 + w] += added
            if index == 0 and self._footprint is not None:
                removal = float(areal.max(initial=0.0)) <= 0.0
                target = self._footprint.removals if removal else self._footprint.deposits
                target.append((row0, col0, added.astype(np.float32)))

    def disc(
        self,
        material: Material,
        xc: float,
        yc: float,
        r_out: float,
        path: float,
        *,
        r_in: float = 0.0,
        density: float | None = None,
    ) -> None:
        """A cylinder (or ring) whose axis lies along the ray: wheels, axles, rolls seen end-on."""
        pixel = 0.5 * (self.row_cm + self.col_cm)

        def ring(xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            radius = np.hypot(xs - xc, ys - yc)
            inside = np.clip((r_out - radius) / pixel + 0.5, 0.0, 1.0)
            if r_in > 0:
                inside = inside - np.clip((r_in - radius) / pixel + 0.5, 0.0, 1.0)
            return inside, np.float32(path)

        self.box(material, xc - r_out, xc + r_out, yc - r_out, yc + r_out, ring, density=density)


def _span(lo: float, hi: float, n: int) -> tuple[int, int, np.ndarray] | None:
    """First and last+1 pixel index of the interval ``[lo, hi]`` (pixel units) and their coverage."""
    i0, i1 = max(int(np.floor(lo)), 0), min(int(np.ceil(hi)), n)
    if i1 <= i0:
        return None
    k = np.arange(i0, i1, dtype=np.float32)
    # Between floor(lo) and ceil(hi) the overlap is already within [0, 1].
    return i0, i1, np.minimum(hi, k + 1) - np.maximum(lo, k)


def _smooth_noise(
    rng: np.random.Generator, shape: tuple[int, int], sigma_px: tuple[float, float]
) -> np.ndarray:
    """Zero-mean, unit-variance Gaussian random field with correlation length ``sigma_px``.

    Drawn on a grid a few times coarser than ``shape``, smoothed there and
    interpolated up bilinearly: a fraction of the cost of filtering
    full-resolution noise, and the texture is smooth at that scale anyway.
    """
    step = max(1, int(min(sigma_px) / 1.5))
    coarse_shape = (shape[0] // step + 2, shape[1] // step + 2)
    noise = rng.standard_normal(coarse_shape, dtype=np.float32)
    noise = ndimage.gaussian_filter(noise, (sigma_px[0] / step, sigma_px[1] / step), mode="wrap")
    noise /= max(float(noise.std()), 1e-6)
    return _upsample(_upsample(noise, step, shape[0], axis=0), step, shape[1], axis=1)


def _upsample(values: np.ndarray, step: int, n: int, axis: int) -> np.ndarray:
    """Linear interpolation by an integer factor along ``axis``, cut to ``n`` samples.

    Written as broadcasting between neighbours rather than as gathers: an
    order of magnitude faster than ``scipy.ndimage.zoom`` on a full scan.
    """
    if step == 1:
        return np.take(values, np.arange(n), axis=axis)
    weight = np.arange(step, dtype=np.float32) / step
    if axis == 0:
        upsampled = (
            values[:-1, None, :] * (1.0 - weight)[None, :, None]
            + values[1:, None, :] * weight[None, :, None]
        )
        return upsampled.reshape(-1, values.shape[1])[:n]
    upsampled = values[:, :-1, None] * (1.0 - weight) + values[:, 1:, None] * weight
    return upsampled.reshape(values.shape[0], -1)[:, :n]


def _sum_on(shape: tuple[int, int], parts: list[tuple[int, int, np.ndarray]]) -> np.ndarray | None:
    """Sum sub-images placed at their (row, column) offsets on a zero image of ``shape``."""
    if not parts:
        return None
    total = np.zeros(shape, np.float32)
    for row0, col0, values in parts:
        total[row0 : row0 + values.shape[0], col0 : col0 + values.shape[1]] += values
    return total
