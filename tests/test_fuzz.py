"""A seeded mutation fuzzer over real scan files: every outcome is a Scan or a ScanReadError.

Bases: simulated DICOS scans in each transfer syntax scanml writes, pydicom's
own grayscale test files (relabelled as DX so their pixels get decoded),
and 16-bit PNG and TIFF exports. Each mutant flips bits, overwrites header
fields with extreme values, truncates, inserts or repeats bytes. A fresh
process reads them all in order and reports each outcome; a crash of that
process (a segfault, an abort) names the mutant it was reading. Peak
resident memory of the whole run bounds that of every file.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels import get_encoder
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    JPEG2000Lossless,
    RLELossless,
)

from hostile_files import OWN_MEMORY_SOURCE
from scanml.io import Scan, write_scan

MUTANTS = 1200
SEED = 20261201
PEAK_RSS_LIMIT_BYTES = 1 << 30
SECONDS_PER_FILE = 10.0
_PYDICOM_FILES = (
    "CT_small.dcm",
    "MR_small.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "JPEG2000.dcm",
    "693_J2KI.dcm",
)

_READ_ALL = (
    OWN_MEMORY_SOURCE
    + """
import json, sys, time
from scanml.io import Scan, ScanReadError, read_scan
paths = json.loads(sys.stdin.read())
slowest = 0.0
for index, path in enumerate(paths):
    print(f"reading {index} {path}", file=sys.stderr, flush=True)
    started = time.perf_counter()
    try:
        outcome = "scan" if isinstance(read_scan(path, spacing_mm=1.0), Scan) else "other"
    except ScanReadError:
        outcome = "error"
    except BaseException as exc:
        outcome = f"escaped {type(exc).__name__}: {exc}"[:300]
    slowest = max(slowest, time.perf_counter() - started)
    print(json.dumps({"index": index, "outcome": outcome}), flush=True)
print(json.dumps({"peak_rss_bytes": own_peak_rss_bytes(), "slowest_s": slowest}), flush=True)
"""
)


@pytest.mark.slow
def test_every_mutant_reads_as_a_scan_or_a_scan_read_error(tmp_path: Path) -> None:
    bases = _bases(tmp_path / "bases")
    mutants = _mutants(bases, tmp_path / "mutants", MUTANTS, SEED)
    reader = subprocess.run(
        [sys.executable, "-c", _READ_ALL],
        input=json.dumps([str(path) for path in mutants]),
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = [json.loads(line) for line in reader.stdout.splitlines() if line.startswith("{")]
    outcomes = [line["outcome"] for line in lines if "outcome" in line]
    last = reader.stderr.strip().splitlines()[-1:] if reader.returncode else []
    assert reader.returncode == 0, f"the reader died ({reader.returncode}) at: {last}"
    assert len(outcomes) == len(mutants) >= 1000
    escaped = [(mutants[i].name, o) for i, o in enumerate(outcomes) if o not in ("scan", "error")]
    assert not escaped, escaped[:10]
    assert outcomes.count("error") > len(mutants) // 4  # the mutations do break files
    assert outcomes.count("scan") > 0  # and some survive them: the readers are not refusing all
    summary = lines[-1]
    assert summary["peak_rss_bytes"] < PEAK_RSS_LIMIT_BYTES, summary
    assert summary["slowest_s"] < SECONDS_PER_FILE, summary


def _bases(folder: Path) -> list[Path]:
    folder.mkdir()
    rng = np.random.default_rng(SEED)
    attenuation = rng.gamma(2.0, 0.7, size=(2, 48, 80)).astype(np.float32)
    scan = Scan(attenuation, (4.0, 5.0), ["high", "low"], {"scan_id": "base", "site": "antwerp"})
    single = Scan(attenuation[:1], (4.0, 5.0), ["high"], {"scan_id": "base-1"})
    bases = []
    for syntax in (
        ExplicitVRLittleEndian,
        DeflatedExplicitVRLittleEndian,
        RLELossless,
        JPEG2000Lossless,
        HTJ2KLossless,
    ):
        if syntax.is_encapsulated and not _can_encode(syntax):
            continue
        bases.append(
            write_scan(scan, folder / f"dual-{syntax.name[:20]}.dcm", transfer_syntax=syntax)
        )
        bases.append(
            write_scan(single, folder / f"single-{syntax.name[:20]}.dcm", transfer_syntax=syntax)
        )
    bases.append(write_scan(single, folder / "lin.dcm", encoding="LIN", photometric="MONOCHROME1"))
    bases.append(write_scan(single, folder / "export.png"))
    bases.append(write_scan(scan, folder / "export.tif"))
    for name in _PYDICOM_FILES:
        dataset = pydicom.dcmread(get_testdata_file(name))
        dataset.Modality = "DX"  # so that the reader goes on to decode the pixels
        dataset.save_as(folder / f"pydicom-{name}")
        bases.append(folder / f"pydicom-{name}")
    return bases


def _can_encode(syntax: str) -> bool:
    try:
        return get_encoder(syntax).is_available
    except NotImplementedError:  # pydicom has no encoder for it at all
        return False


def _mutants(bases: list[Path], folder: Path, count: int, seed: int) -> list[Path]:
    folder.mkdir()
    contents = [base.read_bytes() for base in bases]
    paths = []
    for index in range(count):
        rng = random.Random(seed + index)
        which = index % len(bases)
        data = bytearray(contents[which])
        for _ in range(rng.randint(1, 6)):
            data = _mutate(data, rng)
        path = folder / f"m{index:05d}-{bases[which].stem}{bases[which].suffix}"
        path.write_bytes(bytes(data))
        paths.append(path)
    return paths


def _mutate(data: bytearray, rng: random.Random) -> bytearray:
    """One mutation; positions favour the first 2 KB, where headers and lengths live."""
    if not data:
        return bytearray(rng.randbytes(rng.randint(1, 64)))
    limit = len(data) if rng.random() < 0.4 else min(len(data), 2048)
    position = rng.randrange(limit)
    kind = rng.randrange(7)
    if kind == 0:  # flip bits
        data[position] ^= 1 << rng.randrange(8)
    elif kind == 1:  # an extreme 2- or 4-byte value: a length, a size, a count
        width = rng.choice((2, 4))
        value = rng.choice((0, 1, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, rng.getrandbits(32)))
        data[position : position + width] = (value & (256**width - 1)).to_bytes(width, "little")
    elif kind == 2:  # truncate
        del data[position:]
    elif kind == 3:  # insert random bytes
        data[position:position] = rng.randbytes(rng.randint(1, 32))
    elif kind == 4:  # repeat a chunk
        end = min(len(data), position + rng.randint(1, 256))
        data[position:position] = data[position:end] * rng.randint(1, 8)
    elif kind == 5:  # zero a chunk
        end = min(len(data), position + rng.randint(1, 512))
        data[position:end] = bytes(end - position)
    else:  # overwrite random bytes
        end = min(len(data), position + rng.randint(1, 16))
        data[position:end] = rng.randbytes(end - position)
    return data
