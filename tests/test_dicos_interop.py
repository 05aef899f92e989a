"""DICOS both ways against the reference toolkit: Stratovan SDICOS through ``pydicos``.

scanml writes DX and TDR files that SDICOS reads (and validates) with an
empty error log and the same values; SDICOS writes DX files (its default
JPEG lossless syntax and its explicit one) that scanml reads with the same
attenuation. Every SDICOS file here is written by SDICOS inside the test.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless

from scanml.io import Scan, ScanAssumptionWarning, ScanReadError, read_scan, write_scan
from scanml.predict import Region
from scanml.profiles import ProfileRegistry, ScannerProfile
from scanml.tdr import read_tdr, write_tdr

sdicos = pytest.importorskip("pyDICOS", reason="pydicos (the dev extra) is not installed")

FULL_SCALE = 65535
LOG_STEP = 2.0**-12  # what scanml's 16-bit LOG files store per step
SDICOS_SYNTAXES = {
    "jpeg-lossless-default": None,
    "explicit": "enumLittleEndianExplicit",
    "rle": "enumLosslessRLE",
}
REGIONS = [
    Region(x=10.0, y=20.0, w=30.0, h=40.0, score=0.92, category="drugs"),
    Region(x=100.0, y=5.0, w=8.0, h=12.0, score=0.41, category="weapon"),
]


def container_scene(height: int = 120, width: int = 200) -> np.ndarray:
    """Attenuation [H, W] of a container in air: air above and at both ends, cargo inside."""
    attenuation = np.zeros((height, width), dtype=np.float32)
    rows, columns = np.mgrid[0:height, 0:width]
    inside = (rows >= height // 5) & (columns >= width // 8) & (columns < width - width // 8)
    attenuation[inside] = 0.6 + 3.0 * ((rows[inside] * 7 + columns[inside] * 3) % 50) / 50
    return attenuation


# --- scanml writes, SDICOS reads --------------------------------------------------------


def _sdicos_dx(path: Path):
    dx, errors = sdicos.DX(), sdicos.ErrorLog()
    assert dx.Read(sdicos.Filename(str(path)), errors, None), f"SDICOS refused {path.name}"
    assert (errors.NumErrors(), errors.NumWarnings()) == (0, 0), f"SDICOS log for {path.name}"
    validation = sdicos.ErrorLog()
    assert dx.Validate(validation), f"SDICOS validation failed for {path.name}"
    assert validation.NumErrors() == 0
    return np.array(dx.GetXRayData().GetUnsigned16(), copy=True)


@pytest.mark.parametrize(
    ("encoding", "photometric", "syntax"),
    [
        ("LOG", "MONOCHROME2", ExplicitVRLittleEndian),
        ("LIN", "MONOCHROME2", ExplicitVRLittleEndian),
        ("LOG", "MONOCHROME1", ExplicitVRLittleEndian),
        ("LOG", "MONOCHROME2", RLELossless),
        ("LOG", "MONOCHROME2", JPEG2000Lossless),
    ],
)
def test_sdicos_reads_scanml_single_energy_dx(
    encoding: str, photometric: str, syntax: str, tmp_path: Path
) -> None:
    scan = Scan(container_scene()[np.newaxis], (4.5, 6.5), ["high"], {"scan_id": "s1"})
    path = write_scan(
        scan,
        tmp_path / "s1.dcs",
        encoding=encoding,
        photometric=photometric,
        transfer_syntax=syntax,
    )
    pixels = _sdicos_dx(path)
    assert np.array_equal(pixels, pydicom.dcmread(path).pixel_array)
    back = read_scan(path)
    tolerance = LOG_STEP if encoding == "LOG" else 0.03
    assert np.abs(back.attenuation - scan.attenuation).max() <= tolerance


def test_sdicos_reads_both_energies_of_a_dual_energy_scan(tmp_path: Path) -> None:
    """SDICOS's DX holds one frame: dual energy is one instance per energy, one scan."""
    scene = container_scene()
    scan = Scan(
        np.stack([scene, scene * 1.4]), (4.5, 6.5), ["high", "low"], {"energies_mev": [6.0, 4.0]}
    )
    path = write_scan(scan, tmp_path / "dual.dcs")
    files = [path, tmp_path / "dual.low.dcs"]
    for file in files:
        pixels = _sdicos_dx(file)
        assert np.array_equal(pixels, pydicom.dcmread(file).pixel_array)
    high, low = (pydicom.dcmread(file) for file in files)
    assert (float(high.KVP), float(low.KVP)) == (6000.0, 4000.0)
    back = read_scan(path)
    assert back.channels == ["high", "low"]
    assert np.abs(back.attenuation - scan.attenuation).max() <= LOG_STEP


