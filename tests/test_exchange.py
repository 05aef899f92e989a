"""Scan packages: nothing identifying leaves, TDRs still find their scans, tampering is caught.

The source data is simulated scans and real TDRs from `scanml score --tdr`,
with identifiers planted into every tag an agency's files could carry them
in; the package is then searched for them tag by tag and file by file.
"""

from __future__ import annotations

import hashlib
import shutil
from datetime import datetime
from pathlib import Path

import pandas as pd
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from conftest import CONFIGS, TrainedModel
from scanml.cli import main
from scanml.data import load_dataset
from scanml.exchange import ExchangeError, export_package, import_package, verify_package
from scanml.io import read_scan
from scanml.tdr import read_tdr

#: What an agency's files may say about a container, its owner and the people who scanned it.
PLANTED = {
    "PatientName": "Vandermeulen^Johannes",  # DICOS: the OOI owner
    "PatientID": "MSCU7812345",  # DICOS: the OOI (container number)
    "OtherPatientIDs": "TGHU9982107",
    "PatientBirthDate": "19710422",
    "AccessionNumber": "CONSIGN-4471-BE",
    "OperatorsName": "Peeters^Annelies",
    "PerformingPhysicianName": "Janssens^Koen",
    "ReferringPhysicianName": "Maes^Dirk",
    "InstitutionName": "Douane Havenstraat Antwerpen",
    "InstitutionAddress": "Havenstraat 12, 2030 Antwerpen",
    "InstitutionalDepartmentName": "Scanteam Noord",
    "StationName": "SCANNER-WEST-3",
    "DeviceSerialNumber": "SN-99812733",
    "StudyID": "INSPECT-55120",
    "StudyDescription": "inspection of MSCU7812345 for BL-NL-88231",
    "SeriesDescription": "BL-NL-88231",
    "ImageComments": "driver Jan de Vries, truck 1-ABC-234",
    "ItineraryID": "ITIN-2231-RTM",
    "CarrierID": "MAERSK-ALABAMA",
    "RouteID": "ROUTE-ANR-SSZ",
    "StudyDate": "20190314",
    "SeriesDate": "20190314",
    "AcquisitionDate": "20190314",
    "ContentDate": "20190314",
    "AcquisitionDateTime": "20190314101500",
    "InstanceCreationDate": "20190314",
}
PRIVATE_VALUE = "private-MSCU7812345-seal-445821"
OWNER_NAME = "Owner^Private^Company"
DATES = ("20190314", "2019-03-14", "19710422")
STRINGS = sorted(
    {v for k, v in PLANTED.items() if "Date" not in k}
    | {PRIVATE_VALUE, OWNER_NAME, "Vandermeulen", "Peeters", "Janssens", "MSCU7812345"}
)
MODEL_NAME = "MT1213DE"


def plant(path: Path) -> None:
    """Write every planted identifier into a DICOM file, private tags and DICOS sequences too."""
    dataset = pydicom.dcmread(path)
    for keyword, value in PLANTED.items():
        setattr(dataset, keyword, value)
    dataset.Manufacturer = "Example Scanners"
    dataset.ManufacturerModelName = MODEL_NAME
    dataset.private_block(0x0011, "AGENCY CUSTOMS", create=True).add_new(0x01, "LO", PRIVATE_VALUE)
    owner = Dataset()
    owner.PatientName = OWNER_NAME
    dataset.OOIOwnerSequence = DicomSequence([owner])
    dataset.save_as(path, enforce_file_format=True)


@pytest.fixture(scope="module")
def agency_a(tmp_path_factory: pytest.TempPathFactory, trained_model: TrainedModel) -> Path:
    """Six simulated scans with TDRs from scanml score, identifiers planted everywhere."""
    from scanml.scoring import score
    from scanml.synth import generate_dataset

    out = tmp_path_factory.mktemp("agency-a")
    generate_dataset(
        out_dir=out,
        n_scans=6,
        seed=11,
        sites=["antwerp", "rotterdam"],
        anomaly_fraction=0.5,
        workers=2,
        progress=False,
    )
    manifest = pd.read_csv(out / "manifest.csv", dtype=str, keep_default_na=False)
    manifest["group"] = [f"MSCU78123{k}" for k in range(len(manifest))]  # container numbers
    manifest["consignment"] = "BL-NL-88231"  # a column nobody reviewed
    manifest.to_csv(out / "manifest.csv", index=False)
    for path in sorted((out / "scans").glob("*.dcm")):
        plant(path)
    score(
        str(trained_model.bundle_dir),
        out / "manifest.csv",
        tmp_path_factory.mktemp("scores") / "scores.parquet",
        tdr=out / "tdr",
        workers=0,
        progress=False,
    )
    for path in sorted((out / "tdr").glob("*.dcm")):
        plant(path)
    return out


