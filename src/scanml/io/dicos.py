"""DICOS DX as the reference toolkit (Stratovan SDICOS) reads it, and its dual-energy model.

SDICOS validates a DX instance against DICOS v3 and refuses it for any
missing attribute, so this module writes the whole set SDICOS itself writes
(file meta DICOS version, object of inspection, scan, series, equipment,
X-ray generation, VOI LUT, DICOS Version (4010,103A)...), with scanml's
values where it has them and SDICOS's own placeholders (``unknown``) where
a scan has none. Constraints that SDICOS enforces and that shape the file:

- Rescale Slope must be 1 and Intercept 0 (DICOM DX), so LOG values carry
  their scale in a Real World Value Mapping item labelled ``ATTENUATION``
  (natural-log units per stored step), which scanml reads back;
- one frame per instance: a dual-energy scan is one DX instance per energy,
  Image Type ``ORIGINAL\\HIGH ENERGY`` and ``ORIGINAL\\LOW ENERGY`` (SDICOS's
  spelling, with a space), sharing the scan (Study Instance UID), series
  and frame of reference. scanml writes the first channel to the path it
  is given and every further one beside it as ``<stem>.<channel><suffix>``
  (:func:`energy_partner_paths`); the reader gathers them back.

Every value derives from ``scan.meta`` (UIDs, acquisition time, site, scan
id), so the same meta writes the same bytes.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID, generate_uid
from pydicom.valuerep import DSfloat

from scanml import __version__
from scanml.io.scan import Scan

DICOS_DX_FOR_PRESENTATION = UID("1.2.840.10008.5.1.4.1.1.501.2.1")
DICOS_SOP_CLASS_PREFIX = "1.2.840.10008.5.1.4.1.1.501."
DICOS_VERSION = "V03"

# Image Type value 2 (OOI Image Characteristics) per energy, as SDICOS spells them.
SINGLE_ENERGY = "INTENSITY"
ENERGY_IMAGE_TYPES = ("HIGH ENERGY", "LOW ENERGY")
ENERGY_CHANNEL_NAMES = {"HIGH ENERGY": "high", "LOW ENERGY": "low"}

# The label of the Real World Value Mapping item that gives LOG values their scale.
ATTENUATION_LABEL = "ATTENUATION"

# SDICOS's placeholder for mandatory attributes a writer has no value for.
UNKNOWN = "unknown"


def energy_partner_paths(path: Path, channels: list[str]) -> list[Path]:
    """Where each channel of a multi-energy scan goes: the path itself, then siblings."""
    return [path] + [path.with_name(f"{path.stem}.{name}{path.suffix}") for name in channels[1:]]


def find_energy_partners(path: Path, dataset: Dataset) -> list[Path]:
    """The low-energy file of the dual-energy scan whose high-energy file is ``path``.

    Looked for as ``<stem>.*<suffix>`` beside it, with the same scan and
    series UIDs and Image Type LOW ENERGY (headers only are read).
    """
    pattern = f"{_glob_escape(path.stem)}.*{path.suffix}"
    for candidate in sorted(path.parent.glob(pattern)):
        if candidate == path or not candidate.is_file():
            continue
        header = _header(candidate)
        if header is None or energy_of(header) != "LOW ENERGY":
            continue
        if all(
            header.get(key) == dataset.get(key) for key in ("StudyInstanceUID", "SeriesInstanceUID")
        ):
            return [candidate]
    return []


def is_energy_partner(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is the low-energy file of a scan read through its high-energy file.

    Folder listings skip such files: each is part of another file's scan.
    """
    path = Path(path)
    stem, dot, _ = path.stem.rpartition(".")
    if not dot or not (path.parent / f"{stem}{path.suffix}").is_file():
        return False
    return high_energy_file(path) is not None


def high_energy_file(path: str | os.PathLike[str]) -> Path | None:
    """The file ``x.dcm`` that a low-energy file ``x.<anything>.dcm`` is read with, whether
    or not it is there yet; None for any other file (its header is read to tell).

    A service watching a folder waits for it: a scanner may write the
    low-energy file first.
    """
    path = Path(path)
    stem, dot, _ = path.stem.rpartition(".")
    if not dot:
        return None
    header = _header(path)
    if header is None or energy_of(header) != "LOW ENERGY":
        return None
    return path.parent / f"{stem}{path.suffix}"


