"""DICOM and DICOS: reading any projection X-ray file, writing DICOS DX.

How a pixel value becomes attenuation (``A = -ln(I / I0)``)
------------------------------------------------------------
1. The modality LUT (RescaleSlope/RescaleIntercept, or a Modality LUT
   Sequence) turns stored values ``s`` into values ``v``. The *full scale*
   ``F`` is the modality LUT applied to the largest storable value,
   ``2**BitsStored - 1``.
2. PixelIntensityRelationshipSign says which way ``v`` runs: +1, larger
   values mean more intensity; -1, larger values mean less. Where the sign
   runs against the relationship's natural direction (LIN: up with
   intensity; LOG: up with attenuation) the value is mirrored, ``v := F - v``.
3. PixelIntensityRelationship then gives the physics: LIN, ``v`` is
   transmitted intensity, so ``T = v / F`` and ``A = -ln T`` (T is floored at
   one count, so an impenetrable pixel reads as ``ln(2**BitsStored - 1)``);
   LOG, ``v`` is log intensity in natural-log units, i.e. the attenuation.

PhotometricInterpretation only tells a viewer how to map the values to grey
(MONOCHROME1: the smallest value is white), after the modality and VOI LUTs;
it does not change what a value means physically, so where the file states
its sign the photometric interpretation is ignored. Where the sign is
missing it is inferred from the photometric interpretation, on the scanner
convention that air is shown bright: MONOCHROME2 gives +1, MONOCHROME1 -1.
A file without PixelIntensityRelationship is read as LIN if its modality is
a projection X-ray one (or missing); a medical (non-DICOS) file without
PixelIntensityRelationshipSign follows the medical display convention
instead (MONOCHROME2 shows bone bright, so values grow with attenuation).
Every such assumption is a warning (:class:`ScanAssumptionWarning`) and a
line in ``meta["assumptions"]``; a scanner profile settles it, and
overrides a file known to be mislabelled (SDICOS labels everything LIN).

LOG values need a scale: an ``ATTENUATION`` Real World Value Mapping item
(what scanml writes, since DICOS DX requires Rescale Slope 1), a rescale
slope other than 1 (older scanml files: the modality LUT's output is in
natural-log units), or the profile's ``log_scale``; without any of them
the file is refused. Frames are channels only when declared energies
(FrameLabelVector naming each, or the profile's ``channels``); a cine or a
stack is refused. A DICOS DX holding one energy of a dual-energy scan
(Image Type ``HIGH ENERGY``) is read together with its partner files
(:mod:`scanml.io.dicos`).

The writer follows the same convention: with the default sign, a viewer
shows air bright in either photometric interpretation, so a MONOCHROME1
file stores mirrored values and sign -1.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import get_decoder, get_encoder
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)
from pydicom.valuerep import DSfloat

from scanml.io.budget import check_codestreams, check_dataset_stream
from scanml.io.dicos import (
    ENERGY_CHANNEL_NAMES,
    attenuation_mapping,
    dicos_dx_dataset,
    energy_of,
    find_energy_partners,
)
from scanml.io.errors import ScanReadError, check_declared_size, check_file_size
from scanml.io.intensity import NATURAL_SIGN, IntensityEncoding, to_attenuation
from scanml.io.scan import DecodedImage, Scan
from scanml.profiles import ScannerProfile

# Lossless only: a scan that is re-encoded must keep its attenuation.
WRITABLE_TRANSFER_SYNTAXES: tuple[UID, ...] = (
    ExplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    RLELossless,
    JPEG2000Lossless,
    HTJ2KLossless,
    JPEGLSLossless,
)

# LOG files store attenuation in steps of 2**(LOG_RANGE_EXPONENT - bits), so
# every bit depth covers A in [0, 16): beyond 11 (one photon in 2**16) a
# pixel is impenetrable anyway.
LOG_RANGE_EXPONENT = 4

Encoding = Literal["LOG", "LIN"]
Photometric = Literal["MONOCHROME2", "MONOCHROME1"]

# Given a file's Manufacturer, model and station, the scanner profile to apply (or None).
ProfileResolver = Callable[[Mapping[str, str | None]], ScannerProfile | None]


class ScanAssumptionWarning(UserWarning):
    """A file left something out and the reader assumed it (see ``meta["assumptions"]``)."""


def read_dicom(
    path: Path, *, max_bytes: int, resolve_profile: ProfileResolver | None = None
) -> DecodedImage:
    """Decode a DICOM/DICOS projection image into attenuation [C, H, W].

    The declared image size is checked against ``max_bytes`` before pydicom
    allocates the pixel buffer, and pixels are decoded here, because a
    truncated or hostile file only fails at decoding. ``resolve_profile``
    picks the scanner profile from the file's equipment attributes.
    """
    dataset = _parse(path, max_bytes)
    equipment = {
        "manufacturer": _text(dataset, "Manufacturer"),
        "model": _text(dataset, "ManufacturerModelName"),
        "station": _text(dataset, "StationName"),
    }
    profile = resolve_profile(equipment) if resolve_profile is not None else None
    energy = energy_of(dataset)
    partners = (
        [(found, _parse(found, max_bytes)) for found in find_energy_partners(path, dataset)]
        if energy == "HIGH ENERGY"
        else []
    )
    decoded = _decode_one(path, dataset, max_bytes, profile)
    if energy is not None:
        decoded.channels = [ENERGY_CHANNEL_NAMES[energy]]
        names = _frame_labels(dataset, 1)
        if names:
            decoded.channels = names
    for partner_path, partner in partners:
        other = _decode_one(partner_path, partner, max_bytes, profile)
        if other.attenuation.shape[1:] != decoded.attenuation.shape[1:]:
            raise ScanReadError(
                partner_path,
                f"the low-energy image is {other.attenuation.shape[1:]} pixels, the high-energy"
                f" one {decoded.attenuation.shape[1:]}",
            )
        decoded.attenuation = np.concatenate([decoded.attenuation, other.attenuation])
        labels = _frame_labels(partner, 1) or [ENERGY_CHANNEL_NAMES[energy_of(partner) or ""]]
        decoded.channels = [*(decoded.channels or []), *labels]
        decoded.meta["assumptions"] += other.meta["assumptions"]
    if energy is not None:
        decoded.meta["energy_files"] = [str(path)] + [str(p) for p, _ in partners]
        if energy == "HIGH ENERGY" and not partners:
            _assume(decoded.meta, "the low-energy partner file was not found: one channel read")
    decoded.meta["equipment"] = equipment
    decoded.meta["profile"] = profile.name if profile is not None else None
    return decoded


def _parse(path: Path, max_bytes: int) -> Dataset:
    check_file_size(path, max_bytes)
    try:
        # From memory, not from the file: a forged element length makes
        # pydicom ask the file object for gigabytes, which a real file
        # allocates up front and an in-memory buffer does not.
        raw = path.read_bytes()
        check_dataset_stream(path, raw, max_bytes)
        return pydicom.dcmread(io.BytesIO(raw))
    except InvalidDicomError as exc:
        raise ScanReadError(path, f"not a DICOM file ({exc})") from exc


def _decode_one(
    path: Path, dataset: Dataset, max_bytes: int, profile: ScannerProfile | None
) -> DecodedImage:
    """One instance's pixels as attenuation, with what was read and what was assumed."""
    geometry = _ImageGeometry.of(path, dataset)
    check_declared_size(path, geometry.shape, max(geometry.bytes_per_value, 4), max_bytes)
    channels = _declared_channels(path, dataset, geometry.frames, profile)
    _require_decoder(path, dataset)
    syntax = dataset.file_meta.TransferSyntaxUID
    if syntax.is_encapsulated:
        check_codestreams(
            path, dataset.PixelData, syntax, geometry.rows, geometry.columns, geometry.frames
        )
    intensity = IntensityEncoding.of(path, dataset, geometry.photometric, profile)
    stored = _decode_pixels(path, dataset).reshape(geometry.shape)
    attenuation, full_scale = to_attenuation(path, stored, dataset, geometry.max_stored, intensity)
    spacing, spacing_source = _file_spacing(path, dataset)
    meta: dict[str, Any] = {
        "path": str(path),
        "format": "dicom",
        "site": _text(dataset, "InstitutionName"),
        "scan_id": _text(dataset, "SeriesDescription"),
        "modality": _text(dataset, "Modality"),
        "sop_class_uid": _text(dataset, "SOPClassUID"),
        "sop_instance_uid": _text(dataset, "SOPInstanceUID"),
        "study_instance_uid": _text(dataset, "StudyInstanceUID"),
        "series_instance_uid": _text(dataset, "SeriesInstanceUID"),
        "frame_of_reference_uid": _text(dataset, "FrameOfReferenceUID"),
        "transfer_syntax_uid": str(dataset.file_meta.TransferSyntaxUID),
        "photometric_interpretation": geometry.photometric,
        "encoding": intensity.relationship,
        "sign": intensity.sign,
        "encoding_assumed": intensity.relationship_assumed,
        "sign_assumed": intensity.sign_assumed,
        "bits_stored": geometry.bits_stored,
        "rescale_slope": _number(dataset, "RescaleSlope", 1.0),
        "rescale_intercept": _number(dataset, "RescaleIntercept", 0.0),
        "full_scale": full_scale,
        "spacing_source": spacing_source,
        "assumptions": [],
    }
    if meta["site"] == "unknown":  # SDICOS's placeholder is no site
        meta["site"] = None
    meta["profile_overrides"] = intensity.overrides
    for note in intensity.notes:
        _assume(meta, note)
    return DecodedImage(attenuation, spacing, channels, meta)


