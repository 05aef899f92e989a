"""scanml.io on real files: DICOS round trips in every encoding, TIFF/PNG/.npy, pydicom's own test files."""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import numpy as np
import pydicom
import pytest
import tifffile
from PIL import Image
from pydicom.data import get_testdata_files
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder, get_encoder
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
)

from io_fixtures import lin_tolerance, synthetic_scan
from scanml.io import (
    SUPPORTED_SUFFIXES,
    Scan,
    ScanAssumptionWarning,
    ScanReadError,
    read_scan,
    write_scan,
)

LOG_TOLERANCE = 2.0**-13 + 1e-6  # half a step of the 16-bit LOG encoding
DICOS_DX = "1.2.840.10008.5.1.4.1.1.501.2.1"


@pytest.fixture(scope="module")
def scan() -> Scan:
    return synthetic_scan()


def _tolerance(encoding: str, attenuation: np.ndarray) -> np.ndarray | float:
    return lin_tolerance(attenuation) if encoding == "LIN" else LOG_TOLERANCE


def _strip(path: Path, *keywords: str) -> Path:
    dataset = pydicom.dcmread(path)
    for keyword in keywords:
        delattr(dataset, keyword)
    dataset.save_as(path)
    return path


# --- Scan ------------------------------------------------------------------


def test_scan_describes_its_size(scan: Scan) -> None:
    assert (scan.height, scan.width) == (96, 160)
    assert scan.megapixels == pytest.approx(96 * 160 / 1e6)
    np.testing.assert_allclose(scan.transmission, np.exp(-scan.attenuation), rtol=1e-6)


def test_scan_rejects_inconsistent_fields() -> None:
    with pytest.raises(ValueError, match="channel names"):
        Scan(np.zeros((2, 4, 4), np.float32), (1.0, 1.0), ["high"])
    with pytest.raises(ValueError, match=r"\[C, H, W\]"):
        Scan(np.zeros((4, 4), np.float32), (1.0, 1.0), ["high"])
    with pytest.raises(ValueError, match="spacing_mm"):
        Scan(np.zeros((1, 4, 4), np.float32), (0.0, 1.0), ["high"])


# --- DICOS round trips -------------------------------------------------------


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
@pytest.mark.parametrize("encoding", ["LOG", "LIN"])
def test_dicom_round_trip(scan: Scan, encoding: str, photometric: str, tmp_path: Path) -> None:
    path = write_scan(scan, tmp_path / "scan.dcm", encoding=encoding, photometric=photometric)
    read = read_scan(path)
    assert read.attenuation.dtype == np.float32
    assert read.channels == ["high", "low"]
    assert read.spacing_mm == scan.spacing_mm
    assert np.all(
        np.abs(read.attenuation - scan.attenuation) <= _tolerance(encoding, scan.attenuation)
    )
    assert read.meta["encoding"] == encoding
    assert read.meta["photometric_interpretation"] == photometric
    assert not read.meta["encoding_assumed"] and not read.meta["sign_assumed"]


def test_lin_and_log_encodings_read_back_the_same(scan: Scan, tmp_path: Path) -> None:
    lin = read_scan(write_scan(scan, tmp_path / "lin.dcm", encoding="LIN"))
    log = read_scan(write_scan(scan, tmp_path / "log.dcm", encoding="LOG"))
    limit = lin_tolerance(scan.attenuation) + LOG_TOLERANCE
    assert np.all(np.abs(lin.attenuation - log.attenuation) <= limit)


@pytest.mark.parametrize("encoding", ["LOG", "LIN"])
def test_monochrome1_and_monochrome2_read_back_the_same(
    scan: Scan, encoding: str, tmp_path: Path
) -> None:
    """MONOCHROME1 stores mirrored values with the opposite sign: same picture, same physics."""
    mono2 = write_scan(scan, tmp_path / "m2.dcm", encoding=encoding, photometric="MONOCHROME2")
    mono1 = write_scan(scan, tmp_path / "m1.dcm", encoding=encoding, photometric="MONOCHROME1")
    stored2 = pydicom.dcmread(mono2).pixel_array.astype(np.int64)
    stored1 = pydicom.dcmread(mono1).pixel_array.astype(np.int64)
    np.testing.assert_array_equal(stored1, 65535 - stored2)
    read2, read1 = read_scan(mono2), read_scan(mono1)
    assert (read2.meta["sign"], read1.meta["sign"]) == (1, -1)
    np.testing.assert_array_equal(read1.attenuation, read2.attenuation)


