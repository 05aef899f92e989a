"""How long read_scan takes per megapixel, by file format.

Writes one simulated-looking 16-bit single-energy scan (1500 x 2000, 3 MP)
in each format to a temporary folder, writes and reads each several times
and prints a Markdown table of the medians. Run: ``.venv/bin/python benchmarks/bench_io.py``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)

from scanml.io import Scan, read_scan, write_scan

CASES: list[tuple[str, str, dict]] = [
    ("DICOM uncompressed (LOG)", "scan.dcm", {"transfer_syntax": ExplicitVRLittleEndian}),
    ("DICOM uncompressed (LIN)", "scan-lin.dcm", {"encoding": "LIN"}),
    ("DICOM RLE (LOG)", "scan-rle.dcm", {"transfer_syntax": RLELossless}),
    ("DICOM deflate", "scan-deflate.dcm", {"transfer_syntax": DeflatedExplicitVRLittleEndian}),
    ("DICOM JPEG 2000 lossless", "scan-j2k.dcm", {"transfer_syntax": JPEG2000Lossless}),
    ("TIFF (deflate)", "scan.tif", {}),
    (".npy", "scan.npy", {}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--height", type=int, default=1500)
    parser.add_argument("--width", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    scan = container_like_scan(args.height, args.width)
    print(f"scan: {args.height} x {args.width} = {scan.megapixels:.1f} MP, 1 channel\n")
    print("| format | file MB | write ms | read ms | read ms/MP |")
    print("|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as folder:
        for label, name, options in CASES:
            path = Path(folder) / name
            write_ms = median_ms(partial(write_scan, scan, path, **options), args.repeats)
            read_ms = median_ms(partial(read_scan, path, spacing_mm=scan.spacing_mm), args.repeats)
            print(
                f"| {label} | {path.stat().st_size / 1e6:.1f} | {write_ms:.0f} | {read_ms:.0f}"
                f" | {read_ms / scan.megapixels:.1f} |"
            )


def median_ms(call: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``repeats`` calls, after one warm-up call (page cache, imports)."""
    call()
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        timings.append((time.perf_counter() - started) * 1e3)
    return statistics.median(timings)


def container_like_scan(height: int, width: int, seed: int = 0) -> Scan:
    """Walls, corrugation, cargo blocks and photon-like noise: compresses like a real scan."""
    rng = np.random.default_rng(seed)
    attenuation = np.zeros((height, width), np.float32)
    rows, columns = slice(height // 10, -height // 10), slice(width // 20, -width // 20)
    attenuation[rows, columns] = 0.4 + 0.05 * np.sin(np.arange(width)[columns] / 3.0)
    for _ in range(12):
        top, left = rng.integers(0, height // 2), rng.integers(0, width - width // 5)
        attenuation[top : top + height // 3, left : left + width // 6] += rng.uniform(0.5, 4.0)
    attenuation += rng.normal(0.0, 0.02, attenuation.shape).astype(np.float32)
    return Scan(np.clip(attenuation, 0.0, None)[np.newaxis], (5.0, 5.0), ["high"])


if __name__ == "__main__":
    main()