def _assume(meta: dict[str, Any], note: str) -> None:
    """Record an assumption in ``meta`` and warn about it: no silent guesses."""
    meta.setdefault("assumptions", []).append(note)
    warnings.warn(
        f"{meta.get('path', '')}: {note}".lstrip(": "), ScanAssumptionWarning, stacklevel=3
    )


def _declared_channels(
    path: Path, dataset: Dataset, frames: int, profile: ScannerProfile | None
) -> list[str] | None:
    """Channel names for the frames, refusing frames that are not declared energies."""
    names = _frame_labels(dataset, frames)
    if frames == 1:
        return names
    if names is None and profile is not None and profile.channels is not None:
        names = list(profile.channels) if len(profile.channels) == frames else None
    if names is None:
        raise ScanReadError(
            path,
            f"{frames} frames: frames are read as energy channels only when the file"
            " (FrameLabelVector naming each) or the scanner profile (channels) declares"
            " them; a cine or a stack of images is not one scan",
        )
    return names


def write_dicom(
    scan: Scan,
    path: Path,
    *,
    encoding: Encoding = "LOG",
    photometric: Photometric = "MONOCHROME2",
    sign: Literal[1, -1] | None = None,
    transfer_syntax: str = ExplicitVRLittleEndian,
    bits: int = 16,
    channel_index: int = 0,
    channel_count: int = 1,
) -> None:
    """Write single-channel ``scan`` as one DICOS DX (for presentation) instance.

    ``channel_index`` of ``channel_count`` says which energy of a scan it
    is (see :mod:`scanml.io.dicos`). ``sign`` defaults to the one that makes
    viewers show air bright under ``photometric``. Site and scan id go to
    InstitutionName and SeriesDescription, the channel name to
    FrameLabelVector.
    """
    syntax = _check_write_options(scan, encoding, photometric, sign, transfer_syntax, bits)
    if scan.attenuation.shape[0] != 1:
        raise ValueError("a DICOS DX instance holds one channel: write one file per energy")
    if sign is None:
        sign = 1 if photometric == "MONOCHROME2" else -1
    stored, step = _encode_values(scan.attenuation, encoding, sign, bits)
    full_scale = 2**bits - 1
    dataset = dicos_dx_dataset(
        scan, syntax, channel_index=channel_index, channel_count=channel_count
    )
    dataset.PixelIntensityRelationship = encoding
    dataset.PixelIntensityRelationshipSign = sign
    # DICOS DX requires the identity modality LUT; LOG's scale goes to a Real
    # World Value Mapping item instead.
    dataset.RescaleSlope = "1"
    dataset.RescaleIntercept = "0"
    dataset.RescaleType = "US"
    if encoding == "LOG":
        dataset.RealWorldValueMappingSequence = [attenuation_mapping(step, full_scale)]
    dataset.WindowCenter = DSfloat((full_scale + 1) / 2, auto_format=True)
    dataset.WindowWidth = DSfloat(full_scale + 1, auto_format=True)
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = photometric
    dataset.FrameLabelVector = list(scan.channels)
    dataset.Rows, dataset.Columns = stored.shape[1:]
    dataset.BitsAllocated = stored.dtype.itemsize * 8
    dataset.BitsStored = bits
    dataset.HighBit = bits - 1
    dataset.PixelRepresentation = 0
    if syntax.is_encapsulated:
        dataset.compress(syntax, stored[0], generate_instance_uid=False)
    else:
        dataset.PixelData = stored.tobytes()
        dataset["PixelData"].VR = "OB" if stored.dtype.itemsize == 1 else "OW"
    pydicom.dcmwrite(path, dataset, enforce_file_format=True)