@pytest.mark.parametrize(("encoding", "sign"), [("LIN", -1), ("LOG", 1), ("LIN", 1), ("LOG", -1)])
def test_either_sign_reads_back_the_same(
    scan: Scan, encoding: str, sign: int, tmp_path: Path
) -> None:
    path = write_scan(scan, tmp_path / "signed.dcm", encoding=encoding, sign=sign)
    read = read_scan(path)
    assert pydicom.dcmread(path).PixelIntensityRelationshipSign == sign
    assert read.meta["sign"] == sign
    assert np.all(
        np.abs(read.attenuation - scan.attenuation) <= _tolerance(encoding, scan.attenuation)
    )


def test_missing_sign_is_inferred_from_the_photometric_interpretation(
    scan: Scan, tmp_path: Path
) -> None:
    mono2 = write_scan(scan, tmp_path / "m2.dcm", encoding="LIN", photometric="MONOCHROME2")
    mono1 = write_scan(scan, tmp_path / "m1.dcm", encoding="LIN", photometric="MONOCHROME1")
    read2 = read_scan(_strip(mono2, "PixelIntensityRelationshipSign"))
    read1 = read_scan(_strip(mono1, "PixelIntensityRelationshipSign"))
    assert read2.meta["sign_assumed"] and read1.meta["sign_assumed"]
    assert (read2.meta["sign"], read1.meta["sign"]) == (1, -1)
    np.testing.assert_array_equal(read1.attenuation, read2.attenuation)


def test_missing_relationship_is_assumed_lin_for_projection_images(
    scan: Scan, tmp_path: Path
) -> None:
    path = write_scan(scan, tmp_path / "bare.dcm", encoding="LIN")
    read = read_scan(_strip(path, "PixelIntensityRelationship", "PixelIntensityRelationshipSign"))
    assert read.meta["encoding"] == "LIN" and read.meta["encoding_assumed"]
    assert np.all(np.abs(read.attenuation - scan.attenuation) <= lin_tolerance(scan.attenuation))


@pytest.mark.parametrize(
    "syntax",
    [ExplicitVRLittleEndian, RLELossless, DeflatedExplicitVRLittleEndian, JPEG2000Lossless],
    ids=["uncompressed", "rle", "deflate", "jpeg2000-lossless"],
)
def test_lossless_transfer_syntaxes_round_trip_exactly(
    scan: Scan, syntax: str, tmp_path: Path
) -> None:
    """JPEG 2000 encoding needs pylibjpeg-openjpeg (the 'jpeg' extra); without it, say so."""
    if syntax == JPEG2000Lossless and not get_encoder(syntax).is_available:
        with pytest.raises(ValueError, match="no encoder"):
            write_scan(scan, tmp_path / "compressed.dcm", transfer_syntax=syntax)
        return
    reference = read_scan(write_scan(scan, tmp_path / "reference.dcm"))
    path = write_scan(scan, tmp_path / "compressed.dcm", transfer_syntax=syntax)
    read = read_scan(path)
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == syntax
    assert read.meta["transfer_syntax_uid"] == syntax
    np.testing.assert_array_equal(read.attenuation, reference.attenuation)


def test_jpeg_baseline_decodes_through_pillow(tmp_path: Path) -> None:
    single = synthetic_scan(channels=1)
    path = write_scan(single, tmp_path / "lin8.dcm", encoding="LIN", bits=8)
    dataset = pydicom.dcmread(path)
    frame = io.BytesIO()
    Image.fromarray(dataset.pixel_array).save(frame, format="JPEG", quality=95)
    dataset.PixelData = encapsulate([frame.getvalue()])
    dataset.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    dataset.LossyImageCompression = "01"
    dataset.save_as(path)
    read = read_scan(path)
    assert read.meta["transfer_syntax_uid"] == JPEGBaseline8Bit
    assert np.abs(read.transmission - single.transmission).max() < 0.05


