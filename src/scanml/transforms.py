"""Augmentation of training tiles, in attenuation space.

A tile is ``x = clip(A / scale, 0, 1)`` with ``A`` the log-attenuation, so
every intensity transform here is a physical statement about ``A``:

- threat image projection (TIP) adds an object's attenuation, because
  attenuations along a ray add (Beer-Lambert): ``x' = x + depth * A_obj / scale``;
- a gain multiplies ``A`` (density and thickness are uncertain);
- an offset and per-row streaks add to ``A`` (an I0 calibration drift, and
  detector rows whose gains differ: a gain on transmission is an offset on
  attenuation);
- photon noise has a standard deviation of ``exp(A / 2) / sqrt(I0)`` in
  ``A``: worst behind dense cargo;
- a beam profile is a smooth offset down the detector column (a linac's
  beam is brightest on its axis; not every scanner flat-fields it), and
  saturation clips ``A`` where too few photons get through, at a level that
  depends on the scanner's flux.

Together these randomise the acquisition chain, which differs between
scanners (and between simulators) as much as the scenes do: a model must
not learn one scanner's gain, offset, resolution, profile or noise.

Order: TIP first (it adds clean physics to a clean tile), then geometry,
then intensity, then noise, as a scanner would: the object is in the
container before the beam, the detector and the photon statistics act.
Transforms run on albumentations 2.0.8, which accepts float32 in [0, 1]
and clips anything outside; each step here keeps [0, 1] itself.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import cv2
import numpy as np
import torch

from scanml.dataset import ScanDataset
from scanml.io import ScanReadError
from scanml.physics import ATTENUATION_SCALE
from scanml.preprocess import Preprocessing
from scanml.synth import CATEGORIES as SYNTH_CATEGORIES
from scanml.synth import brick_stack_attenuation
from scanml.tiles import PreparedScan, Tile, prepare_record

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network check on import
import albumentations as A

__all__ = [
    "AttenuationGain",
    "AttenuationOffset",
    "BeamProfile",
    "EvalTransform",
    "PhotonNoise",
    "RowStreaks",
    "Saturation",
    "ThreatObject",
    "ThreatProjector",
    "TrainTransform",
    "cut_threat_objects",
    "generate_threat_objects",
]

log = logging.getLogger(__name__)

# Scaling resamples the tile; half the tiles keep the native sampling that
# inference sees.
_AFFINE_P = 0.5


class TrainTransform:
    """Training augmentation of a :class:`~scanml.tiles.Tile`: ``transform(tile, rng) -> tile``.

    Probabilities (``hflip``, ``vflip``, ``noise``, ``blur``, ``row_streaks``)
    say how often a step runs; ranges (``scale_range``, ``gain_range``,
    ``offset_range`` in attenuation units) are drawn for every tile, and a
    range of one value turns a step into a no-op. The image stays float32
    [C, T, T] in [0, 1]; the mask follows the geometry.

    Horizontal flips are plausible: a container is scanned front or rear
    first. Vertical flips are not (``vflip=0`` by default): a side view has a
    floor, wheels below and a roof above, and a model that has learned that
    threats never hang from the roof should keep knowing it.

    All randomness comes from ``rng``, so a tile's augmentation is fixed by
    the seed the loader derives for it, whatever the number of workers.
    """

    def __init__(
        self,
        *,
        tip: ThreatProjector | None = None,
        hflip: float = 0.5,
        vflip: float = 0.0,
        scale_range: tuple[float, float] = (0.9, 1.1),
        gain_range: tuple[float, float] = (0.9, 1.1),
        offset_range: tuple[float, float] = (-0.05, 0.05),
        noise: float = 0.5,
        i0_range: tuple[float, float] = (3e4, 1e6),
        blur: float = 0.2,
        blur_sigma: tuple[float, float] = (0.3, 0.9),
        row_streaks: float = 0.3,
        streak_std: tuple[float, float] = (0.005, 0.03),
        beam_profile: float = 0.0,
        beam_profile_amplitude: tuple[float, float] = (0.01, 0.06),
        saturation: float = 0.0,
        saturation_range: tuple[float, float] = (6.0, 11.0),
        attenuation_scale: float = ATTENUATION_SCALE,
    ) -> None:
        self.tip = tip
        self._compose = A.Compose(
            [
                A.HorizontalFlip(p=hflip),
                A.VerticalFlip(p=vflip),
                # x and y scale independently: the column spacing follows the
                # truck's speed through the portal, the row spacing does not.
                A.Affine(
                    scale={"x": scale_range, "y": scale_range},
                    border_mode=cv2.BORDER_REFLECT_101,
                    p=_AFFINE_P if scale_range[0] != scale_range[1] else 0.0,
                ),
                AttenuationGain(gain_range, p=1.0),
                AttenuationOffset(offset_range, attenuation_scale, p=1.0),
                RowStreaks(streak_std, attenuation_scale, p=row_streaks),
                BeamProfile(beam_profile_amplitude, attenuation_scale, p=beam_profile),
                A.GaussianBlur(blur_limit=(3, 7), sigma_limit=blur_sigma, p=blur),
                PhotonNoise(i0_range, attenuation_scale, p=noise),
                Saturation(saturation_range, attenuation_scale, p=saturation),
            ],
            p=1.0,
        )

    def __call__(self, tile: Tile, rng: np.random.Generator) -> Tile:
        if self.tip is not None:
            tile = self.tip(tile, rng)
        self._compose.set_random_state(rng, random.Random(int(rng.integers(2**63))))
        out = self._compose(
            image=np.ascontiguousarray(tile.image.transpose(1, 2, 0)), mask=tile.mask
        )
        image = np.ascontiguousarray(
            out["image"].reshape((*tile.image.shape[1:], -1)).transpose(2, 0, 1)
        )
        return replace(tile, image=image.astype(np.float32, copy=False), mask=out["mask"])


class EvalTransform:
    """The tile as prepared: evaluation sees the physics unaltered."""

    def __call__(self, tile: Tile, rng: np.random.Generator) -> Tile:
        return tile


@dataclass(frozen=True)
class ThreatObject:
    """An object to project: its attenuation alone, on the model grid.

    ``image`` is float32 [C, h, w] in model units (attenuation / scale),
    background removed, non-negative; ``category`` indexes the model's
    categories.
    """

    image: np.ndarray
    category: int


class ThreatProjector:
    """Threat image projection: add a threat's attenuation to clean tiles.

    With probability ``rate``, a tile labelled 0 receives an object at a
    random place, flipped and turned by a multiple of 90 degrees (a brick
    lies any way up in a side view), at a random ``depth`` (thickness along
    the ray relative to the source object) from ``depth_range``. Objects
    come from two pools: ``objects`` cut from annotated training scans, and
    ``generated`` brick stacks from the simulator, drawn with probability
    ``synthetic_fraction`` when both pools hold objects. The tile becomes
    positive: label 1, its mask set over the object's rectangle, its
    category the object's, its source ``"tip"``. The object lands only
    where the tile holds material (median attenuation under it at least
    ``min_background``, model units) and only when it adds at least
    ``min_contrast`` at its densest: otherwise the tile stays clean, because
    a threat floating in air or too faint to see is a label without a
    signal. Mined hard negatives
    (source ``"hard"``) are left alone: they are the scarce examples of what
    the current model mistakes for a threat.
    """

    def __init__(
        self,
        objects: Sequence[ThreatObject],
        generated: Sequence[ThreatObject] = (),
        *,
        rate: float = 0.25,
        depth_range: tuple[float, float] = (0.5, 1.5),
        synthetic_fraction: float = 0.5,
        min_contrast: float = 0.1 / ATTENUATION_SCALE,
        min_background: float = 0.5 / ATTENUATION_SCALE,
    ) -> None:
        if not objects and not generated:
            raise ValueError("threat image projection needs at least one object")
        if not 0 <= rate <= 1 or not 0 <= synthetic_fraction <= 1:
            raise ValueError("rate and synthetic_fraction must lie in [0, 1]")
        if not 0 < depth_range[0] <= depth_range[1]:
            raise ValueError(f"depth_range must be positive and ordered, got {depth_range}")
        self.objects = list(objects)
        self.generated = list(generated)
        self.rate = rate
        self.depth_range = depth_range
        self.min_contrast = min_contrast
        self.min_background = min_background
        self.synthetic_fraction = (
            synthetic_fraction if objects and generated else float(bool(generated))
        )

    @classmethod
    def from_dataset(
        cls,
        dataset: ScanDataset,
        preprocessing: Preprocessing,
        *,
        rate: float = 0.25,
        depth_range: tuple[float, float] = (0.5, 1.5),
        synthetic_fraction: float = 0.5,
        categories: Sequence[str] | None = None,
        n_generated: int = 64,
        seed: int = 0,
    ) -> ThreatProjector:
        """Build both pools: objects cut from ``dataset`` (the training split), and generated ones.

        Reads each anomalous scan once; scans that fail to read are logged
        and skipped.
        """
        categories = list(categories if categories is not None else dataset.categories)
        objects = []
        for record in dataset.records:
            if record.boxes:
                try:
                    objects += cut_threat_objects(prepare_record(record, preprocessing, categories))
                except ScanReadError as exc:
                    log.warning("threat bank skips %s: %s", record.scan_id, exc)
        generated = (
            generate_threat_objects(preprocessing, categories, n_generated, seed=seed)
            if synthetic_fraction > 0
            else []
        )
        log.info("threat projection: %d cut objects, %d generated", len(objects), len(generated))
        return cls(
            objects,
            generated,
            rate=rate,
            depth_range=depth_range,
            synthetic_fraction=synthetic_fraction,
        )

    def __call__(self, tile: Tile, rng: np.random.Generator) -> Tile:
        if tile.label != 0 or tile.source == "hard" or rng.random() >= self.rate:
            return tile
        pool = self.generated if rng.random() < self.synthetic_fraction else self.objects
        threat = pool[rng.integers(len(pool))]
        image = np.rot90(threat.image, k=int(rng.integers(4)), axes=(1, 2))
        image = image[:, :, ::-1] if rng.random() < 0.5 else image
        size = tile.image.shape[1]
        height, width = min(image.shape[1], size), min(image.shape[2], size)
        # An object larger than the tile shows the part of it that the tile would.
        top = int(rng.integers(image.shape[1] - height + 1))
        left = int(rng.integers(image.shape[2] - width + 1))
        image = image[:, top : top + height, left : left + width]
        depth = float(rng.uniform(*self.depth_range))
        if depth * float(image[0].max(initial=0.0)) < self.min_contrast:
            return tile  # too faint to see: a positive label on it would only be noise
        place = self._inside_cargo(tile.image[0], height, width, rng)
        if place is None:
            return tile
        return self.project(tile, image, *place, depth, threat.category)

    def _inside_cargo(
        self, image: np.ndarray, height: int, width: int, rng: np.random.Generator
    ) -> tuple[int, int] | None:
        """A place for the object where the tile holds cargo or structure, not open air.

        Contraband is carried in containers and vehicles: an object pasted
        into the air above a container is a positive no scan will ever
        show, and it teaches the network that threats float. A few random
        places are tried; the tile is left clean when none is inside.
        """
        size = image.shape[0]
        for _ in range(8):
            y, x = int(rng.integers(size - height + 1)), int(rng.integers(size - width + 1))
            if float(np.median(image[y : y + height, x : x + width])) >= self.min_background:
                return y, x
        return None

    @staticmethod
    def project(
        tile: Tile, threat: np.ndarray, y: int, x: int, depth: float, category: int
    ) -> Tile:
        """Add ``depth * threat`` (model units, [C, h, w]) to the tile at row ``y``, column ``x``.

        The deterministic core of :meth:`__call__`, for tests and for
        building fixed projected sets.
        """
        height, width = threat.shape[1:]
        image = tile.image.copy()
        region = image[:, y : y + height, x : x + width]
        if region.shape != threat.shape:
            raise ValueError(
                f"a {threat.shape} object at ({y}, {x}) leaves the {tile.image.shape} tile"
            )
        np.clip(region + depth * threat, 0.0, 1.0, out=region)
        mask = tile.mask.copy()
        mask[y : y + height, x : x + width] = 1.0
        return replace(tile, image=image, mask=mask, label=1, category=category, source="tip")


def cut_threat_objects(scan: PreparedScan, *, ring: int = 3) -> list[ThreatObject]:
    """The annotated objects of a prepared scan, with the cargo behind them removed.

    The background inside a box is interpolated from a ``ring`` pixels wide
    border around it (median across the ring, linear across the box, the
    mean of the vertical and horizontal interpolations): the scan's cargo
    varies across a box, and a constant background would leave a gradient
    in the object. What remains is clipped at 0: an object only adds.
    """
    _, height, width = scan.image.shape
    objects = []
    for (x, y, w, h), category in zip(scan.boxes, scan.box_categories, strict=True):
        x0, y0 = max(int(np.floor(x)), 0), max(int(np.floor(y)), 0)
        x1, y1 = min(int(np.ceil(x + w)), width), min(int(np.ceil(y + h)), height)
        if x1 <= x0 or y1 <= y0:
            continue
        background = _interpolated_background(scan.image, x0, y0, x1, y1, ring)
        image = np.maximum(scan.image[:, y0:y1, x0:x1] - background, 0.0).astype(np.float32)
        objects.append(ThreatObject(image, int(category)))
    return objects


def generate_threat_objects(
    preprocessing: Preprocessing, categories: Sequence[str], count: int, *, seed: int
) -> list[ThreatObject]:
    """Objects from the simulator, on the model grid, for the categories both know.

    Generated once and reused: simulating an object per tile would cost
    more than the rest of the loader.
    """
    categories = list(categories)
    makeable = [name for name in categories if name in SYNTH_CATEGORIES]
    rng = np.random.default_rng(seed)
    spacing = (preprocessing.spacing_mm, preprocessing.spacing_mm)
    objects = []
    for k in range(count if makeable else 0):
        attenuation, category = brick_stack_attenuation(
            rng, spacing, preprocessing.channels, makeable[k % len(makeable)]
        )
        image = np.clip(attenuation / preprocessing.attenuation_scale, 0.0, 1.0).astype(np.float32)
        if image.any():
            objects.append(ThreatObject(image, categories.index(category)))
    return objects


class AttenuationGain(A.ImageOnlyTransform):
    """Multiply attenuation by a gain drawn from ``gain_range``: density and thickness vary."""

    def __init__(self, gain_range: tuple[float, float] = (0.9, 1.1), p: float = 0.5) -> None:
        super().__init__(p=p)
        self.gain_range = gain_range

    def get_params(self) -> dict[str, Any]:
        return {"gain": self.py_random.uniform(*self.gain_range)}

    def apply(self, img: np.ndarray, gain: float, **params: Any) -> np.ndarray:
        return np.clip(img * np.float32(gain), 0.0, 1.0)


class AttenuationOffset(A.ImageOnlyTransform):
    """Add an offset drawn from ``offset_range`` (attenuation units): I0 calibration drift."""

    def __init__(
        self,
        offset_range: tuple[float, float] = (-0.05, 0.05),
        attenuation_scale: float = ATTENUATION_SCALE,
        p: float = 0.5,
    ) -> None:
        super().__init__(p=p)
        self.offset_range = offset_range
        self.attenuation_scale = attenuation_scale

    def get_params(self) -> dict[str, Any]:
        return {"offset": self.py_random.uniform(*self.offset_range) / self.attenuation_scale}

    def apply(self, img: np.ndarray, offset: float, **params: Any) -> np.ndarray:
        return np.clip(img + np.float32(offset), 0.0, 1.0)


class RowStreaks(A.ImageOnlyTransform):
    """Per-row attenuation offsets: detector elements whose gains differ.

    A gain ``g`` on a row's transmission is an offset ``-ln g`` on its
    attenuation, the same along the whole row (horizontal streaks) and, on
    one detector, for every energy channel. Offsets are N(0, sigma) with
    sigma drawn from ``std_range`` (attenuation units).
    """

    def __init__(
        self,
        std_range: tuple[float, float] = (0.005, 0.03),
        attenuation_scale: float = ATTENUATION_SCALE,
        p: float = 0.5,
    ) -> None:
        super().__init__(p=p)
        self.std_range = std_range
        self.attenuation_scale = attenuation_scale

    def get_params_dependent_on_data(
        self, params: dict[str, Any], data: dict[str, Any]
    ) -> dict[str, Any]:
        rows = params["shape"][0]
        std = self.py_random.uniform(*self.std_range) / self.attenuation_scale
        offsets = self.random_generator.standard_normal(rows, dtype=np.float32) * np.float32(std)
        return {"offsets": offsets}

    def apply(self, img: np.ndarray, offsets: np.ndarray, **params: Any) -> np.ndarray:
        return np.clip(img + offsets.reshape(-1, *([1] * (img.ndim - 1))), 0.0, 1.0)


class BeamProfile(A.ImageOnlyTransform):
    """A smooth attenuation offset down the rows: the beam profile left in the image.

    A linac's fan beam is brightest on its axis and falls off towards the
    ends of the detector column; a scanner that does not flat-field it
    leaves ``-ln(profile(row))`` on every column. Over a tile that is a
    smooth curve: a tilt plus a bow, of peak amplitude drawn from
    ``amplitude_range`` (attenuation units; 0.04 is a 4 % profile).
    """

    def __init__(
        self,
        amplitude_range: tuple[float, float] = (0.01, 0.06),
        attenuation_scale: float = ATTENUATION_SCALE,
        p: float = 0.5,
    ) -> None:
        super().__init__(p=p)
        self.amplitude_range = amplitude_range
        self.attenuation_scale = attenuation_scale

    def get_params_dependent_on_data(
        self, params: dict[str, Any], data: dict[str, Any]
    ) -> dict[str, Any]:
        rows = params["shape"][0]
        amplitude = self.py_random.uniform(*self.amplitude_range) / self.attenuation_scale
        tilt, bow = self.random_generator.uniform(-1.0, 1.0, size=2)
        position = np.linspace(-1.0, 1.0, rows, dtype=np.float32)
        curve = tilt * position + bow * (position**2 - 1 / 3)
        peak = max(float(np.abs(curve).max()), 1e-6)
        return {"offsets": (curve * np.float32(amplitude / peak)).astype(np.float32)}

    def apply(self, img: np.ndarray, offsets: np.ndarray, **params: Any) -> np.ndarray:
        return np.clip(img + offsets.reshape(-1, *([1] * (img.ndim - 1))), 0.0, 1.0)


class Saturation(A.ImageOnlyTransform):
    """Clip attenuation at ``A_max = ln(I0 / floor)``, drawn from ``level_range``.

    Where fewer than a few photons get through, a detector reads its floor
    and the image says "impenetrable": the level depends on the scanner's
    flux, so a model must not rely on one scanner's ceiling.
    """

    def __init__(
        self,
        level_range: tuple[float, float] = (6.0, 11.0),
        attenuation_scale: float = ATTENUATION_SCALE,
        p: float = 0.5,
    ) -> None:
        super().__init__(p=p)
        self.level_range = level_range
        self.attenuation_scale = attenuation_scale

    def get_params(self) -> dict[str, Any]:
        return {"level": self.py_random.uniform(*self.level_range) / self.attenuation_scale}

    def apply(self, img: np.ndarray, level: float, **params: Any) -> np.ndarray:
        return np.minimum(img, np.float32(min(level, 1.0)))


class PhotonNoise(A.ImageOnlyTransform):
    """Poisson photon noise in attenuation: std ``exp(A / 2) / sqrt(I0)``.

    From ``A = -ln(N / I0)`` with ``N ~ Poisson(I0 exp(-A))``: dense cargo
    lets few photons through and is noisiest. ``I0`` (open-beam counts per
    pixel) is drawn log-uniformly from ``i0_range``, because scanners and
    dose settings differ by orders of magnitude.
    """

    def __init__(
        self,
        i0_range: tuple[float, float] = (3e4, 1e6),
        attenuation_scale: float = ATTENUATION_SCALE,
        p: float = 0.5,
    ) -> None:
        super().__init__(p=p)
        self.i0_range = i0_range
        self.attenuation_scale = attenuation_scale

    def get_params_dependent_on_data(
        self, params: dict[str, Any], data: dict[str, Any]
    ) -> dict[str, Any]:
        i0 = float(np.exp(self.py_random.uniform(*np.log(self.i0_range))))
        # torch's vectorised normal sampler is ~2.5x faster than numpy's and
        # this is the costliest step; seeded from the transform's own
        # generator, it stays reproducible.
        generator = torch.Generator().manual_seed(int(self.random_generator.integers(2**63)))
        normal = torch.randn(params["shape"], generator=generator).numpy()
        return {"i0": i0, "normal": normal}

    def apply(self, img: np.ndarray, i0: float, normal: np.ndarray, **params: Any) -> np.ndarray:
        scale = np.float32(self.attenuation_scale)
        std = np.exp(img * (scale / 2)) / np.float32(np.sqrt(i0) * scale)
        return np.clip(img + normal.reshape(img.shape) * std, 0.0, 1.0)


def _interpolated_background(
    image: np.ndarray, x0: int, y0: int, x1: int, y1: int, ring: int
) -> np.ndarray:
    """Background [C, h, w] under a box, interpolated from the ring around it.

    Each side's profile is the median across its strip, which sits at the
    strip's centre line; interpolating between the two centre lines makes
    the estimate exact for a background that varies linearly.
    """
    _, height, width = image.shape
    estimates = []
    for axis, start, stop, size, across in (
        (1, y0, y1, height, (x0, x1)),
        (2, x0, x1, width, (y0, y1)),
    ):
        near = (max(start - ring, 0), start)
        far = (stop, min(stop + ring, size))
        strips = [
            (np.median(_strip(image, axis, span, across), axis=axis), (span[0] + span[1] - 1) / 2)
            for span in (near, far)
            if span[1] > span[0]
        ]
        if not strips:
            continue
        # A side at the image edge has no ring: the other side alone gives a constant.
        (first, at_first), (last, at_last) = strips[0], strips[-1]
        position = np.arange(start, stop, dtype=np.float32)
        t = (position - at_first) / (at_last - at_first) if at_last != at_first else 0 * position
        if axis == 1:  # profiles run along columns [C, w]; interpolate down the rows
            estimates.append(first[:, None, :] + (last - first)[:, None, :] * t[:, None])
        else:  # profiles run along rows [C, h]; interpolate across the columns
            estimates.append(first[:, :, None] + (last - first)[:, :, None] * t)
    if not estimates:
        return np.zeros((image.shape[0], y1 - y0, x1 - x0), dtype=np.float32)
    return np.mean(estimates, axis=0)


def _strip(
    image: np.ndarray, axis: int, span: tuple[int, int], across: tuple[int, int]
) -> np.ndarray:
    """Rows ``span`` x columns ``across`` (axis 1), or rows ``across`` x columns ``span`` (axis 2)."""
    if axis == 1:
        return image[:, span[0] : span[1], across[0] : across[1]]
    return image[:, across[0] : across[1], span[0] : span[1]]
