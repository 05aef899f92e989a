"""Scanner files as vendors write them: profiles, open beam, assumptions, refusals."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from scanml.cli import main
from scanml.io import (
    Scan,
    ScanAssumptionWarning,
    ScanReadError,
    is_energy_partner,
    read_scan,
    write_scan,
)
from scanml.profiles import (
    OpenBeam,
    ProfileRegistry,
    ScannerProfile,
    default_registry,
    load_profiles,
)

NO_PROFILES = ProfileRegistry()
CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"


def container_scene(height: int = 120, width: int = 200) -> np.ndarray:
    """True attenuation [H, W]: a container with cargo, air above it and at both ends."""
    attenuation = np.zeros((height, width), dtype=np.float32)
    rows, columns = np.mgrid[0:height, 0:width]
    inside = (rows >= height // 5) & (columns >= width // 8) & (columns < width - width // 8)
    attenuation[inside] = 0.6 + 3.0 * ((rows[inside] * 7 + columns[inside] * 3) % 50) / 50
    return attenuation


def beam(height: int, level: float = 0.8, profile: float = 0.04) -> np.ndarray:
    """Open-beam transmission per row: ``level`` of full scale, ``profile`` brighter mid-column."""
    position = np.linspace(-1.0, 1.0, height)
    return level * (1.0 + profile * (1.0 - position**2))


def stored_as_scanner(truth: np.ndarray, open_beam: np.ndarray) -> Scan:
    """What a scanner with this open beam stores, as a Scan whose LIN files hold exactly it."""
    apparent = truth - np.log(open_beam)[:, np.newaxis]
    return Scan(apparent[np.newaxis].astype(np.float32), (4.5, 6.5), ["high"], {"scan_id": "v"})


# --- open beam ---------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".dcm", ".tif"])
def test_air_at_80_percent_with_a_4_percent_beam_profile_reads_true_attenuation(
    suffix: str, tmp_path: Path
) -> None:
    truth = container_scene()
    path = write_scan(
        stored_as_scanner(truth, beam(truth.shape[0])),
        tmp_path / f"vendor{suffix}",
        encoding="LIN",
    )
    scan = read_scan(path, spacing_mm=5.0, profiles=NO_PROFILES)
    error = np.abs(scan.attenuation[0] - truth)
    assert error[truth == 0].max() <= 0.02  # air
    assert error[truth > 0].max() <= 0.02  # cargo
    record = scan.meta["open_beam"]
    assert record["method"] == "estimate" and record["applied"]
    (channel,) = record["channels"]
    assert channel["source"] == "air columns"
    assert channel["air_transmission_min"] == pytest.approx(0.8, abs=0.005)
    assert channel["air_transmission_max"] == pytest.approx(0.832, abs=0.005)

    # Read as the file promises (air at full scale), everything is offset.
    naive = read_scan(
        path,
        spacing_mm=5.0,
        profile=ScannerProfile(name="naive", open_beam=OpenBeam(method="full_scale")),
    )
    assert np.abs(naive.attenuation[0] - truth)[truth == 0].min() > 0.18  # -ln(0.832)


def test_air_columns_crossed_by_a_chassis_still_give_the_open_beam(tmp_path: Path) -> None:
    # A container on a trailer: in front of and behind it the columns are air but for
    # the chassis in their bottom rows. In those rows most air columns are chassis, and
    # a per-row median over the columns read the chassis as the open beam ("no open beam").
    truth = container_scene()
    truth[110:, 10:190] = 3.0  # 10 of 120 rows: those columns still count as air
    path = write_scan(
        stored_as_scanner(truth, beam(truth.shape[0])), tmp_path / "trailer.dcm", encoding="LIN"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", ScanAssumptionWarning)
        scan = read_scan(path, spacing_mm=5.0, profiles=NO_PROFILES)
    assert np.abs(scan.attenuation[0] - truth).max() <= 0.02
    (channel,) = scan.meta["open_beam"]["channels"]
    assert channel["air_transmission_min"] == pytest.approx(0.8, abs=0.005)


def test_a_profile_gives_the_open_beam_level(tmp_path: Path) -> None:
    truth = container_scene()
    flat = np.full(truth.shape[0], 0.8)
    path = write_scan(stored_as_scanner(truth, flat), tmp_path / "v.dcm", encoding="LIN")
    profile = ScannerProfile(name="vacis", open_beam=OpenBeam(method="level", level=0.8))
    scan = read_scan(path, spacing_mm=5.0, profile=profile)
    assert np.abs(scan.attenuation[0] - truth).max() <= 0.02
    assert scan.meta["open_beam"]["method"] == "level" and scan.meta["profile"] == "vacis"


def test_scan_without_air_is_left_alone_and_says_so(tmp_path: Path) -> None:
    cargo = np.random.default_rng(0).uniform(1.0, 4.0, (1, 60, 80)).astype(np.float32)
    path = write_scan(Scan(cargo, (5.0, 5.0), ["high"], {}), tmp_path / "crop.dcm")
    with pytest.warns(ScanAssumptionWarning, match="open beam not found"):
        scan = read_scan(path, profiles=NO_PROFILES)
    assert np.abs(scan.attenuation - cargo).max() <= 2.0**-12
    assert scan.meta["open_beam"]["found"] is False


def test_scanml_files_with_air_at_full_scale_read_unchanged(tmp_path: Path) -> None:
    truth = container_scene()[np.newaxis]
    path = write_scan(Scan(truth, (5.0, 5.0), ["high"], {}), tmp_path / "own.dcm")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ScanAssumptionWarning)
        scan = read_scan(path, profiles=NO_PROFILES)
    assert np.abs(scan.attenuation - truth).max() <= 2.0**-12
    assert scan.meta["open_beam"]["applied"] is False and scan.meta["assumptions"] == []


# --- assumptions and refusals -------------------------------------------------------------


def _bare_dicom(
    path: Path,
    stored: np.ndarray,
    *,
    modality: str = "CR",
    sop_class: str = CR_IMAGE_STORAGE,
    photometric: str = "MONOCHROME2",
    **attributes: object,
) -> Path:
    """A plain DICOM image as other producers write it: no PixelIntensityRelationship."""
    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.MediaStorageSOPClassUID = sop_class
    dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.SOPClassUID = sop_class
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID
    dataset.Modality = modality
    dataset.PhotometricInterpretation = photometric
    dataset.SamplesPerPixel = 1
    frames = stored.shape[0] if stored.ndim == 3 else 1
    if frames > 1:
        dataset.NumberOfFrames = frames
    dataset.Rows, dataset.Columns = stored.shape[-2:]
    dataset.BitsAllocated = dataset.BitsStored = 16
    dataset.HighBit = 15
    dataset.PixelRepresentation = 0
    for keyword, value in attributes.items():
        setattr(dataset, keyword, value)
    dataset.PixelData = stored.astype(np.uint16).tobytes()
    dataset.save_as(path, enforce_file_format=True)
    return path


def test_medical_cr_without_relationship_follows_the_medical_convention(tmp_path: Path) -> None:
    """Bone is bright on a CR: air must read ~0 and bone high, with the guess said aloud."""
    truth = np.zeros((64, 64), dtype=np.float32)
    truth[16:48, 24:40] = 3.0  # bone
    stored = np.rint(65535 * (1.0 - np.exp(-truth)))
    path = _bare_dicom(tmp_path / "chest.dcm", stored, PixelSpacing=[0.2, 0.2])
    with pytest.warns(ScanAssumptionWarning) as caught:
        scan = read_scan(path, profiles=NO_PROFILES)
    assert scan.attenuation[0][truth == 0].max() < 0.01
    assert scan.attenuation[0][truth == 3.0].min() > 2.9
    notes = " ".join(scan.meta["assumptions"])
    assert "LIN assumed" in notes and "medical (bone bright)" in notes
    assert len(caught) >= 2
    # A profile settles it: nothing assumed any more.
    settled = ScannerProfile(name="cr", relationship="LIN", sign=-1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ScanAssumptionWarning)
        assert read_scan(path, profile=settled).meta["assumptions"] == []


@pytest.mark.parametrize("modality", ["XRAY", "RG", "DX", "CR"])
def test_modalities_seen_in_the_wild_are_projection_images(modality: str, tmp_path: Path) -> None:
    stored = np.rint(65535 * (1.0 - np.exp(-container_scene())))
    path = _bare_dicom(tmp_path / "m.dcm", stored, modality=modality, PixelSpacing=[5, 5])
    with pytest.warns(ScanAssumptionWarning):
        scan = read_scan(path, profiles=NO_PROFILES)
    assert scan.meta["modality"] == modality and scan.meta["encoding_assumed"]


def test_ct_without_relationship_is_refused(tmp_path: Path) -> None:
    path = _bare_dicom(tmp_path / "ct.dcm", np.zeros((8, 8)), modality="CT", PixelSpacing=[1, 1])
    with pytest.raises(ScanReadError, match="not a projection X-ray image"):
        read_scan(path, profiles=NO_PROFILES)


def test_a_96_frame_cine_is_refused_not_read_as_96_channels(tmp_path: Path) -> None:
    cine = np.zeros((96, 16, 16), dtype=np.uint16)
    path = _bare_dicom(tmp_path / "cine.dcm", cine, modality="XA", PixelSpacing=[1, 1])
    with pytest.raises(ScanReadError, match=r"96 frames.*cine"):
        read_scan(path, profiles=NO_PROFILES)


def test_undeclared_frames_are_refused_and_a_profile_declares_energies(tmp_path: Path) -> None:
    pair = np.stack([np.full((16, 16), 60000), np.full((16, 16), 50000)])
    path = _bare_dicom(
        tmp_path / "pair.dcm",
        pair,
        modality="DX",
        PixelSpacing=[5, 5],
        PixelIntensityRelationship="LIN",
        PixelIntensityRelationshipSign=1,
    )
    with pytest.raises(ScanReadError, match="2 frames"):
        read_scan(path, profiles=NO_PROFILES)
    profile = ScannerProfile(name="de", channels=("high", "low"))
    scan = read_scan(path, profile=profile)
    assert scan.channels == ["high", "low"] and scan.attenuation.shape == (2, 16, 16)


def test_zero_pixel_spacing_means_none(tmp_path: Path) -> None:
    stored = np.rint(65535 * np.exp(-container_scene()))
    path = _bare_dicom(
        tmp_path / "zero.dcm",
        stored,
        modality="DX",
        PixelSpacing=[0, 0],
        PixelIntensityRelationship="LIN",
        PixelIntensityRelationshipSign=1,
    )
    assert read_scan(path, spacing_mm=(4.5, 6.5), profiles=NO_PROFILES).spacing_mm == (4.5, 6.5)
    with pytest.raises(ScanReadError, match="no pixel spacing"):
        read_scan(path, profiles=NO_PROFILES)


def test_log_values_need_a_scale(tmp_path: Path) -> None:
    truth = container_scene()
    stored = np.rint(truth * 1000.0)
    path = _bare_dicom(
        tmp_path / "log.dcm",
        stored,
        modality="DX",
        PixelSpacing=[5, 5],
        PixelIntensityRelationship="LOG",
        PixelIntensityRelationshipSign=-1,
    )
    with pytest.raises(ScanReadError, match="LOG values with no scale"):
        read_scan(path, profiles=NO_PROFILES)
    scan = read_scan(path, profile=ScannerProfile(name="log", log_scale=1e-3))
    assert np.abs(scan.attenuation[0] - truth).max() <= 1e-3


# --- profiles --------------------------------------------------------------------------


def test_profiles_load_from_yaml_and_match_by_equipment_or_site(tmp_path: Path) -> None:
    (tmp_path / "portals.yaml").write_text(
        "profiles:\n"
        "  - name: vendor-a\n"
        "    manufacturer: 'Vendor A.*'\n"
        "    model: 'Portal [0-9]+'\n"
        "    spacing_mm: [4.5, 6.5]\n"
        "    open_beam: {method: level, level: 0.8}\n"
        "  - name: santos-gate-2\n"
        "    sites: [santos]\n"
        "    channels: [high, low]\n"
    )
    registry = load_profiles(tmp_path)
    assert [p.name for p in registry.profiles] == ["vendor-a", "santos-gate-2"]
    found = registry.match({"manufacturer": "vendor a inc", "model": "Portal 9", "station": None})
    assert found is not None and found.spacing_mm == (4.5, 6.5)
    assert registry.match({"manufacturer": "Vendor A", "model": "Other"}) is None
    assert registry.match({}, site="Santos").name == "santos-gate-2"

    stored = np.rint(65535 * 0.8 * np.exp(-container_scene()))
    path = _bare_dicom(
        tmp_path / "a.dcm",
        stored,
        modality="DX",
        Manufacturer="Vendor A Systems",
        ManufacturerModelName="Portal 3",
        PixelIntensityRelationship="LIN",
        PixelIntensityRelationshipSign=1,
    )
    scan = read_scan(path, profiles=registry)
    assert scan.meta["profile"] == "vendor-a" and scan.spacing_mm == (4.5, 6.5)
    assert np.abs(scan.attenuation[0] - container_scene()).max() <= 0.01


def test_an_invalid_profile_names_its_file_and_field(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("name: x\nspacing_mm: [4.5, -1]\n")
    with pytest.raises(ValueError, match=r"bad\.yaml.*spacing_mm"):
        load_profiles(tmp_path)
    (tmp_path / "bad.yaml").write_text("name: x\nopen_beam: {method: level}\n")
    with pytest.raises(ValueError, match=r"bad\.yaml.*open_beam"):
        load_profiles(tmp_path)


def test_default_registry_reads_scanml_profiles_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "one.yaml").write_text("name: only\nsites: [here]\nspacing_mm: [3, 3]\n")
    monkeypatch.setenv("SCANML_PROFILES", str(tmp_path))
    assert [p.name for p in default_registry().profiles] == ["only"]
    truth = container_scene()[np.newaxis]
    path = write_scan(Scan(truth, (5.0, 5.0), ["high"], {}), tmp_path / "s.tif")
    assert read_scan(path, site="here").spacing_mm == (3.0, 3.0)


def test_energy_partner_files_are_recognised(tmp_path: Path) -> None:
    truth = container_scene()
    scan = Scan(np.stack([truth, truth]), (5.0, 5.0), ["high", "low"], {})
    path = write_scan(scan, tmp_path / "d.dcm")
    assert not is_energy_partner(path)
    assert is_energy_partner(tmp_path / "d.low.dcm")


def test_same_meta_writes_the_same_bytes(tmp_path: Path) -> None:
    meta = {
        "sop_instance_uid": "1.2.3.1",
        "study_instance_uid": "1.2.3.2",
        "series_instance_uid": "1.2.3.3",
        "acquisition_datetime": "2026-01-02T03:04:05+00:00",
    }
    truth = container_scene()
    scan = Scan(np.stack([truth, truth * 1.3]), (5.0, 5.0), ["high", "low"], meta)
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        write_scan(scan, tmp_path / folder / "s.dcm")
    for name in ("s.dcm", "s.low.dcm"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_info_shows_what_was_assumed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    truth = np.zeros((64, 64), dtype=np.float32)
    truth[16:48, 24:40] = 3.0
    path = _bare_dicom(
        tmp_path / "chest.dcm", np.rint(65535 * (1.0 - np.exp(-truth))), PixelSpacing=[1, 1]
    )
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "ASSUMED: no PixelIntensityRelationship: LIN assumed" in out
    assert "open beam: estimate" in out
    assert main(["info", str(path), "--profile", "no-such-profile"]) == 2
    assert "no scanner profile named 'no-such-profile'" in capsys.readouterr().err
    pydicom.dcmread(path)  # still a plain DICOM file, nothing written to it
