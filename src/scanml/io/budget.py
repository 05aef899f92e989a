"""Reading budgets checked before a decoder allocates: what a hostile header can claim.

A DICOM file's header is cheap to forge and decoders trust it: a deflated
dataset inflates to whatever its stream holds (a 1 MB file to a gigabyte),
a JPEG 2000 or JPEG codestream carries its own image size that the decoder
allocates whatever the DICOM header says, and a file of a million empty
elements costs seconds and hundreds of megabytes to parse. Each check here
reads only headers or streams through the data without keeping it, and
raises :class:`ScanReadError` naming the limit.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

from pydicom.encaps import generate_fragments
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.pixels.utils import _get_jpg_parameters
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from scanml.io.errors import ScanReadError

# A DICOS DX file holds a few hundred elements; vendors' private groups add
# hundreds more. Parsing costs about 6 microseconds and 400 bytes each.
MAX_ELEMENTS = 50_000
# Pixel spacing a projection X-ray image can plausibly have, in millimetres
# (mammography detectors ~0.05 mm, container scanners 2-10 mm). Outside it
# the spacing is a forgery or a unit error, and it would make resampling to
# the model's grid allocate without bound.
PLAUSIBLE_SPACING_MM = (0.01, 50.0)

_INFLATE_CHUNK = 16 << 20
_UNDEFINED_LENGTH = 0xFFFFFFFF
_ITEM_TAGS = {(0xFFFE, 0xE000), (0xFFFE, 0xE00D), (0xFFFE, 0xE0DD)}
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT"}
_PIXEL_DATA = (0x7FE0, 0x0010)
_J2K_SYNTAX_PREFIX = "1.2.840.10008.1.2.4.9"  # JPEG 2000 (90-93) and HTJ2K (201-203) below
_HTJ2K_SYNTAXES = {"1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"}


def check_dataset_stream(path: Path, raw: bytes, max_bytes: int) -> None:
    """Bound what parsing ``raw`` (a whole DICOM file) will cost, before pydicom parses it.

    A deflated dataset is inflated chunk by chunk and refused once it passes
    ``max_bytes``, without keeping the output; then the elements are
    counted, nested sequences included, up to :data:`MAX_ELEMENTS`. A file
    whose header cannot even be walked is left to pydicom, which refuses it.
    """
    located = _dataset_start(raw)
    if located is None:
        return
    start, syntax = located
    body = memoryview(raw)[start:]
    if syntax == DeflatedExplicitVRLittleEndian:
        check_inflated_size(path, body, max_bytes)
        body = memoryview(zlib.decompress(body, -zlib.MAX_WBITS))
    check_element_count(
        path,
        body,
        implicit=syntax == "1.2.840.10008.1.2",
        little_endian=syntax != "1.2.840.10008.1.2.2",
    )


def check_inflated_size(path: Path, deflated: bytes | memoryview, max_bytes: int) -> int:
    """The inflated size of a raw deflate stream, refused past ``max_bytes``; nothing is kept."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    inflated = 0
    pending = bytes(deflated)
    while pending:
        inflated += len(inflater.decompress(pending, _INFLATE_CHUNK))
        if inflated > max_bytes:
            raise ScanReadError(
                path,
                f"the deflated dataset inflates to more than {max_bytes} bytes"
                f" ({len(deflated)} bytes stored): over the budget",
            )
        pending = inflater.unconsumed_tail
        if inflater.eof:
            break
    return inflated


def check_element_count(
    path: Path, body: bytes | memoryview, *, implicit: bool, little_endian: bool
) -> int:
    """Count data elements (nested ones too) without parsing them; refuse past :data:`MAX_ELEMENTS`.

    Element values are skipped by their length; sequences and items of
    undefined length are walked into, so their elements count; the
    fragments of encapsulated pixel data are skipped. A length that runs
    past the end stops the walk: pydicom then reports the truncation.
    """
    order = "<" if little_endian else ">"
    header = struct.Struct(f"{order}HH")
    short_length = struct.Struct(f"{order}H")
    long_length = struct.Struct(f"{order}L")
    end = len(body)
    position = 0
    count = 0
    in_fragments = False
    while position + 8 <= end:
        group, element = header.unpack_from(body, position)
        if (group, element) in _ITEM_TAGS:
            length = long_length.unpack_from(body, position + 4)[0]
            position += 8
            if (group, element) == (0xFFFE, 0xE0DD):
                in_fragments = False
            elif in_fragments and length != _UNDEFINED_LENGTH:
                position += length  # a fragment of compressed pixels, not elements
            continue
        count += 1
        if count > MAX_ELEMENTS:
            raise ScanReadError(
                path,
                f"the file holds more than {MAX_ELEMENTS} data elements: over the parsing budget",
            )
        vr = bytes(body[position + 4 : position + 6])
        if implicit:
            length = long_length.unpack_from(body, position + 4)[0]
            position += 8
        elif vr in _LONG_VRS:
            if position + 12 > end:
                break
            length = long_length.unpack_from(body, position + 8)[0]
            position += 12
        else:
            length = short_length.unpack_from(body, position + 6)[0]
            position += 8
        if length == _UNDEFINED_LENGTH:
            in_fragments = (group, element) == _PIXEL_DATA
            continue  # walk into the sequence, or over the fragments' items
        if vr == b"SQ":
            continue  # a sequence of defined length: its items follow
        position += length
    return count


