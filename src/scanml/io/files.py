"""Reading and writing scan files: one reader and one writer per format, chosen by suffix."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
from pydicom.uid import ExplicitVRLittleEndian

from scanml.fsutil import write_atomically
from scanml.io.budget import check_spacing
from scanml.io.dicom import (
    Encoding,
    Photometric,
    ScanAssumptionWarning,
    read_dicom,
    write_dicom,
)
from scanml.io.dicos import energy_partner_paths, with_scan_uids
from scanml.io.errors import ScanReadError
from scanml.io.npy import read_npy, write_npy
from scanml.io.openbeam import normalise_open_beam
from scanml.io.raster import read_png, read_tiff, write_png, write_tiff
from scanml.io.scan import DecodedImage, Scan
from scanml.profiles import OpenBeam, ProfileRegistry, ScannerProfile, default_registry

# Decoded images larger than this are refused unread: 1 GiB holds a
# 25-megapixel dual-energy scan in float32 five times over.
DEFAULT_MAX_BYTES = 1 << 30


class Reader(Protocol):
    """One format's reader: decode the file, checking sizes against the budget first."""

    def __call__(self, path: Path, *, max_bytes: int) -> DecodedImage: ...


_READERS: dict[str, Reader] = {
    ".dcm": read_dicom,
    ".dicom": read_dicom,
    ".dcs": read_dicom,
    ".tif": read_tiff,
    ".tiff": read_tiff,
    ".png": read_png,
    ".npy": read_npy,
}
SUPPORTED_SUFFIXES: tuple[str, ...] = tuple(_READERS)

_DICOM_SUFFIXES = (".dcm", ".dicom", ".dcs")
_DEFAULT_CHANNELS = {1: ["high"], 2: ["high", "low"]}


def read_scan(
    path: str | os.PathLike[str],
    *,
    spacing_mm: float | tuple[float, float] | None = None,
    channels: Sequence[str] | None = None,
    site: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    profile: ScannerProfile | str | None = None,
    profiles: ProfileRegistry | None = None,
) -> Scan:
    """Read a scan file as float32 log-attenuation [C, H, W].

    ``spacing_mm`` (row, column, or one number for square pixels) is used
    when the file carries none (TIFF, PNG, ``.npy``, DICOM without
    PixelSpacing); ``channels`` names the file's channels, overriding names
    it stores; ``site`` overrides the file's. Attenuation below 0 (T > 1,
    photon noise over open beam) is clipped to 0, so 0 is always air.

    ``meta`` always holds ``path``, ``format`` (dicom, tiff, png, npy),
    ``scan_id`` (DICOM SeriesDescription, else the file's stem), ``site``
    (DICOM InstitutionName, else None), ``spacing_source`` and ``encoding``
    (LIN, LOG or ATTENUATION); LIN/LOG files add ``sign`` and
    ``full_scale``; DICOM adds its UIDs, modality, transfer syntax,
    photometric interpretation, bits stored, rescale slope/intercept and
    whether the relationship or sign was assumed.

    ``max_bytes`` bounds the decoded image (the larger of its stored values
    and its float32 attenuation) and the file size; both are checked before
    decoding. Raises ScanReadError, and no other exception, for any file
    that cannot be read; ValueError for invalid arguments.

    Scanner profiles (:mod:`scanml.profiles`) supply what files leave out:
    ``profile`` (one, or its name in ``profiles``) applies to this file;
    otherwise the first profile of ``profiles`` (default: the folder
    :func:`scanml.profiles.default_registry` names) matching the file's
    Manufacturer/model/station, else ``site``, is applied. Its spacing is
    used where the file and ``spacing_mm`` give none. The open beam is then
    brought to attenuation 0 (:mod:`scanml.io.openbeam`; by default
    estimated per row from the scan's air), recorded in ``meta["open_beam"]``.
    What the reader had to assume is in ``meta["assumptions"]`` and was
    warned about (:class:`scanml.io.dicom.ScanAssumptionWarning`).
    """
    path = Path(path)
    fallback_spacing = _spacing_argument(spacing_mm)
    chosen = _chosen_profile(profile, profiles)

    def resolve(equipment: Mapping[str, str | None] | None) -> ScannerProfile | None:
        if chosen is not None:
            return chosen
        known = profiles if profiles is not None else default_registry()
        return known.match(equipment or {}, site)

    try:
        reader = _reader_for(path)
        if reader is read_dicom:
            decoded = read_dicom(path, max_bytes=max_bytes, resolve_profile=resolve)
        else:
            decoded = reader(path, max_bytes=max_bytes)
        applied = resolve(decoded.meta.get("equipment"))
        return _to_scan(path, decoded, fallback_spacing, channels, site, applied)
    except ScanReadError:
        raise
    except Exception as exc:  # untrusted input: every failure becomes the one error type
        raise ScanReadError(path, f"{type(exc).__name__}: {exc}") from exc
    except BaseException as exc:
        # A compiled decoder's panic (pyo3's PanicException) derives from
        # BaseException: it is the file's fault too, not a reason to stop.
        if type(exc).__name__ != "PanicException":
            raise
        raise ScanReadError(path, f"the decoder panicked: {exc}") from exc


