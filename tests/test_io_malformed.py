"""Hostile and broken files: each one raises ScanReadError, quickly, in bounded memory."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest

from io_fixtures import MALFORMED
from scanml.io import SUPPORTED_SUFFIXES, ScanReadError, read_scan

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
    script = """
import json, resource, sys
from scanml.io import ScanReadError, read_scan
paths = json.loads(sys.stdin.read())
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
failures = 0
for path in paths:
    try:
        read_scan(path, spacing_mm=1.0)
    except ScanReadError:
        failures += 1
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"growth_kib": after - before, "failures": failures}))
"""
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
    assert report["growth_kib"] * 1024 < MEMORY_LIMIT_BYTES


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