@dataclass(frozen=True)
class _ImageGeometry:
    """The Image Pixel module, checked before any pixel is touched."""

    frames: int
    rows: int
    columns: int
    bits_allocated: int
    bits_stored: int
    signed: bool
    photometric: str

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.frames, self.rows, self.columns)

    @property
    def bytes_per_value(self) -> int:
        return self.bits_allocated // 8

    @property
    def max_stored(self) -> int:
        return 2 ** (self.bits_stored - int(self.signed)) - 1

    @classmethod
    def of(cls, path: Path, dataset: Dataset) -> _ImageGeometry:
        if "PixelData" not in dataset:
            if "FloatPixelData" in dataset or "DoubleFloatPixelData" in dataset:
                reason = "the DICOM file has float pixel data, which is no scanner's output"
            elif "Rows" in dataset:
                reason = (
                    f"the DICOM file declares a {dataset.Rows} x {dataset.get('Columns')} image"
                    " but has no PixelData: it is truncated, or not an image"
                )
            else:
                reason = "the DICOM file has no PixelData: it is not an image"
            raise ScanReadError(path, reason)
        photometric = str(dataset.get("PhotometricInterpretation", "")).strip()
        samples = _integer(path, dataset, "SamplesPerPixel", default=1)
        if photometric not in ("MONOCHROME1", "MONOCHROME2") or samples != 1:
            raise ScanReadError(
                path,
                f"PhotometricInterpretation {photometric!r} with {samples} samples per pixel:"
                " only single-sample MONOCHROME1/MONOCHROME2 images are X-ray scans",
            )
        rows = _integer(path, dataset, "Rows")
        columns = _integer(path, dataset, "Columns")
        frames = _integer(path, dataset, "NumberOfFrames", default=1)
        if min(rows, columns, frames) <= 0:
            raise ScanReadError(
                path, f"empty image: {frames} frame(s) of {rows} x {columns} pixels"
            )
        bits_allocated = _integer(path, dataset, "BitsAllocated")
        bits_stored = _integer(path, dataset, "BitsStored", default=bits_allocated)
        if bits_allocated not in (8, 16, 32) or not 1 <= bits_stored <= bits_allocated:
            raise ScanReadError(
                path,
                f"BitsAllocated {bits_allocated} / BitsStored {bits_stored}: expected 8, 16 or"
                " 32 bits allocated holding 1 to that many stored bits",
            )
        representation = _integer(path, dataset, "PixelRepresentation", default=0)
        return cls(
            frames, rows, columns, bits_allocated, bits_stored, representation == 1, photometric
        )


