"""What a DICOM pixel value means physically: the intensity relationship, its sign, its scale.

See :mod:`scanml.io.dicom` for the conventions; this module holds the
decision (what the file says, what a scanner profile settles, what is
assumed) and the conversion of stored values to attenuation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut

from scanml.io.dicos import attenuation_scale, is_dicos
from scanml.io.errors import ScanReadError
from scanml.profiles import ScannerProfile

# Modalities whose images are projections of an X-ray beam, where LIN may be
# assumed when the file does not say; CT or MR values are no transmission.
# XRAY and RG are what DICOS toolkits and vendors write.
PROJECTION_MODALITIES = frozenset({"DX", "CR", "XRAY", "RG", "RF", "XA", "MG", "IO", "PX", "OT"})

# The direction in which each relationship's values naturally run:
# LIN grows with intensity (+1), LOG (attenuation) grows against it (-1).
NATURAL_SIGN = {"LIN": 1, "LOG": -1}


@dataclass(frozen=True)
class IntensityEncoding:
    """What the file says (or the profile settles, or is assumed) about its values' physics."""

    relationship: Literal["LIN", "LOG"]
    sign: int
    relationship_assumed: bool
    sign_assumed: bool
    log_scale: tuple[float, float] | None  # (attenuation per value, offset) for LOG
    notes: list[str] = field(default_factory=list)  # assumptions: warned about
    overrides: list[str] = field(default_factory=list)  # a profile's settlements: recorded

    @classmethod
    def of(
        cls, path: Path, dataset: Dataset, photometric: str, profile: ScannerProfile | None
    ) -> IntensityEncoding:
        notes: list[str] = []
        overrides: list[str] = []
        relationship = str(dataset.get("PixelIntensityRelationship", "") or "").strip().upper()
        relationship_assumed = False
        if profile is not None and profile.relationship is not None:
            if relationship != profile.relationship:
                overrides.append(
                    f"PixelIntensityRelationship {relationship} overridden by scanner profile"
                    f" {profile.name!r}: {profile.relationship}"
                )
            relationship = profile.relationship
        elif not relationship:
            modality = str(dataset.get("Modality", "") or "").strip().upper()
            if modality and modality not in PROJECTION_MODALITIES:
                raise ScanReadError(
                    path,
                    f"modality {modality!r} is not a projection X-ray image and the file has"
                    " no PixelIntensityRelationship saying how its values relate to intensity",
                )
            relationship, relationship_assumed = "LIN", True
            notes.append(
                "no PixelIntensityRelationship: LIN assumed (a scanner profile can settle it)"
            )
        if relationship not in NATURAL_SIGN:
            raise ScanReadError(
                path,
                f"PixelIntensityRelationship {relationship!r}: only LIN and LOG values carry"
                " attenuation (DISP values were transformed for display)",
            )
        sign, sign_assumed = cls._sign(path, dataset, photometric, profile, notes)
        stated_sign = dataset.get("PixelIntensityRelationshipSign")
        if profile is not None and profile.sign is not None and stated_sign != profile.sign:
            overrides.append(
                f"PixelIntensityRelationshipSign {stated_sign} overridden by scanner profile"
                f" {profile.name!r}: {profile.sign:+d}"
            )
        log_scale = cls._log_scale(path, dataset, profile) if relationship == "LOG" else None
        return cls(
            relationship,  # type: ignore[arg-type]
            sign,
            relationship_assumed,
            sign_assumed,
            log_scale,
            notes,
            overrides,
        )

    @staticmethod
    def _sign(
        path: Path,
        dataset: Dataset,
        photometric: str,
        profile: ScannerProfile | None,
        notes: list[str],
    ) -> tuple[int, bool]:
        if profile is not None and profile.sign is not None:
            return profile.sign, False
        raw_sign = dataset.get("PixelIntensityRelationshipSign")
        if raw_sign is not None and raw_sign != "":
            if int(raw_sign) not in (1, -1):
                raise ScanReadError(
                    path, f"PixelIntensityRelationshipSign {raw_sign!r} is not +1 or -1"
                )
            return int(raw_sign), False
        # Security scanners show air bright; medical viewers show bone bright.
        air_bright = is_dicos(dataset)
        sign = 1 if (photometric == "MONOCHROME2") == air_bright else -1
        convention = "security (air bright)" if air_bright else "medical (bone bright)"
        notes.append(
            f"no PixelIntensityRelationshipSign: {sign:+d} assumed from {photometric} and the"
            f" {convention} display convention (a scanner profile can settle it)"
        )
        return sign, True

    @staticmethod
    def _log_scale(
        path: Path, dataset: Dataset, profile: ScannerProfile | None
    ) -> tuple[float, float]:
        if profile is not None and profile.log_scale is not None:
            return profile.log_scale, 0.0
        mapped = attenuation_scale(dataset)
        if mapped is not None:
            return mapped
        if _number(dataset, "RescaleSlope", 1.0) != 1.0 or "ModalityLUTSequence" in dataset:
            return 1.0, 0.0  # the modality LUT's output is natural-log attenuation
        raise ScanReadError(
            path,
            "LOG values with no scale: the file has neither an ATTENUATION real world value"
            " mapping nor a rescale slope, and no scanner profile gives log_scale",
        )


def to_attenuation(
    path: Path,
    stored: np.ndarray,
    dataset: Dataset,
    max_stored: int,
    intensity: IntensityEncoding,
) -> tuple[np.ndarray, float]:
    """Apply the modality LUT, the sign and the relationship (see the module doc)."""
    values = _modality_output(stored, dataset)
    full_scale = float(_modality_output(np.array([max_stored]), dataset)[0])
    if not np.isfinite(full_scale) or full_scale <= 0:
        raise ScanReadError(
            path, f"full scale {full_scale} after the modality LUT is not a positive number"
        )
    if intensity.sign != NATURAL_SIGN[intensity.relationship]:
        np.subtract(np.float32(full_scale), values, out=values)
    if intensity.relationship == "LIN":
        np.divide(values, np.float32(full_scale), out=values)
        np.clip(values, 1.0 / max(max_stored, 1), 1.0, out=values)
        np.log(values, out=values)
        np.negative(values, out=values)
    elif intensity.log_scale is not None and intensity.log_scale != (1.0, 0.0):
        slope, intercept = intensity.log_scale
        values *= np.float32(slope)
        if intercept:
            values += np.float32(intercept)
    return values, full_scale


def _modality_output(stored: np.ndarray, dataset: Dataset) -> np.ndarray:
    """Stored values through the modality LUT, as float32."""
    if "ModalityLUTSequence" in dataset:
        return np.asarray(apply_modality_lut(stored, dataset), dtype=np.float32)
    values = stored.astype(np.float32)
    slope = _number(dataset, "RescaleSlope", 1.0)
    intercept = _number(dataset, "RescaleIntercept", 0.0)
    if slope != 1.0:
        values *= np.float32(slope)
    if intercept != 0.0:
        values += np.float32(intercept)
    return values


def _number(dataset: Dataset, keyword: str, default: float) -> float:
    value = dataset.get(keyword)
    return default if value in (None, "") else float(value)
