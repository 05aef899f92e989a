"""One simulated scan: vehicle, container, load, concealments, detector.

:func:`simulate_scan` is the function a notebook calls; the dataset
generator calls it once per scan with the scan's own seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from scanml.io import Scan
from scanml.synth.cargo import CARGO_TYPES, CARGO_WEIGHTS, VARIED_CARGO_WEIGHTS, load_cargo
from scanml.synth.concealment import Annotation, conceal
from scanml.synth.container import ContainerSize, ContainerSpec, render_container
from scanml.synth.detector import measure, saturation_level
from scanml.synth.profiles import SCANNER_PROFILES, ScannerProfile, varied_profile
from scanml.synth.render import Canvas
from scanml.synth.vehicle import Conveyance, plan_vehicle, render_vehicle

__all__ = ["EnergyMode", "SceneSpec", "simulate_scan"]

EnergyMode = Literal["site", "single", "dual"]

# The low-energy flux of a dual-energy retrofit on a single-energy site.
_LOW_TO_HIGH_FLUX = 0.4
# Share of reefers among 40 ft and 20 ft boxes.
_REEFER_SHARE = {"20ft": 0.06, "40ft": 0.1, "40hc": 0.2}


@dataclass(frozen=True)
class SceneSpec:
    """The scene's discrete choices, drawn at random where not given."""

    container: ContainerSpec
    conveyance: Conveyance
    cargo_type: str
    anomalous: bool


def simulate_scan(
    rng_or_seed: np.random.Generator | int | np.random.SeedSequence,
    profile: ScannerProfile | str = "antwerp",
    *,
    length: Literal["20ft", "40ft"] | None = None,
    container: ContainerSize | None = None,
    reefer: bool | None = None,
    cargo_type: str | None = None,
    anomalous: bool | None = None,
    conveyance: Conveyance | None = None,
    energy: EnergyMode = "site",
    scan_id: str | None = None,
    vary_acquisition: bool = False,
    threat_strength: tuple[float, float] = (1.0, 1.0),
    scene_variety: bool = False,
) -> tuple[Scan, list[Annotation]]:
    """Simulate one side-view transmission scan and the boxes of its concealments.

    Anything left as None is drawn at random: ``length`` picks between a 20 ft
    and a 40 ft box (a 40 ft is high-cube one time in three), ``container``
    fixes the exact size. ``anomalous=True`` hides one to three concealments;
    the returned annotations are in the scan's own pixels (COCO ``x, y, w, h``)
    and already mirrored when the site's cab drives on the right. ``energy``
    keeps the site's channels (``"site"``), only the high-energy one
    (``"single"``) or forces two (``"dual"``). ``vary_acquisition`` draws
    this scan's acquisition chain around the profile's (``varied_profile``).
    ``threat_strength`` thins each concealment along the ray by a factor
    drawn log-uniformly in that range (see :func:`~scanml.synth.concealment.conceal`).
    ``scene_variety`` adds cargo kinds (cars) and draws the floor's build
    (thickness, wood, cross-member gauge, a protective layer) per container.
    """
    rng = np.random.default_rng(rng_or_seed)
    if isinstance(profile, str):
        profile = SCANNER_PROFILES[profile]
    if vary_acquisition:
        profile = varied_profile(profile, rng)
    scene = _draw_scene(
        rng, profile, length, container, reefer, cargo_type, anomalous, conveyance, scene_variety
    )
    channels, i0 = _channels(profile, energy, rng)

    layout = plan_vehicle(rng, scene.container, scene.conveyance, profile.scans_cab)
    col_cm, row_cm = profile.col_spacing_mm / 10.0, profile.row_spacing_mm / 10.0
    canvas = Canvas.blank(
        profile.n_rows,
        int(np.ceil(layout.scene_length / col_cm)),
        channels=channels,
        row_cm=row_cm,
        col_cm=col_cm,
        y_top_cm=profile.floor_offset_cm + profile.height_cm,
        rng=rng,
    )
    render_vehicle(canvas, layout, scene.container, rng)
    geometry = render_container(
        canvas, scene.container, layout.container_x, layout.container_y, rng
    )
    load = load_cargo(canvas, geometry, scene.cargo_type, rng)
    annotations = (
        conceal(canvas, geometry, load, rng, strength=threat_strength) if scene.anomalous else []
    )

    attenuation = measure(canvas.attenuation, profile, i0, rng)
    if profile.cab_side == "right":
        attenuation = np.ascontiguousarray(attenuation[:, :, ::-1])
        annotations = [_mirrored(a, canvas.shape[1]) for a in annotations]
    scan = Scan(
        attenuation=attenuation,
        spacing_mm=(profile.row_spacing_mm, profile.col_spacing_mm),
        channels=list(channels),
        meta={
            "site": profile.name,
            "scan_id": scan_id,
            "container": scene.container.size,
            "reefer": scene.container.reefer,
            "cargo_type": scene.cargo_type,
            "conveyance": scene.conveyance,
            "energies_mev": [profile.energies_mev[0], 4.0][: len(channels)],
            "i0": [round(float(v), 1) for v in i0],
            "saturation": [round(float(v), 4) for v in saturation_level(profile, i0)],
            "blur_px": [round(float(v), 3) for v in profile.blur_px],
            "label": int(bool(annotations)),
        },
    )
    return scan, annotations


