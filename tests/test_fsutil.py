"""Files are written whole or not at all."""

from __future__ import annotations

from pathlib import Path

import pytest

from scanml.fsutil import write_atomically, write_bytes_atomically, write_text_atomically


def test_writes_create_folders_and_leave_no_temporary(tmp_path: Path) -> None:
    path = write_text_atomically(tmp_path / "a" / "b" / "report.md", "# report\n")
    assert path.read_text() == "# report\n"
    write_bytes_atomically(path, b"new")
    assert path.read_bytes() == b"new"
    assert sorted(p.name for p in path.parent.iterdir()) == ["report.md"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_partial(tmp_path: Path) -> None:
    path = write_text_atomically(tmp_path / "table.csv", "old\n")

    def half_then_fail(target: Path) -> None:
        target.write_text("half of the new")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(path, half_then_fail)
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]