@pytest.mark.parametrize("bits", [8, 12])
def test_fewer_bits_keep_attenuation_to_their_step(bits: int, tmp_path: Path) -> None:
    single = synthetic_scan(channels=1)
    read = read_scan(write_scan(single, tmp_path / "few.dcm", bits=bits))
    step = 2.0 ** (4 - bits)
    assert np.abs(read.attenuation - single.attenuation).max() <= step / 2 + 1e-6


def test_dual_energy_is_one_dicos_instance_per_energy_with_its_name(tmp_path: Path) -> None:
    dual = synthetic_scan()
    dual.channels = ["6MeV", "4MeV"]
    path = write_scan(dual, tmp_path / "dual.dcm")
    partner = tmp_path / "dual.4MeV.dcm"
    assert sorted(tmp_path.iterdir()) == sorted([path, partner])
    high, low = pydicom.dcmread(path), pydicom.dcmread(partner)
    assert "NumberOfFrames" not in high
    assert list(high.ImageType) == ["ORIGINAL", "HIGH ENERGY"]
    assert list(low.ImageType) == ["ORIGINAL", "LOW ENERGY"]
    assert (high.FrameLabelVector, low.FrameLabelVector) == ("6MeV", "4MeV")
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        assert high[keyword].value == low[keyword].value
    assert high.SOPInstanceUID != low.SOPInstanceUID
    read = read_scan(path)
    assert read.meta["energy_files"] == [str(path), str(partner)]
    assert read.channels == ["6MeV", "4MeV"]
    assert np.abs(read.attenuation - dual.attenuation).max() <= LOG_TOLERANCE
    assert read_scan(path, channels=["high", "low"]).channels == ["high", "low"]
    with pytest.raises(ScanReadError, match="2 channel"):
        read_scan(path, channels=["high"])


def test_unnamed_energies_are_named_by_their_image_type(scan: Scan, tmp_path: Path) -> None:
    path = write_scan(scan, tmp_path / "x.dcm")
    _strip(tmp_path / f"x.{scan.channels[1]}.dcm", "FrameLabelVector")
    read = read_scan(_strip(path, "FrameLabelVector"))
    assert read.channels == ["high", "low"]


def test_legacy_two_frame_file_with_frame_labels_still_reads(scan: Scan, tmp_path: Path) -> None:
    """Files scanml wrote before DICOS interop: two frames, named by FrameLabelVector."""
    first = write_scan(scan, tmp_path / "x.dcm")
    low = pydicom.dcmread(tmp_path / f"x.{scan.channels[1]}.dcm")
    legacy = pydicom.dcmread(first)
    legacy.NumberOfFrames = 2
    legacy.FrameLabelVector = ["high", "low"]
    legacy.ImageType = ["ORIGINAL", "PRIMARY"]
    legacy.PixelData = legacy.PixelData + low.PixelData
    legacy.save_as(tmp_path / "legacy.dcm")
    read = read_scan(tmp_path / "legacy.dcm")
    assert read.channels == ["high", "low"]
    assert np.abs(read.attenuation - scan.attenuation).max() <= LOG_TOLERANCE


def test_written_file_is_dicos_dx_without_personal_data(scan: Scan, tmp_path: Path) -> None:
    first = pydicom.dcmread(write_scan(scan, tmp_path / "a.dcm"))
    second = pydicom.dcmread(write_scan(scan, tmp_path / "b.dcm"))
    assert (tmp_path / "a.dcm").read_bytes()[128:132] == b"DICM"
    assert first.SOPClassUID == first.file_meta.MediaStorageSOPClassUID == DICOS_DX
    assert first.SOPInstanceUID == first.file_meta.MediaStorageSOPInstanceUID
    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        assert first[keyword].value != second[keyword].value
    assert first.Modality == "DX" and first.PresentationIntentType == "FOR PRESENTATION"
    assert [float(v) for v in first.PixelSpacing] == list(scan.spacing_mm)
    assert [float(v) for v in first.ImagerPixelSpacing] == list(scan.spacing_mm)
    assert first.InstitutionName == "antwerp" and first.SeriesDescription == "synthetic-001"
    # SDICOS requires an OOI ID: its placeholder, never a real identifier.
    assert first.PatientID == "unknown"
    for keyword in ("PatientName", "PatientBirthDate", "ReferringPhysicianName"):
        assert not first.get(keyword)