def _draw_scene(
    rng: np.random.Generator,
    profile: ScannerProfile,
    length: str | None,
    size: ContainerSize | None,
    reefer: bool | None,
    cargo_type: str | None,
    anomalous: bool | None,
    conveyance: Conveyance | None,
    variety: bool = False,
) -> SceneSpec:
    """Draw the scene's discrete choices; the given ones are kept."""
    if size is None:
        if length is None:
            length = "40ft" if rng.random() < 0.6 else "20ft"
        size = "20ft" if length == "20ft" else ("40hc" if rng.random() < 0.35 else "40ft")
    if reefer is None:
        reefer = bool(rng.random() < _REEFER_SHARE[size])
    if cargo_type is None:
        weights = VARIED_CARGO_WEIGHTS if variety else CARGO_WEIGHTS
        cargo_type = str(rng.choice(CARGO_TYPES[: len(weights)], p=weights))
        if reefer and cargo_type != "empty":
            cargo_type = "palletised"
    if conveyance is None:
        conveyance = "rail" if rng.random() < profile.rail_fraction else "truck"
    if anomalous is None:
        anomalous = bool(rng.random() < 0.5)
    return SceneSpec(
        ContainerSpec(size, reefer, varied_floor=variety), conveyance, cargo_type, anomalous
    )


def _channels(
    profile: ScannerProfile, energy: EnergyMode, rng: np.random.Generator
) -> tuple[tuple[Literal["high", "low"], ...], tuple[float, ...]]:
    """Channel names and this scan's unattenuated counts (the linac's output drifts a little)."""
    drift = rng.uniform(0.9, 1.1)
    fluxes = list(profile.i0)
    if energy == "single":
        fluxes = fluxes[:1]
    elif energy == "dual" and len(fluxes) == 1:
        fluxes.append(fluxes[0] * _LOW_TO_HIGH_FLUX)
    names: tuple[Literal["high", "low"], ...] = ("high", "low")[: len(fluxes)]
    return names, tuple(f * drift for f in fluxes)


def _mirrored(annotation: Annotation, width: int) -> Annotation:
    """The same annotation on a scan flipped left to right."""
    x, y, w, h = annotation.bbox
    return Annotation(
        bbox=(width - x - w, y, w, h),
        category=annotation.category,
        concealment=annotation.concealment,
        material=annotation.material,
        mass_kg=annotation.mass_kg,
        contrast=annotation.contrast,
    )
