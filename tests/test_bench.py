"""`scanml bench --quick` runs every section end to end and writes its report (no timing asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scanml.bench import run_benchmarks


@pytest.mark.slow
def test_quick_benchmark_writes_every_section(tmp_path: Path, mlflow_uri: str) -> None:
    path = run_benchmarks(tmp_path / "reports", quick=True)
    rows = json.loads((tmp_path / "reports" / "benchmark.json").read_text())["rows"]
    sections = {row[0] for row in rows}
    assert {
        "machine",
        "simulator",
        "read_scan",
        "loader vs model",
        "inference",
        "scanml score",
    } <= sections
    assert all(row[2] == row[2] and row[2] > 0 for row in rows)  # measured, positive, not NaN
    assert "| inference | speed-up whole/sliding, 40 ft |" in path.read_text()
