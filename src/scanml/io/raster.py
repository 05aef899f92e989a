"""16-bit TIFF and PNG, the vendors' plain exports.

Integer samples are LIN transmission at the full scale of their type
(``T = value / 65535`` for 16 bits), since that is what scanners export;
float TIFF samples are attenuation already, like ``.npy``. Neither format
carries a trustworthy pixel spacing (TIFF resolution tags default to 72 dpi),
so the caller supplies it. A TIFF holds one page per energy channel.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from scanml.io.errors import ScanReadError, check_declared_size, check_file_size
from scanml.io.scan import DecodedImage, Scan

# More pages than this is a stack or a hostile file, not energy channels.
MAX_TIFF_PAGES = 8

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# Pillow modes of single-channel PNGs, with the full scale of their samples.
PNG_FULL_SCALE = {"L": 255, "I;16": 65535, "I;16B": 65535, "I;16L": 65535, "I": 65535}


def read_tiff(path: Path, *, max_bytes: int) -> DecodedImage:
    """Read one page per channel, checking sizes and strip extents before decoding."""
    check_file_size(path, max_bytes)
    file_size = path.stat().st_size
    with tifffile.TiffFile(path) as tiff:
        pages = _tiff_pages(path, tiff)
        first = pages[0]
        for page in pages:
            if page.shape != first.shape or page.dtype != first.dtype or len(page.shape) != 2:
                raise ScanReadError(
                    path,
                    f"TIFF page of shape {page.shape} and type {page.dtype}: every page must be"
                    " one grey channel of the same size and type",
                )
        itemsize = first.dtype.itemsize if first.dtype is not None else 0
        check_declared_size(path, (len(pages), *first.shape), max(itemsize, 4), max_bytes)
        for page in pages:
            if any(
                offset + count > file_size
                for offset, count in zip(page.dataoffsets, page.databytecounts, strict=False)
            ):
                raise ScanReadError(
                    path, "truncated TIFF: pixel data runs past the end of the file"
                )
        samples = np.stack([page.asarray() for page in pages])
    attenuation, meta = _samples_to_attenuation(path, samples)
    return DecodedImage(attenuation, None, None, {"format": "tiff", **meta})


def read_png(path: Path, *, max_bytes: int) -> DecodedImage:
    """Read a single-channel 8- or 16-bit PNG, checking the header's size first."""
    check_file_size(path, max_bytes)
    width, height = _png_dimensions(path)
    check_declared_size(path, (1, height, width), 4, max_bytes)
    with Image.open(path, formats=["PNG"]) as image:
        if image.mode not in PNG_FULL_SCALE:
            raise ScanReadError(
                path, f"PNG mode {image.mode!r}: only single-channel grey PNGs are scans"
            )
        samples = np.asarray(image)
    if image.mode == "I":
        samples = samples.astype(np.uint16)
    attenuation, meta = _samples_to_attenuation(path, samples[np.newaxis])
    return DecodedImage(attenuation, None, None, {"format": "png", **meta})


def write_tiff(scan: Scan, path: Path) -> None:
    """16-bit LIN transmission, one deflate-compressed page per channel."""
    tifffile.imwrite(
        path,
        _transmission_counts(scan),
        photometric="minisblack",
        compression="zlib",
        metadata=None,
    )


def write_png(scan: Scan, path: Path) -> None:
    """16-bit LIN transmission; a PNG holds a single channel."""
    if len(scan.channels) != 1:
        raise ValueError(f"a PNG holds one channel, the scan has {len(scan.channels)}: use TIFF")
    Image.fromarray(_transmission_counts(scan)[0]).save(path, format="PNG")


def _png_dimensions(path: Path) -> tuple[int, int]:
    """Width and height from the IHDR chunk, which the PNG standard puts first.

    Read here rather than trusted to Pillow, whose decompression-bomb limit
    (about 179 megapixels) knows nothing of this reader's memory budget.
    """
    with path.open("rb") as stream:
        head = stream.read(24)
    if len(head) < 24 or head[:8] != PNG_SIGNATURE or head[12:16] != b"IHDR":
        raise ScanReadError(path, "not a PNG file: no PNG signature followed by IHDR")
    width, height = struct.unpack(">II", head[16:24])
    return width, height


def _tiff_pages(path: Path, tiff: tifffile.TiffFile) -> list[tifffile.TiffPage]:
    pages = []
    for page in tiff.pages:
        if len(pages) == MAX_TIFF_PAGES:
            raise ScanReadError(
                path, f"more than {MAX_TIFF_PAGES} TIFF pages: expected one page per energy"
            )
        pages.append(page)
    if not pages:
        raise ScanReadError(path, "the TIFF has no pages")
    return pages  # type: ignore[return-value]


def _samples_to_attenuation(path: Path, samples: np.ndarray) -> tuple[np.ndarray, dict]:
    """Attenuation [C, H, W] from integer transmission or float attenuation samples."""
    if samples.dtype.kind == "f":
        return samples.astype(np.float32), {"encoding": "ATTENUATION"}
    if samples.dtype not in (np.uint8, np.uint16):
        raise ScanReadError(
            path, f"samples of type {samples.dtype}: expected uint8, uint16 or float"
        )
    full_scale = np.iinfo(samples.dtype).max
    transmission = samples.astype(np.float32)
    transmission /= np.float32(full_scale)
    np.clip(transmission, 1.0 / full_scale, 1.0, out=transmission)
    attenuation = np.log(transmission, out=transmission)
    np.negative(attenuation, out=attenuation)
    return attenuation, {"encoding": "LIN", "sign": 1, "full_scale": float(full_scale)}


def _transmission_counts(scan: Scan) -> np.ndarray:
    transmission = np.exp(-np.clip(scan.attenuation, 0.0, None, dtype=np.float64))
    return np.rint(transmission * 65535).astype(np.uint16)
