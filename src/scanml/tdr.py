"""DICOS Threat Detection Reports: what the model found, in the format scanner software reads.

Screening workstations and agencies' image stores exchange detections as a
DICOS (NEMA IIC 1) Threat Detection Report (TDR), SOP Class
1.2.840.10008.5.1.4.1.1.501.3: a pixel-less DICOM object that references
the scan and lists one *potential threat object* (PTO) per suspicious
region. Writing one per scored scan lets an analyst's viewer draw scanml's
regions on the original DICOS DX scan without knowing about scanml.

Every attribute used is in pydicom's data dictionary (DICOM PS3.6 registers
group 4010 for DICOS), so nothing is added to it:

========================================  ===========  ===  ==========================
attribute                                 tag          VR   value written
========================================  ===========  ===  ==========================
TDR Type                                  (4010,1027)  CS   MACHINE
Threat Detection Algorithm and Version    (4010,1029)  LO   scanml, its version
Alarm Decision                            (4010,1031)  CS   ALARM / CLEAR (scan flagged)
Alarm Decision Time                       (4010,102B)  DT   when the report was made
Abort Flag                                (4010,1024)  CS   SUCCESS
Number of Total Objects                   (4010,1033)  US   regions reported
Number of Alarm Objects                   (4010,1034)  US   regions assessed THREAT
Total Processing Time                     (4010,1069)  FL   milliseconds, when known
Image Scale Representation                (4010,1075)  FD   1 (regions in scan pixels)
OOI Type                                  (4010,1042)  CS   the scan's (CARGO by default)
DICOS Version                             (4010,103A)  CS   V03 (also in the file meta, 0002,0004)
Threat Sequence                           (4010,1011)  SQ   one item per region:
 Potential Threat Object ID               (4010,1010)  US   1, 2, ...
 ATD Assessment Sequence                  (4010,1038)  SQ   one item:
  ATD Assessment Flag                     (4010,1015)  CS   THREAT / NO_THREAT
  Threat Category                         (4010,1012)  CS   CONTRABAND, PI, EXPLOSIVE, ANOMALY
  Threat Category Description             (4010,1013)  LT   the model's class name
  ATD Ability Assessment                  (4010,1014)  CS   NO_INTERFERENCE
  ATD Assessment Probability              (4010,1016)  FL   the region's score
 PTO Representation Sequence              (4010,1037)  SQ   one item:
  Referenced Instance Sequence            (0008,114A)  SQ   the scan (class + instance UID)
  Threat ROI Voxel Sequence               (4010,1001)  SQ   Base (x, y, 0), Extents (w, h, 1)
  Bounding Polygon                        (4010,101D)  FL   box corners as (x, y, 0) triplets
Referenced Study Sequence                 (0008,1110)  SQ   the scan (class + instance UID),
                                                          where SDICOS keeps it
========================================  ===========  ===  ==========================

The rest is what the reference toolkit (Stratovan SDICOS, ``pydicos``)
requires of every DICOS TDR: object of inspection, scan date and ID (the
scan's), the scan's Frame of Reference UID, equipment placeholders and, per
PTO, its processing times. Threat categories are SDICOS's terms (it reads
PROHIBITED_ITEM as unknown and writes PI); the model's class name is kept
in Threat Category Description. A flagged scan always has at least one
object: where the model's regions are empty, the report carries the heat
map's peak (``peak_xy``) as one ANOMALY object, since SDICOS refuses an
ALARM with zero objects. SDICOS 1.3.0 keeps PTO representations (boxes,
polygons, referenced instance) only for OOI type BAGGAGE; for CARGO it
reads the report without error but drops them (its limitation, see the
tests).

Coordinates are the scan's pixels (x = column, y = row), z = 0 for a 2-D
image, as the DICOS toolkit does for DX. The report joins the scan's study
but starts its own series. A scan read from TIFF, PNG or ``.npy`` has no
UIDs; the report then references UIDs derived from the scan's path, so
every report about one file names the same (notional) instance.

The model URI, its class names, the threshold and the scan score go into
Derivation Description (0008,2111), free text, because DICOS has no
attribute for a scan-level score and a URI can exceed the 64 characters of
an LO value.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydicom
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian, generate_uid

import scanml
from scanml.fsutil import write_atomically

if TYPE_CHECKING:
    from scanml.predict import Region

__all__ = [
    "DICOS_DX_SOP_CLASS_UID",
    "TDR_SOP_CLASS_UID",
    "TdrReport",
    "ThreatObject",
    "read_tdr",
    "write_tdr",
]

TDR_SOP_CLASS_UID = UID("1.2.840.10008.5.1.4.1.1.501.3")
DICOS_DX_SOP_CLASS_UID = UID("1.2.840.10008.5.1.4.1.1.501.2.1")

# DICOS Threat Category terms, as SDICOS writes and reads them, for the
# model's class names; a class not listed (e.g. "other") is reported as an
# ANOMALY, DICOS's catch-all. "PI" is SDICOS's prohibited item (weapons).
_DICOS_CATEGORY = {
    "drugs": "CONTRABAND",
    "cigarettes": "CONTRABAND",
    "contraband": "CONTRABAND",
    "weapon": "PI",
    "weapons": "PI",
    "explosive": "EXPLOSIVE",
    "explosives": "EXPLOSIVE",
}
_DEFAULT_DICOS_CATEGORY = "ANOMALY"
DICOS_VERSION = "V03"
# Side of the box written around the heat map's peak when a flagged scan has no region.
PEAK_BOX_PX = 32.0


@dataclass(frozen=True)
class ThreatObject:
    """One potential threat object as read back from a report.

    ``category`` is the model's class name (the Threat Category
    Description), ``dicos_category`` the DICOS defined term, ``polygon``
    the bounding polygon's vertices as (x, y) in scan pixels.
    """

    category: str
    probability: float
    polygon: list[tuple[float, float]]
    dicos_category: str


@dataclass(frozen=True)
class TdrReport:
    """What :func:`read_tdr` finds in a Threat Detection Report."""

    sop_instance_uid: str
    referenced_sop_instance_uid: str
    alarm_decision: str  # "ALARM" or "CLEAR"
    objects: list[ThreatObject]


def write_tdr(
    path: str | os.PathLike[str],
    *,
    scan_meta: Mapping[str, Any],
    prediction_regions: Sequence[Region],
    score: float,
    threshold: float,
    flagged: bool,
    model_uri: str,
    class_names: Sequence[str],
    processing_ms: float | None = None,
    peak_xy: tuple[float, float] | None = None,
) -> Path:
    """Write a DICOS TDR about one scan; returns the path.

    ``scan_meta`` is the scan's ``Scan.meta`` (its UIDs when it came from
    DICOM, else its ``path``). Each region becomes a potential threat
    object; one is assessed THREAT when the scan is ``flagged`` and the
    region's own score is above ``threshold``. ``class_names`` (what the
    model can detect) is recorded with the provenance, since a report
    without a weapon object means something only if weapons are among
    them. ``processing_ms`` is the time
    the scan took, for Total Processing Time. ``peak_xy`` (x, y: the heat
    map's maximum, ``Prediction.peak_xy``) becomes the one object of a
    flagged scan without regions; a flagged scan with neither is refused
    (ValueError), since an ALARM must say where. The file appears whole or
    not at all (written beside ``path``, then renamed).
    """
    path = Path(path)
    now = datetime.datetime.now(datetime.UTC).astimezone()
    scan = _ScanReference.of(scan_meta)
    regions = list(prediction_regions)
    if flagged and not regions:
        if peak_xy is None:
            raise ValueError("a flagged scan without regions needs peak_xy for its report")
        regions = [_peak_region(peak_xy, score)]
    threats = [
        _threat_item(number, region, scan, flagged=flagged, threshold=threshold, now=now)
        for number, region in enumerate(regions, start=1)
    ]
    dataset = _report_dataset(scan, now, scan_meta)
    dataset.TDRType = "MACHINE"
    dataset.ThreatDetectionAlgorithmAndVersion = ["scanml", scanml.__version__]
    dataset.DerivationDescription = (
        f"scanml {scanml.__version__}; model {model_uri}; classes {', '.join(class_names)};"
        f" scan score {score:.6f}; threshold {threshold:.6f}"
    )
    dataset.AlarmDecision = "ALARM" if flagged else "CLEAR"
    dataset.AlarmDecisionTime = now.strftime("%Y%m%d%H%M%S.%f%z")
    dataset.AbortFlag = "SUCCESS"
    dataset.NumberOfTotalObjects = len(threats)
    dataset.NumberOfAlarmObjects = sum(
        item.ATDAssessmentSequence[0].ATDAssessmentFlag == "THREAT" for item in threats
    )
    if processing_ms is not None:
        dataset.TotalProcessingTime = float(processing_ms)
    dataset.add(DataElement(0x40101075, "FD", 1.0))  # Image Scale Representation: FD for SDICOS
    dataset.DICOSVersion = DICOS_VERSION
    dataset.OOIType = str(scan_meta.get("ooi_type") or "CARGO")
    dataset.AcquisitionStatus = "SUCCESSFUL"
    dataset.ScanType = "OPERATIONAL"
    dataset.AdditionalScreeningPerformed = "NO"
    dataset.ThreatSequence = DicomSequence(threats)
    dataset.ReferencedStudySequence = DicomSequence([scan.as_reference()])
    # A DICOM file (preamble + file meta), whole or not at all.
    write_atomically(path, lambda partial: dataset.save_as(partial, enforce_file_format=True))
    return path


def read_tdr(path: str | os.PathLike[str]) -> TdrReport:
    """Read a Threat Detection Report written by :func:`write_tdr` or by scanner software.

    Raises ValueError for a DICOM file that is not a TDR, and pydicom's
    InvalidDicomError for a file that is not DICOM at all (no ``force``).
    """
    dataset = pydicom.dcmread(path)
    if dataset.get("SOPClassUID") != TDR_SOP_CLASS_UID:
        raise ValueError(
            f"{path}: SOP Class {dataset.get('SOPClassUID')} is not a Threat Detection Report"
        )
    references = (
        dataset.get("ReferencedStudySequence")
        or dataset.get("ReferencedSOPSequence")
        or [Dataset()]
    )
    return TdrReport(
        sop_instance_uid=str(dataset.SOPInstanceUID),
        referenced_sop_instance_uid=str(references[0].get("ReferencedSOPInstanceUID", "")),
        alarm_decision=str(dataset.get("AlarmDecision", "")),
        objects=[_threat_object(item) for item in dataset.get("ThreatSequence", [])],
    )


@dataclass(frozen=True)
class _ScanReference:
    """The UIDs of the scan a report is about."""

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    frame_of_reference_uid: str

    @classmethod
    def of(cls, scan_meta: Mapping[str, Any]) -> _ScanReference:
        """The scan's own UIDs, or ones derived from its path when it has none (not DICOM)."""
        source = str(scan_meta.get("path") or scan_meta.get("scan_id") or "")

        def derived(kind: str) -> str:
            return generate_uid(entropy_srcs=["scanml", kind, source])

        return cls(
            sop_class_uid=scan_meta.get("sop_class_uid") or DICOS_DX_SOP_CLASS_UID,
            sop_instance_uid=scan_meta.get("sop_instance_uid") or derived("instance"),
            study_instance_uid=scan_meta.get("study_instance_uid") or derived("study"),
            frame_of_reference_uid=scan_meta.get("frame_of_reference_uid")
            or derived("frame of reference"),
        )

    def as_reference(self) -> Dataset:
        item = Dataset()
        item.ReferencedSOPClassUID = self.sop_class_uid
        item.ReferencedSOPInstanceUID = self.sop_instance_uid
        return item


def _report_dataset(
    scan: _ScanReference, now: datetime.datetime, scan_meta: Mapping[str, Any]
) -> Dataset:
    """The SOP common, scan, series and equipment attributes of a new report, with its file meta."""
    instance_uid = generate_uid()
    file_meta = FileMetaDataset()
    file_meta.MediaStorageSOPClassUID = TDR_SOP_CLASS_UID
    file_meta.MediaStorageSOPInstanceUID = instance_uid
    file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    file_meta.add(DataElement(0x00020004, "CS", DICOS_VERSION))  # SDICOS requires it

    acquired = scan_meta.get("acquisition_datetime")
    scanned = datetime.datetime.fromisoformat(str(acquired)) if acquired else now
    dataset = Dataset()
    dataset.file_meta = file_meta
    dataset.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: class names and URIs are free text
    dataset.InstanceCreationDate = dataset.ContentDate = now.strftime("%Y%m%d")
    dataset.InstanceCreationTime = dataset.ContentTime = now.strftime("%H%M%S.%f")
    dataset.SOPClassUID = TDR_SOP_CLASS_UID
    dataset.SOPInstanceUID = instance_uid
    dataset.StudyDate = dataset.SeriesDate = scanned.strftime("%Y%m%d")  # DICOS: Scan Date
    dataset.StudyTime = dataset.SeriesTime = scanned.strftime("%H%M%S")
    dataset.Modality = "TDR"
    dataset.Manufacturer = "scanml"
    dataset.InstitutionName = _text(scan_meta.get("site"))
    dataset.InstitutionAddress = _UNKNOWN
    dataset.StationName = _UNKNOWN
    dataset.ManufacturerModelName = "scanml"
    dataset.PatientID = _text(scan_meta.get("ooi_id"))  # DICOS: OOI ID
    dataset.IssuerOfPatientID = _UNKNOWN
    dataset.TypeOfPatientID = "TEXT"
    dataset.PatientSex = "U"
    dataset.DeviceSerialNumber = _UNKNOWN
    dataset.SoftwareVersions = scanml.__version__
    dataset.DateOfLastCalibration = dataset.InstanceCreationDate
    dataset.TimeOfLastCalibration = dataset.InstanceCreationTime
    dataset.StudyInstanceUID = scan.study_instance_uid
    dataset.SeriesInstanceUID = generate_uid()
    dataset.StudyID = _text(scan_meta.get("scan_id"), 16)  # DICOS: Scan ID
    dataset.SeriesNumber = 1
    dataset.InstanceNumber = 1
    dataset.FrameOfReferenceUID = scan.frame_of_reference_uid
    dataset.PositionReferenceIndicator = ""
    return dataset


_UNKNOWN = "unknown"  # SDICOS's own placeholder for mandatory values nobody has


def _text(value: Any, limit: int = 64) -> str:
    return str(value)[:limit] if value not in (None, "") else _UNKNOWN


def _peak_region(peak_xy: tuple[float, float], score: float) -> Region:
    """A box around the heat map's peak, for a flagged scan whose regions are empty."""
    from scanml.predict import Region

    x, y = (float(v) for v in peak_xy)
    half = PEAK_BOX_PX / 2
    return Region(
        x=max(0.0, x - half),
        y=max(0.0, y - half),
        w=PEAK_BOX_PX,
        h=PEAK_BOX_PX,
        score=float(score),
        category="anomaly",
    )


def _threat_item(
    number: int,
    region: Region,
    scan: _ScanReference,
    *,
    flagged: bool,
    threshold: float,
    now: datetime.datetime,
) -> Dataset:
    """One Threat Sequence item: the region's assessment and where it lies."""
    category = str(region.category)
    probability = float(region.score)
    x, y, w, h = (float(region.x), float(region.y), float(region.w), float(region.h))

    assessment = Dataset()
    assessment.ATDAssessmentFlag = "THREAT" if flagged and probability > threshold else "NO_THREAT"
    assessment.ThreatCategory = _DICOS_CATEGORY.get(category, _DEFAULT_DICOS_CATEGORY)
    assessment.ThreatCategoryDescription = category
    assessment.ATDAbilityAssessment = "NO_INTERFERENCE"
    assessment.ATDAssessmentProbability = probability

    roi = Dataset()
    roi.ThreatROIBase = [x, y, 0.0]
    roi.ThreatROIExtents = [w, h, 1.0]
    roi.add(DataElement(0x40101006, "OB", b""))  # Threat ROI Bitmap: none, the box is the ROI

    representation = Dataset()
    representation.ReferencedInstanceSequence = DicomSequence([scan.as_reference()])
    representation.ThreatROIVoxelSequence = DicomSequence([roi])
    corners = ((x, y), (x + w, y), (x + w, y + h), (x, y + h))
    representation.BoundingPolygon = [value for cx, cy in corners for value in (cx, cy, 0.0)]

    item = Dataset()
    item.PotentialThreatObjectID = number
    item.ATDAssessmentSequence = DicomSequence([assessment])
    item.PTORepresentationSequence = DicomSequence([representation])
    # PTO processing start, end (DT) and total time (FL): SDICOS requires them per object.
    stamp = now.strftime("%Y%m%d%H%M%S.%f")
    item.add(DataElement(0x40101080, "DT", stamp))
    item.add(DataElement(0x40101081, "DT", stamp))
    item.add(DataElement(0x40101082, "FL", 0.0))
    return item


def _threat_object(item: Dataset) -> ThreatObject:
    """A ThreatObject from one Threat Sequence item (first assessment, first representation)."""
    assessment = (item.get("ATDAssessmentSequence") or [Dataset()])[0]
    representation = (item.get("PTORepresentationSequence") or [Dataset()])[0]
    dicos_category = str(assessment.get("ThreatCategory", _DEFAULT_DICOS_CATEGORY))
    vertices = [float(value) for value in representation.get("BoundingPolygon", [])]
    return ThreatObject(
        category=str(assessment.get("ThreatCategoryDescription") or dicos_category),
        probability=float(assessment.get("ATDAssessmentProbability", float("nan"))),
        polygon=[(vertices[i], vertices[i + 1]) for i in range(0, len(vertices) - 2, 3)],
        dicos_category=dicos_category,
    )
