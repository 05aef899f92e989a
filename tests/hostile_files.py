"""Crafted files that once broke a scoring job or blew its memory, built byte by byte.

Each maker writes one real file whose header or stream lies the way an
attacker's (or a broken exporter's) would; the tests read them through the
real readers and the real scoring job.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pydicom
from pydicom.encaps import encapsulate
from pydicom.uid import DeflatedExplicitVRLittleEndian, JPEG2000Lossless, RLELossless

from scanml.io import Scan, write_scan

# Source text for child processes that measure their own memory. A process
# started with subprocess inherits the parent's ru_maxrss across execve on
# Linux, so inside a multi-GB pytest run ru_maxrss reports the test runner's
# peak, not the reader's. VmHWM and VmRSS in /proc/self/status are the
# child's own.
OWN_MEMORY_SOURCE = """
def _status_kib(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field + " not in /proc/self/status")

def own_peak_rss_bytes():
    return _status_kib("VmHWM") * 1024

def own_rss_bytes():
    return _status_kib("VmRSS") * 1024
"""


def small_scan(height: int = 64, width: int = 64, seed: int = 0) -> Scan:
    rng = np.random.default_rng(seed)
    attenuation = rng.gamma(2.0, 0.5, size=(1, height, width)).astype(np.float32)
    return Scan(attenuation, (4.0, 4.0), ["high"], {"scan_id": f"s{seed}", "site": "antwerp"})


def rle_panic(directory: Path, name: str = "rle-panic.dcm") -> Path:
    """A 16-bit RLE frame whose literal run overruns the frame: the compiled decoder panics.

    pylibjpeg-rle raises ``pyo3_runtime.PanicException``, a BaseException
    that passes ``except Exception``; about 1.2 KB on disk.
    """
    source = write_scan(small_scan(8, 8), directory / f"source-{name}", transfer_syntax=RLELossless)
    dataset = pydicom.dcmread(source)
    source.unlink()
    segment = bytes([127]) + b"\x02" * 128  # a 128-byte literal run for a 4-byte segment
    header = struct.pack("<16L", 2, 64, 64 + len(segment), *([0] * 13))
    dataset.PixelData = encapsulate([header + segment + segment])
    dataset.NumberOfFrames = 1
    dataset.Rows = dataset.Columns = 2
    target = directory / name
    dataset.save_as(target)
    return target


def deflate_bomb(directory: Path, inflated_bytes: int = 1_100_000_000) -> Path:
    """A deflated-syntax file of about 1 MB whose dataset inflates to ``inflated_bytes``.

    A valid file meta header, then one raw deflate stream: a real small
    dataset followed by an OB private element of zeros as long as wanted.
    """
    source = write_scan(small_scan(), directory / "source-bomb.dcm")
    dataset = pydicom.dcmread(source)
    source.unlink()
    dataset.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    target = directory / "deflate-bomb.dcm"
    dataset.save_as(target, enforce_file_format=True)
    data = target.read_bytes()
    meta_end = _meta_end(data)
    body = zlib.decompress(data[meta_end:], -zlib.MAX_WBITS)
    padding = inflated_bytes - len(body)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    # then a private OB element of zeros, as long as wanted
    element = struct.pack("<HH2sHL", 0x0009, 0x1000, b"OB", 0, padding)
    parts = [compressor.compress(body + element), compressor.flush(zlib.Z_FULL_FLUSH)]
    # After a full flush a block depends on nothing before it: compress 16 MiB of
    # zeros once and repeat the bytes, instead of compressing a gigabyte.
    chunk = 1 << 24
    block = compressor.compress(bytes(chunk)) + compressor.flush(zlib.Z_FULL_FLUSH)
    parts.append(block * (padding // chunk))
    parts.append(compressor.compress(bytes(padding % chunk)) + compressor.flush())
    target.write_bytes(data[:meta_end] + b"".join(parts))
    return target


def j2k_size_lie(directory: Path, claimed: int = 16000) -> Path:
    """A JPEG 2000 file whose DICOM header says 64 x 64 and codestream ``claimed`` x ``claimed``."""
    source = write_scan(
        small_scan(), directory / "source-j2k.dcm", transfer_syntax=JPEG2000Lossless
    )
    dataset = pydicom.dcmread(source)
    source.unlink()
    fragments = [
        bytearray(fragment) for fragment in pydicom.encaps.generate_fragments(dataset.PixelData)
    ][1:]
    frame = fragments[0]
    start = bytes(frame).find(b"\xff\x4f\xff\x51")
    struct.pack_into(">2L", frame, start + 8, claimed, claimed)  # Xsiz, Ysiz
    dataset.PixelData = encapsulate([bytes(b"".join(fragments))])
    target = directory / "j2k-size-lie.dcm"
    dataset.save_as(target)
    return target


def element_bomb(directory: Path, elements: int = 1_000_000) -> Path:
    """An explicit-VR file with ``elements`` empty private elements after its meta (~8 MB)."""
    source = write_scan(small_scan(), directory / "source-elements.dcm")
    data = source.read_bytes()
    source.unlink()
    meta_end = _meta_end(data)
    block = struct.pack("<HH2sH", 0x0009, 0x1000, b"LO", 0) * elements
    target = directory / "element-bomb.dcm"
    target.write_bytes(data[:meta_end] + block + data[meta_end:])
    return target


def spacing_edit(directory: Path, spacing_mm: str, name: str, shape: tuple[int, int]) -> Path:
    """A valid scan of ``shape`` pixels whose PixelSpacing alone is changed to ``spacing_mm``."""
    path = write_scan(small_scan(*shape), directory / f"source-{name}")
    dataset = pydicom.dcmread(path)
    path.unlink()
    dataset.PixelSpacing = [spacing_mm, spacing_mm]
    dataset.ImagerPixelSpacing = [spacing_mm, spacing_mm]
    target = directory / name
    dataset.save_as(target)
    return target


def _meta_end(data: bytes) -> int:
    """The offset where the dataset starts: after the preamble and the file meta group."""
    group_length = struct.unpack_from("<L", data, 132 + 8)[0]
    return 132 + 12 + group_length