def write_scan(
    scan: Scan,
    path: str | os.PathLike[str],
    *,
    encoding: Encoding | None = None,
    photometric: Photometric = "MONOCHROME2",
    sign: Literal[1, -1] | None = None,
    transfer_syntax: str = ExplicitVRLittleEndian,
    bits: int = 16,
) -> Path:
    """Write ``scan`` in the format its suffix names; returns the path.

    ``.dcm``/``.dicom``/``.dcs``: DICOS DX as SDICOS reads it (see
    :mod:`scanml.io.dicos`), one instance per energy: a dual-energy scan
    written to ``x.dcm`` is ``x.dcm`` (high) and ``x.low.dcm`` (named for
    the second channel), which :func:`read_scan` of ``x.dcm`` reads back
    together; ``encoding`` defaults to LOG, and the other keywords apply to
    DICOM only. ``.tif``/``.tiff`` (one page per
    channel) and ``.png`` (one channel): 16-bit LIN transmission. ``.npy``:
    float32 attenuation. The file appears whole or not at all: it is
    written beside the target and renamed, so a killed job leaves no
    half-written scan.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in _DICOM_SUFFIXES:
        options = {
            "encoding": encoding or "LOG",
            "photometric": photometric,
            "sign": sign,
            "transfer_syntax": transfer_syntax,
            "bits": bits,
        }
        _write_dicos(scan, path, options)
        return path
    writers = {".tif": write_tiff, ".tiff": write_tiff, ".png": write_png, ".npy": write_npy}
    if suffix not in writers:
        raise ValueError(
            f"cannot write {path.name!r}: supported suffixes are {', '.join(SUPPORTED_SUFFIXES)}"
        )
    if (photometric, sign, transfer_syntax, bits) != (
        "MONOCHROME2",
        None,
        ExplicitVRLittleEndian,
        16,
    ):
        raise ValueError("photometric, sign, transfer_syntax and bits apply to DICOM files only")
    expected = "ATTENUATION" if suffix == ".npy" else "LIN"
    if encoding not in (None, expected):
        raise ValueError(f"{suffix} files hold {expected} values, not {encoding}")
    write_atomically(path, lambda target: writers[suffix](scan, target))
    return path


def _write_dicos(scan: Scan, path: Path, options: dict) -> None:
    """One DICOS DX instance per energy: the first at ``path``, the others beside it."""
    count = len(scan.channels)
    targets = energy_partner_paths(path, scan.channels)
    meta = with_scan_uids(scan.meta)
    for index, target in enumerate(targets):
        single = Scan(
            scan.attenuation[index : index + 1], scan.spacing_mm, [scan.channels[index]], meta
        )

        def write(partial: Path, single: Scan = single, index: int = index) -> None:
            write_dicom(single, partial, channel_index=index, channel_count=count, **options)

        write_atomically(target, write)


def _reader_for(path: Path) -> Reader:
    """The reader for the suffix; DICOM is also recognised by its preamble."""
    if path.is_dir():
        raise ScanReadError(path, "it is a directory, not a file")
    if not path.is_file():
        raise ScanReadError(path, "no such file")
    reader = _READERS.get(path.suffix.lower())
    if reader is not None:
        return reader
    with path.open("rb") as stream:
        stream.seek(128)
        if stream.read(4) == b"DICM":
            return read_dicom
    raise ScanReadError(
        path,
        f"unsupported file type {path.suffix or '(no suffix)'!r}: supported suffixes are"
        f" {', '.join(SUPPORTED_SUFFIXES)}, and DICOM files with the 'DICM' preamble",
    )


def _to_scan(
    path: Path,
    decoded: DecodedImage,
    fallback_spacing: tuple[float, float] | None,
    channels: Sequence[str] | None,
    site: str | None,
    profile: ScannerProfile | None,
) -> Scan:
    """The checks and defaults that every format shares."""
    attenuation = decoded.attenuation
    if not np.isfinite(attenuation).all():
        raise ScanReadError(path, "the image holds NaN or infinite values")
    meta = {"path": str(path), "spacing_source": "argument", "assumptions": [], **decoded.meta}
    if meta.get("encoding") != "ATTENUATION":
        _normalise_open_beam(path, attenuation, meta, profile)
    np.maximum(attenuation, 0.0, out=attenuation)
    spacing = decoded.spacing_mm or fallback_spacing
    if spacing is None and profile is not None and profile.spacing_mm is not None:
        spacing, meta["spacing_source"] = profile.spacing_mm, f"profile {profile.name}"
    if spacing is None:
        raise ScanReadError(
            path,
            f"the {decoded.meta.get('format', '')} file carries no pixel spacing:"
            " pass spacing_mm=(row_mm, column_mm), or add a scanner profile with spacing_mm",
        )
    check_spacing(path, spacing, "pixel spacing" if decoded.spacing_mm else "spacing_mm")
    count = attenuation.shape[0]
    profile_names = list(profile.channels) if profile and profile.channels else None
    if profile_names is not None and len(profile_names) != count:
        profile_names = None
    names = list(channels or decoded.channels or profile_names or _default_channels(count))
    if len(names) != count:
        raise ScanReadError(
            path, f"the file holds {count} channel(s) but {names} name(s) were given"
        )
    meta["scan_id"] = meta.get("scan_id") or path.stem
    meta["site"] = site if site is not None else meta.get("site")
    meta["profile"] = profile.name if profile is not None else None
    if profile is not None:
        meta["ooi_type"] = profile.ooi_type
    return Scan(attenuation, spacing, names, meta)


def _normalise_open_beam(
    path: Path, attenuation: np.ndarray, meta: dict, profile: ScannerProfile | None
) -> None:
    """Air to attenuation 0, as the profile says or estimated; a failed estimate is said."""
    open_beam = profile.open_beam if profile is not None else OpenBeam()
    result = normalise_open_beam(attenuation, open_beam)
    meta["open_beam"] = result.record
    if not result.found:
        note = (
            f"open beam not found ({result.record.get('note')}): air assumed at full scale;"
            " if the values are LOG labelled LIN, or the air level is known, a scanner"
            " profile settles it"
        )
        meta["assumptions"].append(note)
        warnings.warn(f"{path}: {note}", ScanAssumptionWarning, stacklevel=4)


def _chosen_profile(
    profile: ScannerProfile | str | None, profiles: ProfileRegistry | None
) -> ScannerProfile | None:
    if profile is None or isinstance(profile, ScannerProfile):
        return profile
    registry = profiles if profiles is not None else default_registry()
    try:
        return registry.get(profile)
    except KeyError as exc:
        raise ValueError(str(exc.args[0])) from exc


def _default_channels(count: int) -> list[str]:
    return _DEFAULT_CHANNELS.get(count) or [f"channel{index}" for index in range(count)]


def _spacing_argument(spacing_mm: float | tuple[float, float] | None) -> tuple[float, float] | None:
    if spacing_mm is None:
        return None
    pair = (spacing_mm, spacing_mm) if np.isscalar(spacing_mm) else tuple(spacing_mm)  # type: ignore[arg-type]
    if len(pair) != 2 or not all(np.isfinite(value) and value > 0 for value in pair):
        raise ValueError(f"spacing_mm must be one or two positive numbers, got {spacing_mm!r}")
    return (float(pair[0]), float(pair[1]))
