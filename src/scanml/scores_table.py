"""The scores table on disk: its schema, crash-safe commits, the job lock and rerun identity.

Finished rows are committed in small batches as Parquet part files in
``<out>.parts/`` (each written to a temporary name, flushed to disk and
renamed, so a part is whole or absent). At the end the table and the parts
are merged into ``<out>`` (one row per path, the newest row winning), again
through a temporary file and a rename. A rerun first picks up any parts a
killed run left.

A row's identity is its path plus the file's *fingerprint* (size,
modification time and a hash of sampled blocks): a rerun skips a file whose
row has the same fingerprint, and scores again a file that changed, was
replaced, or reappeared after a "no such file" row.

One job at a time writes a table: an ``flock`` on ``.<out>.lock`` held for
the life of the job. The kernel drops it when the job dies, however it dies;
forked children close their copy, so a killed job's lingering decoding
workers never keep it.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from scanml.fsutil import fsync_directory, write_atomically

__all__ = [
    "REGION_TYPE",
    "SCORES_SCHEMA",
    "SCORE_COLUMNS",
    "ScoresTable",
    "TableLockedError",
    "fingerprint",
    "read_table",
]

# One region of the ``regions`` column: a box in the scan's pixels, its score and category.
REGION_TYPE = pa.struct(
    [
        ("x", pa.float64()),
        ("y", pa.float64()),
        ("w", pa.float64()),
        ("h", pa.float64()),
        ("score", pa.float64()),
        ("category", pa.string()),
    ]
)

SCORES_SCHEMA = pa.schema(
    [
        pa.field("scan_id", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),  # absolute; one row per path
        pa.field("site", pa.string()),
        pa.field("score", pa.float64()),  # null when the scan failed
        pa.field("flagged", pa.bool_()),  # score > threshold; null when the scan failed
        pa.field("threshold", pa.float64(), nullable=False),
        pa.field("regions", pa.list_(REGION_TYPE), nullable=False),  # empty when the scan failed
        pa.field("model_uri", pa.string(), nullable=False),
        pa.field("error", pa.string()),  # "Type: message"; null when the scan worked
        pa.field("height", pa.int32()),  # the scan's pixels, null when it could not be read
        pa.field("width", pa.int32()),
        pa.field("seconds", pa.float64(), nullable=False),  # decode + model + outputs
        pa.field("overlay", pa.string()),  # the overlay PNG, for flagged scans
        pa.field("tdr", pa.string()),  # the DICOS Threat Detection Report
        # Why the overlay or report could not be written; the score stands.
        pa.field("output_error", pa.string()),
        pa.field(
            "fingerprint", pa.string()
        ),  # size:mtime_ns:hash of the file scored; null if absent
        # The model version that ``model_uri`` resolved to (registry models; null for folders).
        pa.field("model_name", pa.string()),
        pa.field("model_version", pa.string()),
        pa.field("model_run_id", pa.string()),
    ]
)
"""The scores table; :func:`scanml.scoring.score` writes it."""

SCORE_COLUMNS: tuple[str, ...] = tuple(SCORES_SCHEMA.names)

_SAMPLE_BYTES = 64 << 10


class TableLockedError(RuntimeError):
    """Another scoring job holds the table."""


def fingerprint(path: Path) -> str | None:
    """``size:mtime_ns:hash`` of ``path``, hashing its first, middle and last 64 KiB; None if absent.

    Cheap on a rerun over thousands of large scans (three reads each), and
    any rewrite changes the modification time or the sampled bytes.
    """
    try:
        with path.open("rb") as stream:
            stat = os.fstat(stream.fileno())
            digest = hashlib.blake2b(digest_size=16)
            for offset in sorted(
                {
                    0,
                    max(0, stat.st_size // 2 - _SAMPLE_BYTES // 2),
                    max(0, stat.st_size - _SAMPLE_BYTES),
                }
            ):
                stream.seek(offset)
                digest.update(stream.read(_SAMPLE_BYTES))
    except OSError:
        return None
    return f"{stat.st_size}:{stat.st_mtime_ns}:{digest.hexdigest()}"


_held_lock_descriptors: set[int] = set()


def _close_locks_in_child() -> None:
    """A forked child must not share the job's lock: closing its copy keeps the parent's lock."""
    for descriptor in list(_held_lock_descriptors):
        with contextlib.suppress(OSError):
            os.close(descriptor)
    _held_lock_descriptors.clear()


os.register_at_fork(after_in_child=_close_locks_in_child)


class ScoresTable:
    """The table ``out`` plus its committed-but-not-merged parts in ``<out>.parts/``."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.parts_dir = out.with_name(f"{out.name}.parts")
        self.lock_path = out.with_name(f".{out.name}.lock")

    @classmethod
    @contextlib.contextmanager
    def open(cls, out: Path) -> Iterator[ScoresTable]:
        """Lock the table for this job, drop half-written temporaries, and unlock at the end."""
        table = cls(out)
        with table._locked():
            for partial in table.parts_dir.glob("*.partial"):
                partial.unlink()
            for partial in out.parent.glob(f".{glob.escape(out.name)}.*partial"):
                partial.unlink()
            yield table
            if table.parts_dir.exists() and not table.has_parts():
                table.parts_dir.rmdir()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold an flock on the lock file; the file is removed, still locked, at the end.

        A job that opened the file just before it was removed finds, once it
        holds the lock, that the path now names another file (or none) and
        starts over: the check that makes removing a lock file safe.
        """
        while True:
            descriptor = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(descriptor)
                raise TableLockedError(
                    f"another scoring job is writing {self.out} (it holds {self.lock_path});"
                    " wait for it to finish, or write to another --out"
                ) from None
            try:
                current = os.stat(self.lock_path)
            except FileNotFoundError:
                current = None
            if current is not None and current.st_ino == os.fstat(descriptor).st_ino:
                break
            os.close(descriptor)
        _held_lock_descriptors.add(descriptor)
        try:
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                self.lock_path.unlink()
            _held_lock_descriptors.discard(descriptor)
            os.close(descriptor)

    def rows(self, columns: Sequence[str]) -> pa.Table:
        """``columns`` of every committed row, table first, then parts in order (older first).

        A table written before a column existed reads it as nulls.
        """
        sources = ([self.out] if self.out.exists() else []) + self._parts()
        tables = [SCORES_SCHEMA.empty_table().select(list(columns))]
        for source in sources:
            table = read_table(source)
            tables.append(_conform(table).select(list(columns)))
        return pa.concat_tables(tables)

    def has_parts(self) -> bool:
        """Whether committed rows wait to be merged (this run's, or a killed run's)."""
        return bool(self._parts())

    def append(self, rows: list[dict[str, Any]]) -> None:
        """Commit ``rows`` as the next part: whole and on disk once this returns."""
        if not rows:
            return
        self.parts_dir.mkdir(exist_ok=True)
        parts = self._parts()
        number = int(parts[-1].stem.split("-")[1]) + 1 if parts else 0
        table = pa.Table.from_pylist(rows, schema=SCORES_SCHEMA)
        _write_table(table, self.parts_dir / f"part-{number:06d}.parquet")

    def merge(self, order: Sequence[str]) -> None:
        """Fold the parts into the table: one row per path (the newest), inputs' order first.

        Rows of files no longer among the inputs are kept, after the
        inputs, in their previous order.
        """
        parts = self._parts()
        combined = self.rows(SCORE_COLUMNS)
        position = {path: index for index, path in enumerate(order)}
        first_seen: dict[str, int] = {}
        newest: dict[str, int] = {}
        for row, path in enumerate(combined["path"].to_pylist()):
            first_seen.setdefault(path, row)
            newest[path] = row
        ranked = sorted(newest, key=lambda path: (position.get(path, len(order)), first_seen[path]))
        _write_table(
            combined.take(pa.array([newest[path] for path in ranked], type=pa.int64())), self.out
        )
        for part in parts:
            part.unlink()
        if self.parts_dir.exists():
            fsync_directory(self.parts_dir)

    def _parts(self) -> list[Path]:
        return sorted(self.parts_dir.glob("part-*.parquet"))


def read_table(path: Path, columns: Sequence[str] | None = None) -> pa.Table:
    """Read a Parquet file that a writer may be replacing (:func:`_write_table`) meanwhile.

    The file is opened once and read through that one handle, so the read
    sees one version whole. Given the path, pyarrow opens it more than once
    (footer, then pages), and a replace in between tears the read
    ("Unexpected end of stream"): a status reader polling a live
    ``scanml watch`` table hit that.
    """
    with path.open("rb") as stream:
        return pq.read_table(stream, columns=None if columns is None else list(columns))


def _conform(table: pa.Table) -> pa.Table:
    """A table in :data:`SCORES_SCHEMA`, with columns it predates added as nulls."""
    for field in SCORES_SCHEMA:
        if field.name not in table.column_names:
            table = table.append_column(field.name, pa.nulls(table.num_rows, field.type))
    return table.select(list(SCORE_COLUMNS)).cast(SCORES_SCHEMA)


def _write_table(table: pa.Table, path: Path) -> None:
    """Write ``table`` whole or not at all (:func:`scanml.fsutil.write_atomically`)."""
    write_atomically(path, lambda partial: pq.write_table(table, partial))