def _header(path: Path) -> Dataset | None:
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:  # not DICOM, or unreadable: not a partner
        return None


def _glob_escape(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def with_scan_uids(meta: dict[str, Any]) -> dict[str, Any]:
    """``meta`` with the scan's UIDs filled in once, so every energy's file shares them."""
    filled = dict(meta)
    for key in ("sop_instance_uid", "study_instance_uid", "series_instance_uid"):
        filled[key] = filled.get(key) or generate_uid()
    return filled


def image_type_for(channel_index: int, channel_count: int) -> list[str]:
    if channel_count == 1:
        return ["ORIGINAL", SINGLE_ENERGY]
    if channel_count > len(ENERGY_IMAGE_TYPES):
        raise ValueError(f"a DICOS DX scan holds one or two energies, not {channel_count} channels")
    return ["ORIGINAL", ENERGY_IMAGE_TYPES[channel_index]]


def dicos_dx_dataset(
    scan: Scan, syntax: UID, *, channel_index: int = 0, channel_count: int = 1
) -> Dataset:
    """Every non-pixel attribute of one DICOS DX instance (one energy) of ``scan``.

    UIDs and the acquisition time come from ``scan.meta`` when it has them
    (a scan read from DICOM, or a simulator that derives them from its seed);
    otherwise they are new. Further energies get instance UIDs derived from
    the first one's, so they too are reproducible.
    """
    meta = scan.meta
    first_instance = meta.get("sop_instance_uid") or generate_uid()
    instance_uid = (
        first_instance
        if channel_index == 0
        else generate_uid(entropy_srcs=[str(first_instance), str(channel_index)])
    )
    study_uid = meta.get("study_instance_uid") or generate_uid()
    acquired = meta.get("acquisition_datetime")
    when = (
        datetime.datetime.fromisoformat(str(acquired))
        if acquired
        else datetime.datetime.now(datetime.UTC)
    )
    date, time = when.strftime("%Y%m%d"), when.strftime("%H%M%S")

    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.MediaStorageSOPClassUID = DICOS_DX_FOR_PRESENTATION
    dataset.file_meta.MediaStorageSOPInstanceUID = instance_uid
    dataset.file_meta.TransferSyntaxUID = syntax
    # (0002,0004): SDICOS refuses a file whose meta information lacks the DICOS version.
    dataset.file_meta.add(DataElement(0x00020004, "CS", DICOS_VERSION))

    dataset.ImageType = image_type_for(channel_index, channel_count)
    dataset.InstanceCreationDate = dataset.StudyDate = dataset.SeriesDate = date
    dataset.ContentDate = date
    dataset.InstanceCreationTime = dataset.StudyTime = dataset.SeriesTime = time
    dataset.ContentTime = time
    dataset.SOPClassUID = DICOS_DX_FOR_PRESENTATION
    dataset.SOPInstanceUID = instance_uid
    dataset.Modality = "DX"
    dataset.PresentationIntentType = "FOR PRESENTATION"
    dataset.Manufacturer = _text(meta.get("manufacturer"))
    dataset.InstitutionName = _text(meta.get("site"))  # DICOS: Machine Location
    dataset.InstitutionAddress = UNKNOWN
    dataset.add(DataElement(0x00080118, "CS", "MACHINE"))  # DICOS Image Origin
    dataset.StationName = _text(meta.get("station"), 16)  # DICOS: Machine ID
    dataset.ManufacturerModelName = _text(meta.get("model"))
    dataset.add(DataElement(0x00082108, "CS", "LHS"))  # DICOS Coordinate System
    if meta.get("scan_id") is not None:
        dataset.SeriesDescription = str(meta["scan_id"])
    # Object of inspection: the container. Its real identifier never leaves scanml's
    # meta unless given as ooi_id; SDICOS requires one value, so a placeholder.
    dataset.PatientID = _text(meta.get("ooi_id"))
    dataset.IssuerOfPatientID = UNKNOWN
    dataset.TypeOfPatientID = "TEXT"
    dataset.PatientSex = "U"
    dataset.KVP = DSfloat(_kvp(meta, channel_index), auto_format=True)
    dataset.DeviceSerialNumber = UNKNOWN
    dataset.SoftwareVersions = f"scanml {__version__}"
    dataset.DateOfLastCalibration = date
    dataset.TimeOfLastCalibration = time
    dataset.DetectorType = ""
    dataset.XRayTubeCurrentInuA = "0"
    dataset.TableSpeed = 0.0  # DICOS Belt Speed: not known from a scan
    dataset.StudyInstanceUID = study_uid
    dataset.SeriesInstanceUID = meta.get("series_instance_uid") or generate_uid()
    dataset.FrameOfReferenceUID = meta.get("frame_of_reference_uid") or generate_uid(
        entropy_srcs=[str(study_uid), "frame of reference"]
    )
    dataset.PositionReferenceIndicator = ""
    dataset.StudyID = _text(meta.get("scan_id"), 16)  # DICOS: Scan ID
    dataset.SeriesNumber = 1
    dataset.InstanceNumber = channel_index + 1
    dataset.ImagePositionPatient = [0, 0, 1]
    dataset.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    dataset.BurnedInAnnotation = "NO"
    dataset.LossyImageCompression = "00"
    dataset.AcquisitionContextSequence = DicomSequence([])
    dataset.PresentationLUTShape = "IDENTITY"
    spacing = [DSfloat(value, auto_format=True) for value in scan.spacing_mm]
    dataset.PixelSpacing = spacing
    dataset.ImagerPixelSpacing = spacing
    dataset.PixelSpacingCalibrationType = "GEOMETRY"
    dataset.PixelSpacingCalibrationDescription = "detector pitch (rows), belt speed (columns)"
    dataset.DICOSVersion = DICOS_VERSION
    dataset.OOIType = str(meta.get("ooi_type") or "CARGO")
    dataset.AcquisitionStatus = "SUCCESSFUL"
    dataset.ScanType = "OPERATIONAL"
    dataset.BeltHeight = 0.0
    dataset.add(DataElement(0x43000902, "FL", 0.0))  # DICOS Effective Energy: not known
    return dataset


def attenuation_mapping(step: float, full_scale: int) -> Dataset:
    """The Real World Value Mapping item saying that one stored LOG step is ``step`` of -ln(I/I0)."""
    item = Dataset()
    item.LUTExplanation = "attenuation -ln(I/I0), natural log"
    item.LUTLabel = ATTENUATION_LABEL
    item.RealWorldValueFirstValueMapped = 0
    item.RealWorldValueLastValueMapped = full_scale
    item.RealWorldValueIntercept = 0.0
    item.RealWorldValueSlope = float(step)
    return item


def attenuation_scale(dataset: Dataset) -> tuple[float, float] | None:
    """(slope, intercept) of an ``ATTENUATION`` Real World Value Mapping item, if any."""
    for item in dataset.get("RealWorldValueMappingSequence") or []:
        if str(item.get("LUTLabel", "")).strip().upper() == ATTENUATION_LABEL:
            slope = item.get("RealWorldValueSlope")
            if slope not in (None, ""):
                return float(slope), float(item.get("RealWorldValueIntercept") or 0.0)
    return None


def energy_of(dataset: Dataset) -> str | None:
    """``HIGH ENERGY`` / ``LOW ENERGY`` where Image Type declares one energy of several."""
    image_type = dataset.get("ImageType")
    values = [str(v).strip().upper() for v in (image_type or [])]
    if len(values) >= 2 and values[1] in ENERGY_CHANNEL_NAMES:
        return values[1]
    return None


def is_dicos(dataset: Dataset) -> bool:
    return str(dataset.get("SOPClassUID", "")).startswith(DICOS_SOP_CLASS_PREFIX)


def _kvp(meta: dict[str, Any], channel_index: int) -> float:
    """Peak voltage in kV: a linac's MeV, where the simulator or the file recorded it."""
    energies = meta.get("energies_mev") or []
    if channel_index < len(energies):
        return float(energies[channel_index]) * 1000.0
    return float(meta.get("kvp") or 0.0)


def _text(value: Any, limit: int = 64) -> str:
    return str(value)[:limit] if value not in (None, "") else UNKNOWN
