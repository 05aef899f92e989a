"""Files for the scanml.io tests: a synthetic scan, and a corpus of broken files.

Everything is generated on disk with the real writers or byte by byte, so
the tests exercise the readers on real files rather than on mocks.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import tifffile
from PIL import Image
from pydicom.uid import RLELossless

from scanml.io import Scan, write_scan


def synthetic_scan(channels: int = 2, height: int = 96, width: int = 160, seed: int = 0) -> Scan:
    """A small container-like scan: walls, cargo blocks, a dense block and noise.

    Attenuation stays below 9 so that 16-bit LIN files (whose floor is
    ln 65535 = 11.1) still resolve it; the low-energy channel attenuates more.
    """
    rng = np.random.default_rng(seed)
    attenuation = np.zeros((height, width), np.float32)
    attenuation[8:-8, 4:-4] += 0.4  # container walls
    attenuation[20:70, 20:60] += 1.5  # cargo
    attenuation[30:50, 90:140] += 3.0  # denser cargo
    attenuation[60:80, 100:120] += 8.0  # nearly impenetrable block
    stack = np.stack([attenuation * (1.0 + 0.25 * index) for index in range(channels)])
    stack += rng.normal(0.0, 0.01, stack.shape).astype(np.float32)
    stack = np.clip(stack, 0.0, None).astype(np.float32)
    names = ["high", "low"][:channels]
    return Scan(stack, (2.5, 5.0), names, {"site": "antwerp", "scan_id": "synthetic-001"})


def lin_tolerance(attenuation: np.ndarray, full_scale: int = 65535) -> np.ndarray:
    """Half a count of transmission, in attenuation, plus float32 rounding.

    Rounding ``c = T * full_scale`` moves A by at most ``ln(c / (c - 1/2))``;
    valid while c > 1/2, which ``synthetic_scan`` keeps.
    """
    counts = np.exp(-attenuation.astype(np.float64)) * full_scale
    return np.log(counts / (counts - 0.5)) + 1e-5


# --- the corpus of broken files --------------------------------------------

Maker = Callable[[Path], Path]


def _small_dicom(directory: Path, name: str = "base.dcm", **options: object) -> Path:
    return write_scan(synthetic_scan(1, 32, 48), directory / name, **options)


def _edited(
    directory: Path, name: str, edit: Callable[[pydicom.Dataset], None], **options: object
) -> Path:
    source = _small_dicom(directory, f"source-{name}", **options)
    dataset = pydicom.dcmread(source)
    edit(dataset)
    target = directory / name
    dataset.save_as(target)
    source.unlink()
    return target


def _truncated_dicom(fraction: float) -> Maker:
    def make(directory: Path) -> Path:
        source = _small_dicom(directory, f"source-{fraction}.dcm")
        data = source.read_bytes()
        source.unlink()
        target = directory / f"truncated-{fraction}.dcm"
        target.write_bytes(data[: int(len(data) * fraction)])
        return target

    return make


def _truncated_rle(directory: Path) -> Path:
    source = _small_dicom(directory, "source-rle.dcm", transfer_syntax=RLELossless)
    data = source.read_bytes()
    source.unlink()
    target = directory / "truncated-rle.dcm"
    target.write_bytes(data[: len(data) - 40])
    return target


def _huge_uncompressed(directory: Path) -> Path:
    def claim(dataset: pydicom.Dataset) -> None:
        dataset.Rows = dataset.Columns = 65535

    return _edited(directory, "huge-uncompressed.dcm", claim)


def _huge_compressed(directory: Path) -> Path:
    def claim(dataset: pydicom.Dataset) -> None:
        dataset.Rows = dataset.Columns = 65535

    return _edited(directory, "huge-rle.dcm", claim, transfer_syntax=RLELossless)


def _many_frames(directory: Path) -> Path:
    def claim(dataset: pydicom.Dataset) -> None:
        dataset.NumberOfFrames = 2_000_000

    return _edited(directory, "many-frames.dcm", claim)


def _too_few_pixel_bytes(directory: Path) -> Path:
    def cut(dataset: pydicom.Dataset) -> None:
        dataset.PixelData = dataset.PixelData[:100]

    return _edited(directory, "short-pixels.dcm", cut)


def _wrong_bits_allocated(directory: Path) -> Path:
    def bits(dataset: pydicom.Dataset) -> None:
        dataset.BitsAllocated = 12

    return _edited(directory, "bits-allocated-12.dcm", bits)


def _zero_rows(directory: Path) -> Path:
    def empty(dataset: pydicom.Dataset) -> None:
        dataset.Rows = 0

    return _edited(directory, "zero-rows.dcm", empty)


def _no_pixel_data(directory: Path) -> Path:
    def strip(dataset: pydicom.Dataset) -> None:
        del dataset.PixelData

    return _edited(directory, "no-pixels.dcm", strip)


def _colour_dicom(directory: Path) -> Path:
    def colour(dataset: pydicom.Dataset) -> None:
        dataset.PhotometricInterpretation = "RGB"
        dataset.SamplesPerPixel = 3
        dataset.PlanarConfiguration = 0

    return _edited(directory, "colour.dcm", colour)


def _display_values(directory: Path) -> Path:
    def display(dataset: pydicom.Dataset) -> None:
        dataset.PixelIntensityRelationship = "DISP"

    return _edited(directory, "disp.dcm", display)


def _zero_slope(directory: Path) -> Path:
    def flat(dataset: pydicom.Dataset) -> None:
        dataset.RescaleSlope = "0"

    return _edited(directory, "zero-slope.dcm", flat, encoding="LIN")


def _ct_without_relationship(directory: Path) -> Path:
    def ct(dataset: pydicom.Dataset) -> None:
        dataset.Modality = "CT"
        del dataset.PixelIntensityRelationship
        del dataset.PixelIntensityRelationshipSign

    return _edited(directory, "ct.dcm", ct)


def _garbage_after_preamble(directory: Path) -> Path:
    target = directory / "garbage.dcm"
    rng = np.random.default_rng(1)
    target.write_bytes(b"\0" * 128 + b"DICM" + rng.bytes(4096))
    return target


def _garbage_without_suffix(directory: Path) -> Path:
    target = directory / "garbage-no-suffix"
    target.write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 64)
    return target


def _empty(directory: Path) -> Path:
    target = directory / "empty.dcm"
    target.touch()
    return target


def _text(directory: Path) -> Path:
    target = directory / "notes.dcm"
    target.write_text("container MSCU1234567, manifest: bananas\n" * 20)
    return target


def _unsupported_suffix(directory: Path) -> Path:
    target = directory / "scan.jpg"
    target.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return target


def _directory(directory: Path) -> Path:
    target = directory / "a-folder.dcm"
    target.mkdir()
    return target


def _missing(directory: Path) -> Path:
    return directory / "does-not-exist.dcm"


def _nan_tiff(directory: Path) -> Path:
    target = directory / "nan.tif"
    values = np.ones((16, 16), np.float32)
    values[3, 4] = np.nan
    tifffile.imwrite(target, values)
    return target


def _huge_tiff(directory: Path) -> Path:
    """A TIFF whose single strip declares 100000 x 100000 16-bit pixels."""
    target = directory / "huge.tif"
    entries = [
        (256, 4, 1, 100_000),  # ImageWidth
        (257, 4, 1, 100_000),  # ImageLength
        (258, 3, 1, 16),  # BitsPerSample
        (259, 3, 1, 1),  # Compression: none
        (262, 3, 1, 1),  # PhotometricInterpretation: min-is-black
        (273, 4, 1, 8),  # StripOffsets
        (277, 3, 1, 1),  # SamplesPerPixel
        (278, 4, 1, 100_000),  # RowsPerStrip
        (279, 4, 1, 2_000_000_000),  # StripByteCounts
    ]
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        packed = struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, kind, count) + packed
    ifd += struct.pack("<I", 0)
    target.write_bytes(b"II*\0" + struct.pack("<I", 16) + b"\0" * 8 + ifd)
    return target


def _truncated_tiff(directory: Path) -> Path:
    target = directory / "truncated.tif"
    tifffile.imwrite(target, np.full((64, 64), 1000, np.uint16))
    data = target.read_bytes()
    header_end = 8 + 512  # keep the IFD, cut the pixel strip short
    target.write_bytes(data[:header_end] if len(data) > header_end else data[:-100])
    return target


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload))
    )


def _huge_png(directory: Path) -> Path:
    """A valid-looking 16-bit grey PNG declaring 100000 x 100000 pixels."""
    target = directory / "huge.png"
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 16, 0, 0, 0, 0)
    target.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\0" * 1000))
        + _png_chunk(b"IEND", b"")
    )
    return target


def _truncated_png(directory: Path) -> Path:
    target = directory / "truncated.png"
    rng = np.random.default_rng(2)
    Image.fromarray(rng.integers(0, 65535, (64, 64), dtype=np.uint16)).save(target)
    data = target.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    return target


def _colour_png(directory: Path) -> Path:
    target = directory / "colour.png"
    Image.new("RGB", (8, 8), (200, 10, 10)).save(target)
    return target


def _object_npy(directory: Path) -> Path:
    target = directory / "object.npy"
    np.save(target, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    return target


def _inf_npy(directory: Path) -> Path:
    target = directory / "inf.npy"
    values = np.zeros((1, 8, 8), np.float32)
    values[0, 1, 1] = np.inf
    np.save(target, values)
    return target


def _huge_npy(directory: Path) -> Path:
    """A header claiming 100000 x 100000 float32 values, followed by almost nothing."""
    target = directory / "huge.npy"
    with target.open("wb") as stream:
        np.lib.format.write_array_header_1_0(
            stream, {"descr": "<f4", "fortran_order": False, "shape": (100_000, 100_000)}
        )
        stream.write(b"\0" * 64)
    return target


def _truncated_npy(directory: Path) -> Path:
    target = directory / "truncated.npy"
    np.save(target, np.zeros((64, 64), np.float32))
    data = target.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    return target


def _one_dimensional_npy(directory: Path) -> Path:
    target = directory / "line.npy"
    np.save(target, np.zeros(100, np.float32))
    return target


MALFORMED: dict[str, Maker] = {
    "empty": _empty,
    "text": _text,
    "unsupported-suffix": _unsupported_suffix,
    "directory": _directory,
    "missing": _missing,
    "truncated-in-preamble": _truncated_dicom(0.05),
    "truncated-in-header": _truncated_dicom(0.15),
    "truncated-in-pixels": _truncated_dicom(0.6),
    "truncated-last-bytes": _truncated_dicom(0.995),
    "truncated-rle": _truncated_rle,
    "huge-uncompressed": _huge_uncompressed,
    "huge-compressed": _huge_compressed,
    "many-frames": _many_frames,
    "too-few-pixel-bytes": _too_few_pixel_bytes,
    "wrong-bits-allocated": _wrong_bits_allocated,
    "zero-rows": _zero_rows,
    "no-pixel-data": _no_pixel_data,
    "colour-dicom": _colour_dicom,
    "display-values": _display_values,
    "zero-rescale-slope": _zero_slope,
    "ct-without-relationship": _ct_without_relationship,
    "garbage-after-preamble": _garbage_after_preamble,
    "garbage-without-suffix": _garbage_without_suffix,
    "nan-float-tiff": _nan_tiff,
    "huge-tiff": _huge_tiff,
    "truncated-tiff": _truncated_tiff,
    "huge-png": _huge_png,
    "truncated-png": _truncated_png,
    "colour-png": _colour_png,
    "object-npy": _object_npy,
    "inf-npy": _inf_npy,
    "huge-npy": _huge_npy,
    "truncated-npy": _truncated_npy,
    "one-dimensional-npy": _one_dimensional_npy,
}