def test_read_fills_the_documented_meta(scan: Scan, tmp_path: Path) -> None:
    path = write_scan(scan, tmp_path / "meta.dcm", transfer_syntax=RLELossless)
    meta = read_scan(path).meta
    assert meta["path"] == str(path) and meta["format"] == "dicom"
    assert (meta["site"], meta["scan_id"]) == ("antwerp", "synthetic-001")
    assert meta["sop_class_uid"] == DICOS_DX and meta["modality"] == "DX"
    assert meta["spacing_source"] == "PixelSpacing"
    # DICOS DX requires the identity modality LUT: LOG's scale is a real world value mapping.
    assert meta["bits_stored"] == 16 and meta["full_scale"] == 65535
    assert (meta["rescale_slope"], meta["rescale_intercept"]) == (1.0, 0.0)
    assert meta["assumptions"] == [] and meta["open_beam"]["method"] == "estimate"
    assert read_scan(path, site="rotterdam").meta["site"] == "rotterdam"


def test_spacing_falls_back_to_the_argument_only_when_the_file_has_none(
    scan: Scan, tmp_path: Path
) -> None:
    path = write_scan(scan, tmp_path / "x.dcm")
    assert read_scan(path, spacing_mm=(9.0, 9.0)).spacing_mm == scan.spacing_mm
    _strip(path, "PixelSpacing")
    assert read_scan(path).meta["spacing_source"] == "ImagerPixelSpacing"
    _strip(path, "ImagerPixelSpacing")
    with pytest.raises(ScanReadError, match="spacing_mm"):
        read_scan(path)
    fallback = read_scan(path, spacing_mm=4.0)
    assert fallback.spacing_mm == (4.0, 4.0) and fallback.meta["spacing_source"] == "argument"


def test_dicom_without_suffix_is_recognised_by_its_preamble(scan: Scan, tmp_path: Path) -> None:
    path = write_scan(scan, tmp_path / "scan.dcm")
    bare = path.rename(tmp_path / "scan-without-suffix")
    assert read_scan(bare).meta["format"] == "dicom"


def test_jpeg_ls_decodes_in_the_default_install(tmp_path: Path) -> None:
    """pydicom's own JPEG-LS test file, decoded by python-gdcm (BSD/Apache), not the GPL extra."""
    assert "gdcm" in get_decoder(JPEGLSLossless).available_plugins
    paths = {}
    for name in ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm"):
        source = pydicom.dcmread(get_testdata_files(name)[0])
        source.Modality = "DX"
        paths[name] = tmp_path / name
        source.save_as(paths[name])
    with pytest.warns(ScanAssumptionWarning):  # an MR file says nothing of intensity
        compressed = read_scan(paths["MR_small_jpeg_ls_lossless.dcm"], spacing_mm=1.0)
        plain = read_scan(paths["MR_small.dcm"], spacing_mm=1.0)
    assert compressed.attenuation.shape == (1, 64, 64)
    assert np.array_equal(compressed.attenuation, plain.attenuation)


# --- TIFF, PNG, .npy ----------------------------------------------------------


def test_tiff_round_trip_is_one_16_bit_page_per_channel(scan: Scan, tmp_path: Path) -> None:
    path = write_scan(scan, tmp_path / "scan.tif")
    with tifffile.TiffFile(path) as tiff:
        assert [page.dtype for page in tiff.pages] == [np.uint16, np.uint16]
    read = read_scan(path, spacing_mm=scan.spacing_mm)
    assert read.channels == ["high", "low"] and read.spacing_mm == scan.spacing_mm
    assert read.meta["format"] == "tiff" and read.meta["encoding"] == "LIN"
    assert np.all(np.abs(read.attenuation - scan.attenuation) <= lin_tolerance(scan.attenuation))


def test_png_round_trip(tmp_path: Path) -> None:
    single = synthetic_scan(channels=1)
    path = write_scan(single, tmp_path / "scan.png")
    assert Image.open(path).mode.startswith("I")
    read = read_scan(path, spacing_mm=single.spacing_mm)
    assert read.channels == ["high"] and read.spacing_mm == single.spacing_mm
    assert np.all(
        np.abs(read.attenuation - single.attenuation) <= lin_tolerance(single.attenuation)
    )


