"""Hostile and broken files: each one raises ScanReadError, quickly, in bounded memory."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pydicom
import pytest

from hostile_files import (
    OWN_MEMORY_SOURCE,
    deflate_bomb,
    element_bomb,
    j2k_size_lie,
    rle_panic,
    small_scan,
    spacing_edit,
)
from io_fixtures import MALFORMED
from scanml.io import SUPPORTED_SUFFIXES, ScanReadError, read_scan, write_scan

MEMORY_LIMIT_BYTES = 200 * 2**20
SECONDS_PER_FILE = 5.0


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_file_raises_scan_read_error(case: str, tmp_path: Path) -> None:
    path = MALFORMED[case](tmp_path)
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(ScanReadError) as raised:
            read_scan(path, spacing_mm=1.0)
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    error = raised.value
    assert error.path == path
    assert error.reason
    assert path.name in str(error) and error.reason in str(error)
    assert elapsed < SECONDS_PER_FILE, f"{case} took {elapsed:.1f} s"
    assert peak < MEMORY_LIMIT_BYTES, f"{case} allocated {peak / 2**20:.0f} MiB"


def test_malformed_corpus_keeps_peak_rss_bounded(tmp_path: Path) -> None:
    """Peak resident memory of a fresh process reading the whole corpus.

    tracemalloc sees only allocations made through Python and numpy; the
    resident set also counts decoders' C buffers.
    """
    paths = [str(make(tmp_path)) for make in MALFORMED.values()]
    script = (
        OWN_MEMORY_SOURCE
        + """
import json, sys
from scanml.io import ScanReadError, read_scan
paths = json.loads(sys.stdin.read())
before = own_rss_bytes()
failures = 0
for path in paths:
    try:
        read_scan(path, spacing_mm=1.0)
    except ScanReadError:
        failures += 1
print(json.dumps({"growth_bytes": own_peak_rss_bytes() - before, "failures": failures}))
"""
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        input=json.dumps(paths),
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["failures"] == len(paths)
    assert report["growth_bytes"] < MEMORY_LIMIT_BYTES, report


def test_unsupported_suffix_lists_what_is_supported(tmp_path: Path) -> None:
    path = MALFORMED["unsupported-suffix"](tmp_path)
    with pytest.raises(ScanReadError) as raised:
        read_scan(path)
    assert all(suffix in raised.value.reason for suffix in SUPPORTED_SUFFIXES)


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("huge-compressed", "65535 x 65535"),
        ("huge-png", "100000 x 100000"),
        ("huge-npy", "100000 x 100000"),
        ("no-pixel-data", "not an image"),
        ("nan-float-tiff", "NaN"),
        ("object-npy", "dtype object"),
        ("directory", "directory"),
        ("missing", "no such file"),
        ("empty", "empty"),
    ],
)
def test_reason_says_what_is_wrong(case: str, words: str, tmp_path: Path) -> None:
    with pytest.raises(ScanReadError) as raised:
        read_scan(MALFORMED[case](tmp_path), spacing_mm=1.0)
    assert words in raised.value.reason


def test_huge_declared_image_is_refused_against_a_small_budget(tmp_path: Path) -> None:
    path = MALFORMED["huge-uncompressed"](tmp_path)
    with pytest.raises(ScanReadError, match="over the budget of 1000000"):
        read_scan(path, max_bytes=1_000_000)


# -- reading budgets checked before allocation (issue 9) ------------------------------------

_READ_ONE = (
    OWN_MEMORY_SOURCE
    + """
import json, sys, time
from scanml.io import ScanReadError, read_scan
before = own_rss_bytes()
started = time.perf_counter()
try:
    read_scan(sys.argv[1])
    reason = None
except ScanReadError as exc:
    reason = exc.reason
peak = own_peak_rss_bytes()
print(json.dumps({"reason": reason, "peak_bytes": peak, "growth_bytes": peak - before,
                  "seconds": time.perf_counter() - started}))
"""
)


def _read_in_fresh_process(path: Path) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", _READ_ONE, str(path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_1_mb_deflate_bomb_is_refused_in_under_300_mb(tmp_path: Path) -> None:
    bomb = deflate_bomb(tmp_path)
    assert bomb.stat().st_size < 1_200_000
    report = _read_in_fresh_process(bomb)
    assert "the deflated dataset inflates to more than 1073741824 bytes" in report["reason"]
    assert report["peak_bytes"] < 300 * 2**20, report


def test_a_jpeg_2000_codestream_larger_than_the_dicom_header_is_refused_unread(
    tmp_path: Path,
) -> None:
    path = j2k_size_lie(tmp_path)
    tracemalloc.start()
    try:
        with pytest.raises(ScanReadError) as raised:
            read_scan(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "codestream declares 16000 x 16000 pixels but the DICOM header 64 x 64" in str(
        raised.value
    )
    assert path.stat().st_size < 10_000 and peak < 20 * 2**20


def test_a_million_empty_elements_are_refused_quickly(tmp_path: Path) -> None:
    path = element_bomb(tmp_path)
    started = time.perf_counter()
    with pytest.raises(ScanReadError, match="more than 50000 data elements"):
        read_scan(path)
    assert time.perf_counter() - started < SECONDS_PER_FILE


def test_element_count_includes_nested_sequences_and_skips_pixel_fragments(tmp_path: Path) -> None:
    """A real scan passes; its count is what pydicom sees, and compressed fragments are no elements."""
    from pydicom.uid import RLELossless

    from scanml.io.budget import check_element_count

    path = write_scan(small_scan(), tmp_path / "rle.dcm", transfer_syntax=RLELossless)
    dataset = pydicom.dcmread(path)
    data = path.read_bytes()
    start = 132 + 12 + int.from_bytes(data[140:144], "little")
    counted = check_element_count(path, data[start:], implicit=False, little_endian=True)
    assert counted == sum(1 for _ in dataset.iterall())
    assert read_scan(path).attenuation.shape == (1, 64, 64)


def test_a_decoder_panic_becomes_a_scan_read_error(tmp_path: Path) -> None:
    with pytest.raises(ScanReadError, match="the decoder panicked"):
        read_scan(rle_panic(tmp_path))


@pytest.mark.parametrize("spacing", ["64", "1e-300", "1e308", "0.001"])
def test_implausible_pixel_spacing_is_refused(spacing: str, tmp_path: Path) -> None:
    path = spacing_edit(tmp_path, spacing, "scan.dcm", (64, 64))
    with pytest.raises(ScanReadError, match=r"outside the plausible range of 0\.01 to 50 mm"):
        read_scan(path)
    np.save(tmp_path / "plain.npy", np.ones((1, 8, 8), np.float32))
    with pytest.raises(ScanReadError, match=r"spacing_mm 1e-06 x 1e-06 mm is outside"):
        read_scan(tmp_path / "plain.npy", spacing_mm=1e-6)
