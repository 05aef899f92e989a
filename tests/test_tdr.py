"""Threat Detection Reports written, then read back with plain pydicom."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import config as pydicom_config

from scanml.io import Scan, read_scan, write_scan
from scanml.predict import Region
from scanml.tdr import DICOS_DX_SOP_CLASS_UID, TDR_SOP_CLASS_UID, read_tdr, write_tdr

CLASS_NAMES = ["drugs", "weapon", "cigarettes", "other"]
REGIONS = [
    Region(x=10.0, y=20.0, w=30.0, h=40.0, score=0.92, category="drugs"),
    Region(x=100.0, y=5.0, w=8.0, h=12.0, score=0.41, category="weapon"),
]


@pytest.fixture
def dicom_scan(tmp_path: Path) -> Scan:
    """A DICOS DX scan on disk, read back so that its meta carries the file's UIDs."""
    attenuation = np.full((1, 64, 128), 2.0, dtype=np.float32)
    path = write_scan(
        Scan(attenuation, (5.0, 5.0), ["high"], {"scan_id": "c1"}), tmp_path / "c1.dcm"
    )
    return read_scan(path)


@pytest.fixture
def strict_pydicom():
    """Make pydicom raise instead of warn on any value that breaks its VR (length, charset, format)."""
    reading, writing = (
        pydicom_config.settings.reading_validation_mode,
        pydicom_config.settings.writing_validation_mode,
    )
    pydicom_config.settings.reading_validation_mode = pydicom_config.RAISE
    pydicom_config.settings.writing_validation_mode = pydicom_config.RAISE
    yield
    pydicom_config.settings.reading_validation_mode = reading
    pydicom_config.settings.writing_validation_mode = writing


def test_round_trip_through_plain_pydicom(
    dicom_scan: Scan, tmp_path: Path, strict_pydicom: None
) -> None:
    path = write_tdr(
        tmp_path / "reports" / "c1.dcm",
        scan_meta=dicom_scan.meta,
        prediction_regions=REGIONS,
        score=0.92,
        threshold=0.5,
        flagged=True,
        model_uri="models:/scanml-anomaly@champion",
        class_names=CLASS_NAMES,
        processing_ms=123.0,
    )
    assert list(path.parent.iterdir()) == [path]  # no temporary left behind
    assert path.read_bytes()[128:132] == b"DICM"

    dataset = pydicom.dcmread(path)  # no force: a proper file with preamble and file meta
    assert dataset.file_meta.MediaStorageSOPClassUID == TDR_SOP_CLASS_UID
    assert dataset.file_meta.MediaStorageSOPInstanceUID == dataset.SOPInstanceUID
    assert dataset.SOPClassUID == TDR_SOP_CLASS_UID
    assert dataset.SOPInstanceUID != dicom_scan.meta["sop_instance_uid"]
    assert dataset.StudyInstanceUID == dicom_scan.meta["study_instance_uid"]
    assert dataset.SeriesInstanceUID != dicom_scan.meta["series_instance_uid"]
    reference = dataset.ReferencedStudySequence[0]  # where SDICOS keeps the scan reference
    assert reference.ReferencedSOPInstanceUID == dicom_scan.meta["sop_instance_uid"]
    assert reference.ReferencedSOPClassUID == DICOS_DX_SOP_CLASS_UID
    assert (dataset.TDRType, dataset.AlarmDecision, dataset.AbortFlag) == (
        "MACHINE",
        "ALARM",
        "SUCCESS",
    )
    assert (dataset.NumberOfTotalObjects, dataset.NumberOfAlarmObjects) == (2, 1)
    assert dataset.TotalProcessingTime == pytest.approx(123.0)

    first, second = dataset.ThreatSequence
    assert (first.PotentialThreatObjectID, second.PotentialThreatObjectID) == (1, 2)
    assessment = first.ATDAssessmentSequence[0]
    assert (assessment.ThreatCategory, assessment.ThreatCategoryDescription) == (
        "CONTRABAND",
        "drugs",
    )
    assert assessment.ATDAssessmentFlag == "THREAT"
    assert assessment.ATDAssessmentProbability == pytest.approx(0.92)
    assert second.ATDAssessmentSequence[0].ATDAssessmentFlag == "NO_THREAT"  # 0.41 is below 0.5
    assert second.ATDAssessmentSequence[0].ThreatCategory == "PI"
    representation = first.PTORepresentationSequence[0]
    assert list(representation.BoundingPolygon) == [10, 20, 0, 40, 20, 0, 40, 60, 0, 10, 60, 0]
    assert (
        representation.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
        == dicom_scan.meta["sop_instance_uid"]
    )

    report = read_tdr(path)
    assert report.sop_instance_uid == dataset.SOPInstanceUID
    assert report.referenced_sop_instance_uid == dicom_scan.meta["sop_instance_uid"]
    assert report.alarm_decision == "ALARM"
    assert [(o.category, o.dicos_category) for o in report.objects] == [
        ("drugs", "CONTRABAND"),
        ("weapon", "PI"),
    ]
    assert [o.probability for o in report.objects] == pytest.approx([0.92, 0.41])
    assert report.objects[0].polygon == [(10, 20), (40, 20), (40, 60), (10, 60)]


def test_a_clear_scan_from_a_file_without_uids(tmp_path: Path) -> None:
    meta = {"path": str(tmp_path / "scan.npy"), "scan_id": "scan"}

    def write(name: str) -> Path:
        return write_tdr(
            tmp_path / name,
            scan_meta=meta,
            prediction_regions=[],
            score=0.1,
            threshold=0.5,
            flagged=False,
            model_uri="runs:/0123456789abcdef/model",
            class_names=CLASS_NAMES,
        )

    first, second = read_tdr(write("a.dcm")), read_tdr(write("b.dcm"))
    assert first.alarm_decision == "CLEAR" and first.objects == []
    assert first.referenced_sop_instance_uid  # derived from the path ...
    assert first.referenced_sop_instance_uid == second.referenced_sop_instance_uid  # ... so stable
    assert first.sop_instance_uid != second.sop_instance_uid  # while each report is new
    assert pydicom.dcmread(tmp_path / "a.dcm").NumberOfAlarmObjects == 0


def test_no_threat_objects_when_the_scan_is_not_flagged(tmp_path: Path) -> None:
    path = write_tdr(
        tmp_path / "r.dcm",
        scan_meta={"path": "x.png"},
        prediction_regions=REGIONS,
        score=0.92,
        threshold=0.95,
        flagged=False,
        model_uri="m",
        class_names=CLASS_NAMES,
    )
    dataset = pydicom.dcmread(path)
    assert dataset.AlarmDecision == "CLEAR" and dataset.NumberOfAlarmObjects == 0
    assert {item.ATDAssessmentSequence[0].ATDAssessmentFlag for item in dataset.ThreatSequence} == {
        "NO_THREAT"
    }


def test_read_tdr_refuses_a_scan(dicom_scan: Scan) -> None:
    with pytest.raises(ValueError, match="not a Threat Detection Report"):
        read_tdr(dicom_scan.meta["path"])