def check_codestreams(
    path: Path, pixel_data: bytes, syntax: UID, rows: int, columns: int, max_frames: int
) -> None:
    """Refuse compressed frames whose own header claims another size than the DICOM header.

    The DICOM header's Rows x Columns has passed the budget; JPEG 2000
    (from its SIZ marker) and JPEG/JPEG-LS (from SOF) decoders allocate what
    the codestream declares instead, so each frame's must match it.
    """
    reader = _j2k_size if _is_j2k(syntax) else _jpeg_size if _is_jpeg(syntax) else None
    if reader is None:
        return
    fragments = generate_fragments(pixel_data)
    next(fragments, None)  # the Basic Offset Table
    for number, fragment in enumerate(fragments):
        if number > max(MAX_ELEMENTS, max_frames):
            raise ScanReadError(path, f"the pixel data has more than {number} fragments")
        size = reader(fragment)
        if size is None:
            continue  # a continuation fragment, not the start of a frame
        if size != (rows, columns):
            raise ScanReadError(
                path,
                f"the {syntax.name} codestream declares {size[0]} x {size[1]} pixels but the"
                f" DICOM header {rows} x {columns}",
            )


def check_spacing(path: Path, spacing_mm: tuple[float, float], source: str) -> None:
    """Refuse pixel spacing outside :data:`PLAUSIBLE_SPACING_MM` (row and column)."""
    low, high = PLAUSIBLE_SPACING_MM
    if not all(low <= value <= high for value in spacing_mm):
        raise ScanReadError(
            path,
            f"{source} {spacing_mm[0]:g} x {spacing_mm[1]:g} mm is outside the plausible range"
            f" of {low:g} to {high:g} mm per pixel",
        )


def _dataset_start(raw: bytes) -> tuple[int, UID] | None:
    """Where the dataset begins after the file meta information, and its transfer syntax."""
    stream = io.BytesIO(raw)
    try:
        read_preamble(stream, force=False)
        meta = _read_file_meta_info(stream)
    except Exception:  # not walkable here: pydicom's own parse reports why
        return None
    syntax = meta.get("TransferSyntaxUID")
    return (stream.tell(), UID(str(syntax))) if syntax else None


def _is_j2k(syntax: UID) -> bool:
    return syntax.startswith(_J2K_SYNTAX_PREFIX) or syntax in _HTJ2K_SYNTAXES


def _is_jpeg(syntax: UID) -> bool:
    return syntax.startswith("1.2.840.10008.1.2.4.") and not _is_j2k(syntax)


def _j2k_size(fragment: bytes) -> tuple[int, int] | None:
    """(rows, columns) from a JPEG 2000 codestream's SIZ marker; None if no codestream starts here."""
    start = fragment.find(b"\xff\x4f\xff\x51", 0, 4096)  # SOC then SIZ, maybe after JP2 boxes
    if start < 0 or len(fragment) < start + 4 + 22:
        return None
    # SIZ: Lsiz, Rsiz (2 bytes each), then Xsiz, Ysiz, XOsiz, YOsiz (4 bytes each, big endian)
    width, height, x_offset, y_offset = struct.unpack_from(">4L", fragment, start + 8)
    return (height - y_offset, width - x_offset)


def _jpeg_size(fragment: bytes) -> tuple[int, int] | None:
    """(rows, columns) from a JPEG or JPEG-LS frame header; None if no frame starts here."""
    if not fragment.startswith(b"\xff\xd8"):
        return None
    parameters = _get_jpg_parameters(fragment[:65536])
    if "height" not in parameters:
        return None
    return (int(parameters["height"]), int(parameters["width"]))