def _require_decoder(path: Path, dataset: Dataset) -> None:
    """Fail with the install hint when no plugin can decode the transfer syntax."""
    syntax = dataset.file_meta.get("TransferSyntaxUID")
    if syntax is None:
        raise ScanReadError(path, "the file meta information has no TransferSyntaxUID")
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError as exc:
        raise ScanReadError(
            path, f"pixel data in transfer syntax {syntax.name} ({syntax}) cannot be decoded"
        ) from exc
    if not decoder.is_available:
        raise ScanReadError(
            path,
            f"no decoder for {syntax.name} ({syntax}) is installed: python-gdcm, part of"
            " scanml's default install, decodes JPEG lossless and JPEG-LS (pip install"
            " python-gdcm); the optional 'jpeg' extra (pip install 'scanml[jpeg]',"
            " GPL-3.0) is another",
        )


def _decode_pixels(path: Path, dataset: Dataset) -> np.ndarray:
    """Decode now: a truncated or corrupt file only fails here."""
    try:
        return dataset.pixel_array
    except Exception as exc:
        missing = get_decoder(dataset.file_meta.TransferSyntaxUID).missing_dependencies
        hint = (
            "; the optional 'jpeg' extra (pip install 'scanml[jpeg]') adds decoders for more"
            " JPEG variants"
            if any(dependency.startswith("pylibjpeg") for dependency in missing)
            else ""
        )
        raise ScanReadError(path, f"the pixel data cannot be decoded ({exc}){hint}") from exc


