"""The one exception that reading a scan file raises."""

from __future__ import annotations

import os
from pathlib import Path


class ScanReadError(ValueError):
    """A file could not be read as a scan.

    Readers face untrusted files (other agencies' exports, truncated
    transfers, hostile headers), and a batch scorer must turn each failure
    into one row of its table instead of dying. Every failure to read, of
    whatever origin, therefore surfaces as this single type, naming the
    file and the reason.
    """

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        super().__init__(path, reason)
        self.path = Path(path)
        self.reason = reason

    def __str__(self) -> str:
        return f"cannot read scan {str(self.path)!r}: {self.reason}"


def check_file_size(path: Path, max_bytes: int) -> None:
    """Refuse a file larger than the memory budget before reading it whole."""
    size = path.stat().st_size
    if size == 0:
        raise ScanReadError(path, "the file is empty")
    if size > max_bytes:
        raise ScanReadError(path, f"the file has {size} bytes, over the budget of {max_bytes}")


def check_declared_size(
    path: Path, shape: tuple[int, ...], bytes_per_value: int, max_bytes: int
) -> None:
    """Refuse an image whose declared size exceeds the budget, before decoding it.

    Headers are cheap to forge: a few hundred compressed bytes can declare
    65535 x 65535 pixels, and decoders allocate the declared buffer first.
    ``bytes_per_value`` is the largest per-value footprint the reader will
    hold (float32 attenuation: at least 4).
    """
    if not shape or min(shape) <= 0:
        raise ScanReadError(path, f"empty image: shape {shape}")
    needed = bytes_per_value
    for extent in shape:
        needed *= int(extent)
    if needed > max_bytes:
        dims = " x ".join(str(extent) for extent in shape)
        raise ScanReadError(
            path,
            f"the image declares {dims} values ({needed} bytes), over the budget of {max_bytes}",
        )