def test_simulator_output_is_read_by_sdicos(tmp_path: Path) -> None:
    from scanml.synth import simulate_scan

    simulated, _ = simulate_scan(3, "antwerp", length="20ft")
    path = write_scan(simulated, tmp_path / "sim.dcm")
    for file in sorted(tmp_path.glob("sim*.dcm")):
        _sdicos_dx(file)
    assert read_scan(path).channels == simulated.channels


# --- SDICOS writes, scanml reads --------------------------------------------------------


def _write_with_sdicos(path: Path, stored: np.ndarray, syntax: str | None) -> Path:
    dx = sdicos.DX(
        sdicos.CT.OBJECT_OF_INSPECTION_TYPE.enumTypeCargo,
        sdicos.DX.PRESENTATION_INTENT_TYPE.enumPresentation,
        sdicos.DX.PIXEL_DATA_CHARACTERISTICS.enumOriginal,
        sdicos.CT.PHOTOMETRIC_INTERPRETATION.enumMonochrome2,
    )
    image = dx.GetXRayData()
    image.Allocate(
        sdicos.Volume.IMAGE_DATA_TYPE.enumUnsigned16Bit, stored.shape[1], stored.shape[0]
    )
    np.array(image.GetUnsigned16(), copy=False)[:] = stored
    dx.SetKVP(6000)
    dx.SetImageOrientation(sdicos.Vector3Dfloat(1, 0, 0), sdicos.Vector3Dfloat(0, 1, 0))
    dx.SetImagePosition(sdicos.Point3Dfloat(0, 0, 1))
    dx.SetXRayTubeCurrent(1.0)
    dx.SetWindowCenterAndWidth(32768, 65536)
    errors = sdicos.ErrorLog()
    if syntax is None:  # SDICOS's default: JPEG lossless, process 14
        written = dx.Write(sdicos.Filename(str(path)), errors)
    else:
        written = dx.Write(
            sdicos.Filename(str(path)), errors, getattr(sdicos.CT.TRANSFER_SYNTAX, syntax)
        )
    assert written, "SDICOS could not write its DX"
    return path


@pytest.fixture
def sdicos_site() -> ProfileRegistry:
    """A profile for a scanner whose files, like SDICOS's, carry no pixel spacing."""
    return ProfileRegistry(
        [ScannerProfile(name="sdicos-portal", sites=("portal-7",), spacing_mm=(4.5, 6.5))]
    )


@pytest.mark.parametrize("syntax", list(SDICOS_SYNTAXES))
def test_scanml_reads_sdicos_dx_in_its_syntaxes(
    syntax: str, sdicos_site: ProfileRegistry, tmp_path: Path
) -> None:
    truth = container_scene()
    stored = np.rint(np.exp(-truth) * FULL_SCALE).astype(np.uint16)
    path = _write_with_sdicos(tmp_path / "vendor.dcs", stored, SDICOS_SYNTAXES[syntax])
    dataset = pydicom.dcmread(path)
    assert "PixelSpacing" not in dataset and dataset.Modality == "XRAY"
    if syntax == "jpeg-lossless-default":
        assert dataset.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.70"

    scan = read_scan(path, site="portal-7", profiles=sdicos_site)
    assert scan.spacing_mm == (4.5, 6.5) and scan.meta["spacing_source"] == "profile sdicos-portal"
    assert scan.meta["profile"] == "sdicos-portal" and scan.meta["assumptions"] == []
    # Quantisation of LIN: one count in exp(-A) * 65535.
    quantum = 1.0 / (np.exp(-truth) * FULL_SCALE)
    assert np.all(np.abs(scan.attenuation[0] - truth) <= quantum + 1e-5)
    # The manifest's spacing does as well as a profile's.
    assert read_scan(path, spacing_mm=(4.0, 7.0), profiles=ProfileRegistry()).spacing_mm == (
        4.0,
        7.0,
    )


def test_sdicos_file_without_spacing_or_profile_is_refused_clearly(tmp_path: Path) -> None:
    stored = np.rint(np.exp(-container_scene()) * FULL_SCALE).astype(np.uint16)
    path = _write_with_sdicos(tmp_path / "vendor.dcs", stored, "enumLittleEndianExplicit")
    with pytest.raises(ScanReadError, match=r"no pixel spacing.*scanner profile"):
        read_scan(path, profiles=ProfileRegistry())


