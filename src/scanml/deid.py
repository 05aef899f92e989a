"""De-identification of DICOM/DICOS files for exchange between agencies.

What leaves an agency follows the DICOM PS3.15 Basic Application
Confidentiality Profile, done by a maintained library (dicognito, MIT) on
pydicom: person names (the OOI owner in DICOS, operators, physicians) and
identifiers (OOI ID, accession, study ID, station) are replaced, dates and
times are shifted by one offset per :class:`Deidentifier` (so the order and
spacing of scans survive), and every instance UID is remapped by a keyed
hash, the same way in every file, so that a Threat Detection Report still
references its scan.

On top of the library, scanml decides for every attribute, nested ones
included, what happens to it:

- the attributes the physics needs (pixel module, intensity relationship,
  spacing, energies, frame labels) and the TDR's findings are kept
  (:data:`KEEP`), the scanner make and model only with ``keep_device``;
- free text and DICOS route, carrier and owner attributes are removed
  (:data:`REMOVE`), as are private tags, overlays and curves;
- person names, dates, times, UIDs and the identifiers the library knows
  are handed to the library;
- anything else is *unknown*: it is reported and removed, and a strict
  export refuses the file, since an attribute nobody reviewed may carry an
  identifier.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import metadata

import dicognito.anonymizer
from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

__all__ = ["KEEP", "REMOVE", "Deidentifier"]

#: Attributes kept as they are: structure, physics, and the findings of a TDR.
KEEP = frozenset(
    {
        # file meta and SOP common
        "FileMetaInformationGroupLength",
        "FileMetaInformationVersion",
        "MediaStorageSOPClassUID",
        "TransferSyntaxUID",
        "ImplementationClassUID",
        "ImplementationVersionName",
        "SpecificCharacterSet",
        "SOPClassUID",
        "Modality",
        "ImageType",
        "PresentationIntentType",
        "SeriesNumber",
        "InstanceNumber",
        "BurnedInAnnotation",
        "LossyImageCompression",
        "LossyImageCompressionRatio",
        "LossyImageCompressionMethod",
        "TimezoneOffsetFromUTC",
        "SoftwareVersions",
        "PatientIdentityRemoved",
        "DeidentificationMethod",
        "DeidentificationMethodCodeSequence",
        "CodeValue",
        "CodingSchemeDesignator",
        "CodeMeaning",
        "QualityControlImage",
        # image pixel module and its intensity
        "SamplesPerPixel",
        "PhotometricInterpretation",
        "Rows",
        "Columns",
        "BitsAllocated",
        "BitsStored",
        "HighBit",
        "PixelRepresentation",
        "PlanarConfiguration",
        "PixelData",
        "NumberOfFrames",
        "FrameIncrementPointer",
        "FrameLabelVector",
        "PixelPaddingValue",
        "SmallestImagePixelValue",
        "LargestImagePixelValue",
        "ExtendedOffsetTable",
        "ExtendedOffsetTableLengths",
        "RescaleSlope",
        "RescaleIntercept",
        "RescaleType",
        "PixelIntensityRelationship",
        "PixelIntensityRelationshipSign",
        "ModalityLUTSequence",
        "LUTDescriptor",
        "LUTData",
        "ModalityLUTType",
        "WindowCenter",
        "WindowWidth",
        "VOILUTFunction",
        "PresentationLUTShape",
        # geometry and beam
        "PixelSpacing",
        "ImagerPixelSpacing",
        "PixelSpacingCalibrationType",
        "PixelAspectRatio",
        "KVP",
        "EnergyWeightingFactor",
        "DistanceSourceToDetector",
        "DistanceSourceToPatient",
        "EstimatedRadiographicMagnificationFactor",
        "DetectorType",
        "LowEnergyDetectors",
        "HighEnergyDetectors",
        "GantryType",
        "ScanType",
        "OOIType",
        "OOISize",
        "OOIOwnerType",
        "BeltHeight",
        "SourceOrientation",
        "SourcePosition",
        "AcquisitionStatus",
        "DICOSVersion",
        # Threat Detection Report (what scanml.tdr writes, and DICOS' other findings)
        "TDRType",
        "ThreatDetectionAlgorithmAndVersion",
        "AlarmDecision",
        "AbortFlag",
        "AbortReason",
        "NumberOfTotalObjects",
        "NumberOfAlarmObjects",
        "TotalProcessingTime",
        "ImageScaleRepresentation",
        "ThreatSequence",
        "PotentialThreatObjectID",
        "ATDAssessmentSequence",
        "ThreatCategory",
        "ThreatCategoryDescription",
        "ATDAbilityAssessment",
        "ATDAssessmentFlag",
        "ATDAssessmentProbability",
        "PTORepresentationSequence",
        "ReferencedInstanceSequence",
        "ReferencedSOPSequence",
        "ReferencedSOPClassUID",
        "ThreatROIVoxelSequence",
        "ThreatROIBase",
        "ThreatROIExtents",
        "ThreatROIBitmap",
        "BoundingPolygon",
        "Mass",
        "Density",
        "ZEffective",
        "CenterOfMass",
        "CenterOfPTO",
        "VolumeOfPTO",
        "AdditionalScreeningPerformed",
        "ReferencedStudySequence",
        # what scanml's DICOS writer (scanml.io.dicos) adds for SDICOS: geometry, the
        # real-world value mapping of the pixels, constants
        "AcquisitionContextSequence",
        "ImageOrientationPatient",
        "ImagePositionPatient",
        "PositionReferenceIndicator",
        "RealWorldValueMappingSequence",
        "RealWorldValueFirstValueMapped",
        "RealWorldValueLastValueMapped",
        "RealWorldValueIntercept",
        "RealWorldValueSlope",
        "LUTExplanation",
        "LUTLabel",
        "MappingResourceUID",
        "PixelSpacingCalibrationDescription",
        "TableSpeed",
        "XRayTubeCurrent",
        "XRayTubeCurrentInuA",
        "TypeOfPatientID",
    }
)

#: DICOS attributes outside pydicom's dictionary that scanml's writers set to constants:
#: DICOS version in the file meta, coordinate system, effective energy, PTO timing.
KEEP_TAGS = frozenset({0x00020004, 0x00082108, 0x43000902, 0x40101080, 0x40101081, 0x40101082})

#: Where the scanner is identified: kept unless the export says ``--no-device``.
DEVICE = frozenset({"Manufacturer", "ManufacturerModelName"})

#: Removed outright: free text, the institution, and DICOS itinerary, route and owner data.
REMOVE = frozenset(
    {
        "InstitutionName",
        "InstitutionAddress",
        "InstitutionalDepartmentName",
        "InstitutionalDepartmentTypeCodeSequence",
        "DeviceSerialNumber",
        "DeviceUID",
        "StationName",
        "SourceApplicationEntityTitle",
        "SendingApplicationEntityTitle",
        "ReceivingApplicationEntityTitle",
        "StudyDescription",
        "SeriesDescription",
        "ImageComments",
        "DerivationDescription",
        "AdditionalPatientHistory",
        "PatientComments",
        "PatientAddress",
        "PatientTelephoneNumbers",
        "PatientSex",
        "PatientAge",
        "PatientSize",
        "PatientWeight",
        "OtherPatientIDsSequence",
        "OperatorIdentificationSequence",
        "PerformingPhysicianIdentificationSequence",
        "PhysiciansOfRecordIdentificationSequence",
        "RequestAttributesSequence",
        "ProtocolName",
        "PerformedProcedureStepDescription",
        "ContentSequence",
        "OOIOwnerSequence",
        "ItineraryID",
        "ItineraryIDType",
        "ItineraryIDAssigningAuthority",
        "RouteID",
        "RouteIDAssigningAuthority",
        "RouteSegmentSequence",
        "RouteSegmentID",
        "RouteSegmentStartLocationID",
        "RouteSegmentEndLocationID",
        "RouteSegmentLocationIDType",
        "InternationalRouteSegment",
        "InboundArrivalType",
        "CarrierID",
        "CarrierIDAssigningAuthority",
        "BoardingPassID",
        "AssignedLocation",
        "OOITypeDescriptor",
    }
)

# The identifiers dicognito replaces by keyword (its IDAnonymizer), besides every PN,
# UI, DA, DT and TM element.
_LIBRARY_IDS = frozenset(
    {
        "PatientID",
        "OtherPatientIDs",
        "IssuerOfPatientID",
        "AccessionNumber",
        "StudyID",
        "PerformedProcedureStepID",
        "RequestedProcedureID",
        "ScheduledProcedureStepID",
        "FillerOrderNumberImagingServiceRequest",
        "PlacerOrderNumberImagingServiceRequest",
        "CountryOfResidence",
        "RegionOfResidence",
    }
)
_LIBRARY_VRS = frozenset({"PN", "UI", "DA", "DT", "TM"})

# PS3.16 CID 7050 codes for what was done (DCM coding scheme).
_BASIC_PROFILE = ("113100", "Basic Application Confidentiality Profile")
_MODIFIED_DATES = ("113107", "Retain Longitudinal Temporal Information Modified Dates Option")
_DEVICE_IDENTITY = ("113109", "Retain Device Identity Option")


@dataclass
class Deidentifier:
    """One package's de-identification: one date offset and one UID key for all its files.

    ``secret`` seeds the library's keyed hash; it is never written anywhere,
    so nobody holding the package can undo the remapping.
    """

    secret: str
    keep_device: bool = True
    unknown: dict[str, set[str]] = field(default_factory=dict)  # file -> attributes

    def __post_init__(self) -> None:
        self._anonymizer = dicognito.anonymizer.Anonymizer(seed=self.secret)

    def unknown_attributes(self, dataset: Dataset) -> list[str]:
        """The attributes, nested ones included, that no rule here covers (``Keyword (gggg,eeee)``)."""
        return sorted(
            {_describe(element) for element in self._walk(dataset) if self._is_unknown(element)}
        )

    def deidentify(self, dataset: Dataset, *, name: str) -> list[str]:
        """De-identify ``dataset`` in place; returns (and records under ``name``) the unknown attributes removed."""
        unknown = self.unknown_attributes(dataset)
        if unknown:
            self.unknown[name] = set(unknown)
        dataset.remove_private_tags()
        self._strip(dataset.file_meta)
        self._strip(dataset)
        self._anonymizer.anonymize(dataset)
        dataset.PatientIdentityRemoved = "YES"
        # LO: at most 64 characters
        dataset.DeidentificationMethod = (
            f"PS3.15 Basic Profile; scanml, dicognito {metadata.version('dicognito')}"
        )
        codes = [_BASIC_PROFILE, _MODIFIED_DATES] + ([_DEVICE_IDENTITY] if self.keep_device else [])
        dataset.DeidentificationMethodCodeSequence = DicomSequence(
            [_code(value, meaning) for value, meaning in codes]
        )
        return unknown

    # -- helpers ------------------------------------------------------------------------

    def _walk(self, dataset: Dataset) -> Iterable[DataElement]:
        """Every element the export would keep or pass to the library, sequences descended."""
        for element in [*getattr(dataset, "file_meta", []), *dataset]:
            if self._removed(element):
                continue
            yield element
            if element.VR == "SQ":
                for item in element.value:
                    yield from self._walk(item)

    def _removed(self, element: DataElement) -> bool:
        group = element.tag.group
        keyword = keyword_for_tag(element.tag)
        return (
            element.tag.is_private
            or 0x5000 <= group <= 0x50FF  # curves
            or 0x6000 <= group <= 0x60FF  # overlays (may hold burned-in text)
            or keyword in REMOVE
            or (keyword in DEVICE and not self.keep_device)
        )

    def _is_unknown(self, element: DataElement) -> bool:
        keyword = keyword_for_tag(element.tag)
        return not (
            keyword in KEEP
            or int(element.tag) in KEEP_TAGS
            or keyword in DEVICE
            or keyword in _LIBRARY_IDS
            or element.VR in _LIBRARY_VRS
        )

    def _strip(self, dataset: Dataset) -> None:
        for element in list(dataset):
            if self._removed(element) or self._is_unknown(element):
                del dataset[element.tag]
            elif element.VR == "SQ":
                for item in element.value:
                    self._strip(item)


def _describe(element: DataElement) -> str:
    keyword = keyword_for_tag(element.tag) or "unnamed"
    return f"{keyword} ({element.tag.group:04X},{element.tag.element:04X})"


def _code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = "DCM"
    item.CodeMeaning = meaning
    return item