def _file_spacing(path: Path, dataset: Dataset) -> tuple[tuple[float, float] | None, str]:
    """(row, column) mm per pixel from PixelSpacing, else ImagerPixelSpacing."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = dataset.get(keyword)
        if value in (None, ""):
            continue
        spacing = tuple(float(v) for v in _as_list(value))
        if len(spacing) == 2 and spacing == (0.0, 0.0):
            continue  # what some writers put for "not known"
        if len(spacing) != 2 or not all(np.isfinite(s) and s > 0 for s in spacing):
            raise ScanReadError(path, f"{keyword} {value!r} is not two positive numbers")
        return (spacing[0], spacing[1]), keyword
    return None, "argument"


def _frame_labels(dataset: Dataset, frames: int) -> list[str] | None:
    """Channel names from FrameLabelVector, when it names every frame."""
    labels = dataset.get("FrameLabelVector")
    if labels in (None, ""):
        return None
    names = [str(label) for label in _as_list(labels)]
    return names if len(names) == frames else None


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, MultiValue | list | tuple) else [value]


def _integer(path: Path, dataset: Dataset, keyword: str, default: int | None = None) -> int:
    value = dataset.get(keyword)
    if value in (None, ""):
        if default is None:
            raise ScanReadError(path, f"the image has no {keyword}")
        return default
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise ScanReadError(path, f"{keyword} {value!r} is not an integer") from exc


def _number(dataset: Dataset, keyword: str, default: float) -> float:
    value = dataset.get(keyword)
    return default if value in (None, "") else float(value)


def _text(dataset: Dataset, keyword: str) -> str | None:
    value = dataset.get(keyword)
    return None if value in (None, "") else str(value)


def _check_write_options(
    scan: Scan,
    encoding: str,
    photometric: str,
    sign: int | None,
    transfer_syntax: str,
    bits: int,
) -> UID:
    """Reject options that would write an unreadable or lossy file, before writing."""
    if encoding not in NATURAL_SIGN:
        raise ValueError(f"encoding must be 'LOG' or 'LIN', got {encoding!r}")
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"photometric must be MONOCHROME1 or MONOCHROME2, got {photometric!r}")
    if sign not in (None, 1, -1):
        raise ValueError(f"sign must be +1, -1 or None, got {sign!r}")
    if not 8 <= bits <= 16:
        raise ValueError(f"bits must be 8 to 16, got {bits}")
    syntax = UID(transfer_syntax)
    if syntax not in WRITABLE_TRANSFER_SYNTAXES:
        names = ", ".join(uid.name for uid in WRITABLE_TRANSFER_SYNTAXES)
        raise ValueError(f"transfer syntax {syntax} is not one of the lossless ones: {names}")
    if syntax.is_encapsulated and not get_encoder(syntax).is_available:
        raise ValueError(
            f"no encoder for {syntax.name} is installed: "
            f"{'; '.join(get_encoder(syntax).missing_dependencies)}"
        )
    for name in scan.channels:
        if not name or len(name) > 16 or "\\" in name:
            raise ValueError(f"channel name {name!r} must be 1 to 16 characters without '\\'")
    for key in ("site", "scan_id"):
        value = scan.meta.get(key)
        if value is not None and (len(str(value)) > 64 or "\\" in str(value)):
            raise ValueError(f"meta[{key!r}] {value!r} must be at most 64 characters without '\\'")
    return syntax


def _encode_values(
    attenuation: np.ndarray, encoding: str, sign: int, bits: int
) -> tuple[np.ndarray, float]:
    """Stored values and the attenuation of one LOG step (1 for LIN)."""
    full_scale = 2**bits - 1
    # float32 holds every 16-bit count exactly and halves the cost of a large scan.
    attenuation = np.clip(attenuation, 0.0, None, dtype=np.float32)
    if encoding == "LIN":
        slope = 1.0
        counts = np.exp(-attenuation) * full_scale
    else:
        slope = 2.0 ** (LOG_RANGE_EXPONENT - bits)
        counts = attenuation / slope
    # Round before mirroring, so that both signs store exactly mirrored values.
    counts = np.clip(np.rint(counts), 0, full_scale)
    if sign != NATURAL_SIGN[encoding]:
        counts = full_scale - counts
    return counts.astype(np.uint8 if bits == 8 else np.uint16), slope
