"""Writing files whole or not at all.

A scoring job or a training run may be killed at any moment; a reader must
then find the old file or the new one, never half of one. Every file scanml
writes for others to read goes through :func:`write_atomically`: the
content is written to a temporary name beside the target, flushed to disk,
renamed over the target, and the folder itself is flushed so that the
rename survives a power cut too.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

__all__ = ["fsync_directory", "write_atomically", "write_bytes_atomically", "write_text_atomically"]


def write_atomically(path: str | os.PathLike[str], write: Callable[[Path], object]) -> Path:
    """Call ``write(temporary_path)``, then move the result over ``path``; returns ``path``.

    The temporary file sits in the target's folder (a rename across file
    systems would not be atomic), is hidden (leading dot) and named after
    the process, so two writers never share one; it is removed when
    ``write`` fails. Missing parent folders are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        write(partial)
        with partial.open("rb") as stream:
            os.fsync(stream.fileno())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    fsync_directory(path.parent)
    return path


def write_text_atomically(path: str | os.PathLike[str], text: str) -> Path:
    """:func:`write_atomically` for a text file (UTF-8)."""
    return write_atomically(path, lambda target: target.write_text(text, encoding="utf-8"))


def write_bytes_atomically(path: str | os.PathLike[str], data: bytes) -> Path:
    """:func:`write_atomically` for a binary file."""
    return write_atomically(path, lambda target: target.write_bytes(data))


def fsync_directory(folder: str | os.PathLike[str]) -> None:
    """Make renames and removals in ``folder`` survive a power cut (a no-op where unsupported)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:  # some file systems (and Windows) refuse fsync on a folder
        pass
    finally:
        os.close(descriptor)