@pytest.fixture(scope="module")
def package(agency_a: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("outbox") / "antwerp-2026-12"
    summary = export_package(agency_a, out)
    assert summary.n_scans == 6 and summary.n_tdrs == 6
    assert summary.scanner_models == [MODEL_NAME]
    assert "consignment" in summary.dropped_columns
    return out


def test_no_planted_identifier_survives_in_any_tag_or_file(package: Path) -> None:
    files = [path for path in package.rglob("*") if path.is_file()]
    dicom_files = [path for path in files if path.suffix == ".dcm"]
    assert len([p for p in dicom_files if p.parent.name == "tdr"]) == 6
    assert len([p for p in dicom_files if p.suffixes == [".dcm"]]) == 12  # 6 scans + 6 reports
    for path in dicom_files:
        for value in _all_values(pydicom.dcmread(path)):
            for planted in (*STRINGS, *DATES):
                assert planted.lower() not in value.lower(), f"{planted!r} in {path.name}"
    for path in files:
        raw = path.read_bytes().lower()
        for planted in STRINGS:  # anywhere in any file, text or binary
            assert planted.lower().encode() not in raw, f"{planted!r} in {path.name}"
        if path.suffix in (".csv", ".json", ".md", ".txt"):
            text = path.read_text()
            for planted in DATES:
                assert planted not in text, f"{planted!r} in {path.name}"
    names = " ".join(p.as_posix() for p in files)
    assert "scan_0000" not in names and "MSCU" not in names  # file names say nothing either
    scan = pydicom.dcmread(dicom_files[0], stop_before_pixels=True)
    assert scan.PatientIdentityRemoved == "YES"
    assert scan.ManufacturerModelName == MODEL_NAME  # the physics and the device stay
    assert "(0011," not in str(scan)  # private tags dropped


def test_physics_survive_de_identification(agency_a: Path, package: Path) -> None:
    source = load_dataset(agency_a).records
    exported = load_dataset(package / "data").records
    assert [r.label for r in exported] == [r.label for r in source]
    assert [r.site for r in exported] == [r.site for r in source]
    for before, after in zip(source[:2], exported[:2], strict=True):
        original, shared = read_scan(before.path), read_scan(after.path)
        assert shared.spacing_mm == original.spacing_mm
        assert shared.channels == original.channels
        assert (shared.attenuation == original.attenuation).all()
        assert [(b.x, b.y, b.w, b.h, b.category) for b in after.boxes] == [
            (b.x, b.y, b.w, b.h, b.category) for b in before.boxes
        ]


def test_tdr_uids_still_resolve_to_their_scans(agency_a: Path, package: Path) -> None:
    manifest = pd.read_csv(package / "data" / "manifest.csv", dtype=str, keep_default_na=False)
    source_uids = {
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
        for p in (agency_a / "scans").glob("*.dcm")
    }
    for row in manifest.itertuples():
        scan = pydicom.dcmread(package / "data" / row.path, stop_before_pixels=True)
        report = pydicom.dcmread(package / "data" / row.tdr)
        assert read_tdr(package / "data" / row.tdr).referenced_sop_instance_uid == str(
            scan.SOPInstanceUID
        )
        assert report.StudyInstanceUID == scan.StudyInstanceUID  # the report joins the study
        assert str(scan.SOPInstanceUID) not in source_uids  # remapped, not copied
        if report.get("StudyDate") is not None:
            # One offset for the package, applied to date and time together:
            # a report written hours after its scan may roll over midnight.
            days = abs(
                (
                    datetime.strptime(scan.StudyDate, "%Y%m%d")
                    - datetime.strptime(report.StudyDate, "%Y%m%d")
                ).days
            )
            assert days <= 1
    assert manifest["group"].str.startswith("group-").all()


def test_strict_export_refuses_an_unreviewed_attribute(
    agency_a: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "source"
    shutil.copytree(agency_a, source)
    victim = sorted(p for p in (source / "scans").glob("*.dcm") if p.suffixes == [".dcm"])[1]
    dataset = pydicom.dcmread(victim)
    dataset.ReferringPhysicianAddress = "Kaai 5, Antwerpen"  # no rule covers it
    dataset.save_as(victim)

    code = main(["export", "--data", str(source), "--out", str(tmp_path / "pkg"), "--strict"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert victim.name in err and "ReferringPhysicianAddress (0008,0092)" in err
    assert not (tmp_path / "pkg").exists()

    summary = export_package(source, tmp_path / "lenient", keep_device=False)  # reported, removed
    assert summary.unknown_attributes == {
        f"{victim.stem}.dcm": ["ReferringPhysicianAddress (0008,0092)"]
    }
    assert summary.scanner_models == []
    exported = pydicom.dcmread(next((tmp_path / "lenient" / "data" / "scans").glob("*.dcm")))
    assert "ManufacturerModelName" not in exported and "ReferringPhysicianAddress" not in exported


@pytest.mark.parametrize("damage", ["flip a byte", "remove a file", "add a file"])
def test_a_tampered_package_is_refused_and_changes_nothing(
    package: Path, agency_a: Path, tmp_path: Path, damage: str
) -> None:
    copy = tmp_path / "received"
    shutil.copytree(package, copy)
    victim = copy / "data" / "scans" / "scan-00003.dcm"
    if damage == "flip a byte":
        data = bytearray(victim.read_bytes())
        data[len(data) // 2] ^= 0x01
        victim.write_bytes(bytes(data))
    elif damage == "remove a file":
        victim.unlink()
    else:
        (copy / "data" / "scans" / "extra.dcm").write_bytes(b"not declared")
    ours = tmp_path / "ours"
    shutil.copytree(agency_a, ours)
    before = _snapshot(ours)

    with pytest.raises(ExchangeError) as error:
        import_package(copy, ours, site="santos")
    expected = "extra.dcm" if damage == "add a file" else "data/scans/scan-00003.dcm"
    assert expected in str(error.value)
    assert _snapshot(ours) == before
    with pytest.raises(ExchangeError):
        import_package(copy, tmp_path / "new")
    assert not (tmp_path / "new").exists()


@pytest.mark.slow
def test_an_intact_package_imports_and_trains(
    package: Path, agency_a: Path, tmp_path: Path, mlflow_uri: str
) -> None:
    from scanml.config import load_config
    from scanml.train import train

    verify_package(package)
    ours = tmp_path / "ours"
    shutil.copytree(agency_a, ours)
    assert main(["import", str(package), "--into", str(ours), "--site", "santos"]) == 0
    merged = load_dataset(ours)
    assert len(merged) == 12 and merged.sites == ["antwerp", "rotterdam", "santos"]
    imported = [r for r in merged.records if r.site == "santos"]
    assert all(r.scan_id.startswith("antwerp-2026-12-scan-") for r in imported)
    assert sum(len(r.boxes) for r in imported) == sum(
        len(r.boxes) for r in load_dataset(package / "data").records
    )
    assert main(["import", str(package), "--into", str(ours)]) == 2  # the same ids again

    # Six scans per site leave the simulator's val split empty: let training draw one.
    manifest = pd.read_csv(ours / "manifest.csv", dtype=str, keep_default_na=False)
    manifest.drop(columns="split").to_csv(ours / "manifest.csv", index=False)

    result = train(
        load_config(CONFIGS / "smoke.yaml", ["train.epochs=1", "tracking.registered_model=null"]),
        ours,
        progress=False,
    )
    assert result.bundle_dir.joinpath("model.safetensors").is_file()


def _all_values(dataset: Dataset) -> list[str]:
    """Every element's value as text, file meta and nested sequences included (pixels skipped)."""
    values = []
    for element in [*dataset.file_meta, *dataset] if hasattr(dataset, "file_meta") else dataset:
        if element.VR == "SQ":
            for item in element.value:
                values += _all_values(item)
        elif element.keyword != "PixelData":
            values.append(str(element.value))
    return values


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }
