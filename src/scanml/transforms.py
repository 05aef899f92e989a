"""Augmentation of training tiles, in attenuation space.

A tile is ``x = clip(A / scale, 0, 1)`` with ``A`` the log-attenuation, so
every intensity transform here is a physical statement about ``A``:

- threat image projection (TIP, :mod:`scanml.threat_projection`) adds an
  object's attenuation, because attenuations along a ray add (Beer-Lambert):
  ``x' = x + depth * A_obj / scale``;
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

import os
import random
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import torch

from scanml.physics import ATTENUATION_SCALE
from scanml.threat_projection import (
    ThreatObject,
    ThreatProjector,
    cut_threat_objects,
    generate_threat_objects,
)
from scanml.tiles import Tile

if TYPE_CHECKING:
    from scanml.config import Config
    from scanml.dataset import ScanDataset
    from scanml.preprocess import Preprocessing

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
    "transform_from_config",
]

# Scaling resamples the tile; half the tiles keep the native sampling that
# inference sees.
_AFFINE_P = 0.5


class TrainTransform:
    """Training augmentation of a :class:`~scanml.tiles.Tile`: ``transform(tile, rng) -> tile``.

    Probabilities (``hflip``, ``vflip``, ``noise``, ``blur``, ``row_streaks``)
    say how often a step runs; ranges (``scale_range``, ``gain_range``,
    ``offset_range`` in attenuation units) are drawn for every tile, and a
    range of one value turns a step into a no-op. The image stays float32
    [C, T, T] in [0, 1]; the mask (and the amount map) follows the geometry.

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
        # The amount map follows the geometry as the mask does (nearest, never blended).
        mask = tile.mask if tile.amount is None else np.stack([tile.mask, tile.amount], axis=-1)
        out = self._compose(image=np.ascontiguousarray(tile.image.transpose(1, 2, 0)), mask=mask)
        image = np.ascontiguousarray(
            out["image"].reshape((*tile.image.shape[1:], -1)).transpose(2, 0, 1)
        )
        mask, amount = out["mask"], None
        if tile.amount is not None:
            mask, amount = np.ascontiguousarray(mask[..., 0]), np.ascontiguousarray(mask[..., 1])
        return replace(tile, image=image.astype(np.float32, copy=False), mask=mask, amount=amount)


class EvalTransform:
    """The tile as prepared: evaluation sees the physics unaltered."""

    def __call__(self, tile: Tile, rng: np.random.Generator) -> Tile:
        return tile


def transform_from_config(
    config: Config, train_set: ScanDataset | None, preprocessing: Preprocessing
) -> TrainTransform | EvalTransform:
    """The training transform a configuration asks for (its ``augment`` section), TIP included.

    ``train_set`` is where threat projection cuts its threats; None when TIP is off.
    """
    if not config.augment.enabled:
        return EvalTransform()
    augment = config.augment
    tip = None
    if augment.tip.enabled and augment.tip.rate > 0:
        if train_set is None:
            raise ValueError("augment.tip needs the training scans to cut threats from")
        tip = ThreatProjector.from_dataset(
            train_set,
            preprocessing,
            rate=augment.tip.rate,
            depth_range=augment.tip.depth,
            synthetic_fraction=augment.tip.synthetic_fraction,
            categories=config.model.categories,
            seed=config.seed,
        )
    return TrainTransform(
        tip=tip,
        hflip=augment.hflip,
        scale_range=augment.scale,
        gain_range=augment.gain,
        offset_range=augment.offset,
        noise=augment.noise,
        i0_range=augment.noise_i0,
        blur=augment.blur,
        blur_sigma=augment.blur_sigma,
        row_streaks=augment.row_streaks,
        beam_profile=augment.beam_profile,
        beam_profile_amplitude=augment.beam_profile_amplitude,
        saturation=augment.saturation,
        saturation_range=augment.saturation_range,
        attenuation_scale=config.model.attenuation_scale,
    )


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