def test_log_values_that_sdicos_labels_lin_are_not_read_silently(tmp_path: Path) -> None:
    """SDICOS writes LIN whatever the values are; a profile settles what they mean."""
    truth = container_scene()
    stored = np.rint(truth / LOG_STEP).astype(np.uint16)  # log values, labelled LIN
    path = _write_with_sdicos(tmp_path / "log.dcs", stored, "enumLittleEndianExplicit")
    assert pydicom.dcmread(path).PixelIntensityRelationship == "LIN"

    with pytest.warns(ScanAssumptionWarning, match="open beam not found"):
        naive = read_scan(path, spacing_mm=5.0, profiles=ProfileRegistry())
    assert any("LOG labelled LIN" in note for note in naive.meta["assumptions"])

    profile = ScannerProfile(
        name="log-portal", sites=("p",), relationship="LOG", sign=-1, log_scale=LOG_STEP
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", ScanAssumptionWarning)
        settled = read_scan(path, spacing_mm=5.0, profile=profile)
    assert np.abs(settled.attenuation[0] - truth).max() <= LOG_STEP
    assert settled.meta["encoding"] == "LOG" and not settled.meta["encoding_assumed"]


# --- Threat Detection Reports, both ways ------------------------------------------------


@pytest.fixture
def dx_scan(tmp_path: Path) -> Scan:
    scan = Scan(container_scene()[np.newaxis], (5.0, 5.0), ["high"], {"scan_id": "c1"})
    return read_scan(write_scan(scan, tmp_path / "c1.dcs"))


def _report(path: Path, scan: Scan, regions: list[Region], flagged: bool, **meta) -> Path:
    return write_tdr(
        path,
        scan_meta={**scan.meta, **meta},
        prediction_regions=regions,
        score=0.92 if flagged else 0.1,
        threshold=0.5,
        flagged=flagged,
        model_uri="models:/scanml-anomaly@champion",
        class_names=["drugs", "weapon", "cigarettes", "other"],
        processing_ms=12.0,
        peak_xy=(60.0, 50.0),
    )


def _sdicos_tdr(path: Path):
    tdr, errors = sdicos.TDR(), sdicos.ErrorLog()
    assert tdr.Read(sdicos.Filename(str(path)), errors, None), f"SDICOS refused {path.name}"
    assert (errors.NumErrors(), errors.NumWarnings()) == (0, 0)
    return tdr


def _pto_ids(tdr) -> list[int]:
    ids = sdicos.Array1DS_UINT16()
    tdr.GetPTOIds(ids)
    return [ids[i] for i in range(ids.GetSize())]


@pytest.mark.parametrize("ooi_type", ["CARGO", "BAGGAGE"])
def test_sdicos_reads_scanml_alarm_report(ooi_type: str, dx_scan: Scan, tmp_path: Path) -> None:
    path = _report(tmp_path / "alarm.dcm", dx_scan, REGIONS, True, ooi_type=ooi_type)
    tdr = _sdicos_tdr(path)
    categories = sdicos.TDR.THREAT_CATEGORY
    flags = sdicos.TDR.ASSESSMENT_FLAG
    assert tdr.GetAlarmDecision() == sdicos.TDR.ALARM_DECISION.enumAlarm
    assert tdr.GetNumPTOs() == 2 and tdr.GetNumAlarmObjects() == 1
    assert tdr.GetScanInstanceUID().Get() == dx_scan.meta["study_instance_uid"]
    assert tdr.GetFrameOfReferenceUID().Get() == dx_scan.meta["frame_of_reference_uid"]
    assert tdr.GetImageScaleRepresentation() == 1.0
    expected = [
        (categories.enumContraband, flags.enumThreat),
        (categories.enumProhibitedItem, flags.enumNoThreat),
    ]
    for pto, region, (category, flag) in zip(_pto_ids(tdr), REGIONS, expected, strict=True):
        assert tdr.GetPTOAssessmentThreatCategory(pto, 0) == category
        assert tdr.GetPTOAssessmentFlag(pto, 0) == flag
        assert tdr.GetPTOAssessmentDescription(pto, 0).Get() == region.category
        assert tdr.GetPTOAssessmentProbability(pto, 0) == pytest.approx(region.score, abs=1e-6)


def test_sdicos_keeps_boxes_polygons_and_scan_reference(dx_scan: Scan, tmp_path: Path) -> None:
    """What SDICOS 1.3.0 returns of a PTO's representation (it keeps them for BAGGAGE only)."""
    path = _report(tmp_path / "alarm.dcm", dx_scan, REGIONS, True, ooi_type="BAGGAGE")
    tdr = _sdicos_tdr(path)
    for pto, region in zip(_pto_ids(tdr), REGIONS, strict=True):
        found, base, extents, _ = tdr.GetThreatRegionOfInterest(
            pto, sdicos.Point3Dfloat(), sdicos.Point3Dfloat(), sdicos.Bitmap(), 0
        )
        assert found
        assert (base.x, base.y, extents.x, extents.y) == (region.x, region.y, region.w, region.h)
        found, polygon = tdr.GetThreatBoundingPolygon(pto, sdicos.Array1DPoint3Dfloat(), 0)
        corners = [(polygon[i].x, polygon[i].y) for i in range(polygon.GetSize())]
        x, y, w, h = region.x, region.y, region.w, region.h
        assert found and corners == [(x, y), (x + w, y), (x + w, y + h), (x, y + h)]
    # What SDICOS holds, written back by SDICOS: the referenced scan instance survives.
    rewritten = tmp_path / "rewritten.dcs"
    assert tdr.Write(
        sdicos.Filename(str(rewritten)),
        sdicos.ErrorLog(),
        sdicos.CT.TRANSFER_SYNTAX.enumLittleEndianExplicit,
    )
    report = read_tdr(rewritten)
    assert report.referenced_sop_instance_uid == dx_scan.meta["sop_instance_uid"]
    assert report.alarm_decision == "ALARM"
    assert [(o.category, o.dicos_category) for o in report.objects] == [
        ("drugs", "CONTRABAND"),
        ("weapon", "PI"),
    ]
    assert [o.polygon[0] for o in report.objects] == [(10.0, 20.0), (100.0, 5.0)]


def test_sdicos_reads_clear_and_peak_only_reports(dx_scan: Scan, tmp_path: Path) -> None:
    clear = _sdicos_tdr(_report(tmp_path / "clear.dcm", dx_scan, [], False))
    assert clear.GetAlarmDecision() == sdicos.TDR.ALARM_DECISION.enumClear
    assert clear.GetNumPTOs() == 0
    # Flagged without regions: never an ALARM with zero objects, the peak is reported.
    peak_path = _report(tmp_path / "peak.dcm", dx_scan, [], True)
    peak = _sdicos_tdr(peak_path)
    assert peak.GetAlarmDecision() == sdicos.TDR.ALARM_DECISION.enumAlarm
    assert peak.GetNumPTOs() == 1
    (pto,) = _pto_ids(peak)
    assert peak.GetPTOAssessmentThreatCategory(pto, 0) == sdicos.TDR.THREAT_CATEGORY.enumAnomaly
    (threat,) = read_tdr(peak_path).objects
    assert threat.polygon[0] == (44.0, 34.0) and threat.probability == pytest.approx(0.92)
    with pytest.raises(ValueError, match="peak_xy"):
        write_tdr(
            tmp_path / "none.dcm",
            scan_meta=dx_scan.meta,
            prediction_regions=[],
            score=0.9,
            threshold=0.5,
            flagged=True,
            model_uri="m",
            class_names=["drugs"],
        )


def test_scanml_reads_a_report_sdicos_writes(tmp_path: Path) -> None:
    tdr = sdicos.TDR(
        sdicos.CT.OBJECT_OF_INSPECTION_TYPE.enumTypeBaggage, sdicos.TDR.TDR_TYPE.enumMachine, 1
    )
    tdr.SetContentDateAndTime(sdicos.DcsDate.Today(), sdicos.DcsTime.Now())
    tdr.SetImageScaleRepresentation(1.0)
    tdr.SetAlarmDecision(sdicos.TDR.ALARM_DECISION.enumAlarm)
    tdr.SetAlarmDecisionDateTime(sdicos.DcsDate.Today(), sdicos.DcsTime.Now())
    tdr.SetAbortFlag(sdicos.TDR.ABORT_FLAG.enumSuccess)
    tdr.AddPotentialThreatObject(7, sdicos.TDR.ThreatType.enumThreatTypeBaggage)
    tdr.AddPTOAssessment(
        7,
        sdicos.TDR.ASSESSMENT_FLAG.enumThreat,
        sdicos.TDR.THREAT_CATEGORY.enumProhibitedItem,
        sdicos.TDR.ABILITY_ASSESSMENT.enumNoInterference,
        sdicos.DcsLongText("weapon"),
        0.75,
    )
    tdr.SetBaggagePTODetails(7, 0.0, 0.0, 0)
    tdr.SetThreatRegionOfInterest(
        7, sdicos.Point3Dfloat(12, 23, 0), sdicos.Point3Dfloat(30, 40, 1), sdicos.Bitmap(), 0
    )
    moment = sdicos.DcsDateTime()
    moment.SetNow()
    tdr.SetPTOProcessingTime(7, moment, moment, 0.0)
    tdr.AddReferencedInstance(
        7,
        sdicos.DcsUniqueIdentifier("1.2.840.10008.5.1.4.1.1.501.2.1"),
        sdicos.DcsUniqueIdentifier("1.2.3.4.5"),
        0,
    )
    path = tmp_path / "sdicos-tdr.dcs"
    assert tdr.Write(sdicos.Filename(str(path)), sdicos.ErrorLog())
    report = read_tdr(path)
    assert report.alarm_decision == "ALARM"
    assert report.referenced_sop_instance_uid == "1.2.3.4.5"
    (threat,) = report.objects
    assert (threat.category, threat.dicos_category) == ("weapon", "PI")
    assert threat.probability == pytest.approx(0.75)
