"""``.npy`` arrays of attenuation, [C, H, W] or [H, W].

The header is parsed on its own first, so a hostile shape or an object
dtype (which would need pickle) is refused before any data is mapped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.lib import format as npy_format

from scanml.io.errors import ScanReadError, check_declared_size, check_file_size
from scanml.io.scan import DecodedImage, Scan


def read_npy(path: Path, *, max_bytes: int) -> DecodedImage:
    """Attenuation straight from the array, after checking its header."""
    check_file_size(path, max_bytes)
    with path.open("rb") as stream:
        version = npy_format.read_magic(stream)
        if version == (1, 0):
            shape, _, dtype = npy_format.read_array_header_1_0(stream)
        else:
            shape, _, dtype = npy_format.read_array_header_2_0(stream)
    if dtype.hasobject or dtype.kind not in "fiu" or dtype.fields is not None:
        raise ScanReadError(path, f"array of dtype {dtype}: expected a real number type")
    if len(shape) not in (2, 3):
        raise ScanReadError(path, f"array of shape {shape}: expected [C, H, W] or [H, W]")
    check_declared_size(path, shape, max(dtype.itemsize, 4), max_bytes)
    mapped = np.load(path, mmap_mode="r", allow_pickle=False)
    attenuation = np.array(mapped, dtype=np.float32, ndmin=3)
    return DecodedImage(attenuation, None, None, {"format": "npy", "encoding": "ATTENUATION"})


def write_npy(scan: Scan, path: Path) -> None:
    """Float32 attenuation [C, H, W]; spacing and channel names are not kept."""
    with path.open("wb") as stream:
        np.save(stream, np.asarray(scan.attenuation, dtype=np.float32), allow_pickle=False)