@pytest.mark.parametrize("suffix", [".tif", ".png", ".npy"])
def test_formats_without_spacing_say_how_to_give_it(suffix: str, tmp_path: Path) -> None:
    path = write_scan(synthetic_scan(channels=1), tmp_path / f"scan{suffix}")
    with pytest.raises(ScanReadError, match=r"no pixel spacing: pass spacing_mm"):
        read_scan(path)


def test_float_tiff_holds_attenuation(scan: Scan, tmp_path: Path) -> None:
    path = tmp_path / "float.tif"
    tifffile.imwrite(path, scan.attenuation)
    read = read_scan(path, spacing_mm=1.0)
    assert read.meta["encoding"] == "ATTENUATION"
    np.testing.assert_array_equal(read.attenuation, scan.attenuation)


@pytest.mark.parametrize("two_dimensional", [False, True])
def test_npy_round_trip(scan: Scan, two_dimensional: bool, tmp_path: Path) -> None:
    path = tmp_path / "scan.npy"
    if two_dimensional:
        np.save(path, scan.attenuation[0])
    else:
        write_scan(scan, path)
    read = read_scan(path, spacing_mm=scan.spacing_mm)
    expected = scan.attenuation[:1] if two_dimensional else scan.attenuation
    np.testing.assert_array_equal(read.attenuation, expected)


def test_attenuation_below_zero_is_clipped_to_air(tmp_path: Path) -> None:
    path = tmp_path / "noisy-air.npy"
    np.save(path, np.array([[[-0.01, 0.0, 0.5]]], np.float32))
    read = read_scan(path, spacing_mm=1.0)
    np.testing.assert_array_equal(read.attenuation, [[[0.0, 0.0, 0.5]]])


# --- writing -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("x.dcm", {"encoding": "SQRT"}, "encoding"),
        ("x.dcm", {"transfer_syntax": "1.2.840.10008.1.2.4.50"}, "lossless"),
        ("x.dcm", {"bits": 20}, "bits"),
        ("x.tif", {"encoding": "LOG"}, "LIN"),
        ("x.tif", {"photometric": "MONOCHROME1"}, "DICOM files only"),
        ("x.png", {}, "one channel"),
        ("x.jpg", {}, "supported suffixes"),
    ],
)
def test_write_scan_rejects_what_it_cannot_write(
    scan: Scan, name: str, options: dict, message: str, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match=message):
        write_scan(scan, tmp_path / name, **options)
    assert os.listdir(tmp_path) == []


def test_scan_read_error_survives_pickling(tmp_path: Path) -> None:
    """Batch scoring hands errors between processes."""
    error = ScanReadError(tmp_path / "x.dcm", "truncated")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.path, copy.reason, str(copy)) == (error.path, error.reason, str(error))
    assert isinstance(copy, ValueError)


# --- pydicom's own test files -------------------------------------------------

PYDICOM_FILES = sorted(path for path in get_testdata_files() if os.path.isfile(path))


def test_pydicom_test_files_are_present() -> None:
    assert len(PYDICOM_FILES) > 100
    assert SUPPORTED_SUFFIXES[0] == ".dcm"


@pytest.mark.parametrize("path", PYDICOM_FILES, ids=[Path(p).name for p in PYDICOM_FILES])
def test_pydicom_test_file_reads_or_raises_scan_read_error(path: str) -> None:
    try:
        read = read_scan(path, spacing_mm=1.0, max_bytes=64 * 2**20)
    except ScanReadError as error:
        assert error.reason
        return
    assert read.attenuation.dtype == np.float32 and read.attenuation.ndim == 3
    assert np.all(np.isfinite(read.attenuation)) and read.attenuation.min() >= 0.0


def test_pydicom_encodings_of_one_image_read_back_the_same(tmp_path: Path) -> None:
    """MR_small in six transfer syntaxes, relabelled as a projection image so it reads."""
    names = [
        "MR_small.dcm",
        "MR_small_implicit.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_expb.dcm",
        "MR_small_RLE.dcm",
        "MR_small_jp2klossless.dcm",
    ]
    attenuations = []
    for name in names:
        dataset = pydicom.dcmread(get_testdata_files(name)[0])
        dataset.Modality = "DX"
        dataset.save_as(tmp_path / name)
        attenuations.append(read_scan(tmp_path / name).attenuation)
    for attenuation in attenuations[1:]:
        np.testing.assert_array_equal(attenuation, attenuations[0])
