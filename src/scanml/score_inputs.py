"""What a scoring job reads: folders, globs and manifests turned into a list of files.

Manifest paths are confined to the manifest's folder by default: a manifest
arrives with the scans, from a partner or an upload, and must not make the
job read ``/etc/shadow`` or climb out with ``../``. A path outside is not
even looked at (so the error cannot tell whether it exists); it becomes an
error row, unless the job allows outside paths. Rows that repeat a path are
reported, and the path is scored once.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from scanml.dataset import DataError, manifest_spacing, manifest_text, read_manifest_table
from scanml.io import SUPPORTED_SUFFIXES, is_energy_partner

__all__ = ["InputItem", "ResolvedInputs", "resolve_inputs", "resolve_job_inputs"]

_GLOB_CHARACTERS = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class InputItem:
    """One file to score, with what a manifest may say about it.

    ``refusal`` says why the file is not to be opened (a manifest path
    outside the manifest's folder); the job then writes it as an error row.
    """

    path: Path  # absolute
    scan_id: str  # the manifest's, else the file name without its suffix
    spacing_mm: tuple[float, float] | None = None  # (row, column), for files without spacing
    site: str | None = None
    refusal: str | None = None


@dataclass
class ResolvedInputs:
    """The files of a job, each once, and the manifest rows that repeated one."""

    items: list[InputItem]
    duplicates: list[str] = field(default_factory=list)  # "manifest.csv row 7: path"


def resolve_inputs(
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    allow_outside: bool = False,
) -> list[InputItem]:
    """The files to score, in a stable order, each once.

    Each input is a folder (every file with a supported suffix below it,
    sorted by path), a manifest ``.csv`` (its ``path`` column, relative to
    the manifest and inside its folder unless ``allow_outside``, with
    ``scan_id``, ``site`` and ``row_spacing_mm`` / ``col_spacing_mm`` or
    ``spacing_mm`` when present), a single file, or a glob (``**``
    recurses; sorted). A glob matching nothing yields nothing: an empty
    inbox is a normal day. Raises FileNotFoundError for a path that is
    neither, ValueError for a manifest without a ``path`` column.
    """
    return resolve_job_inputs(inputs, allow_outside=allow_outside).items


def resolve_job_inputs(
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    allow_outside: bool = False,
) -> ResolvedInputs:
    """:func:`resolve_inputs`, also reporting the manifest rows that repeated a path."""
    sources = [inputs] if isinstance(inputs, str | os.PathLike) else list(inputs)
    items: dict[Path, InputItem] = {}
    duplicates: list[str] = []
    for source in sources:
        for item, where in _resolve_source(source, allow_outside):
            if item.path in items:
                if where is not None:
                    duplicates.append(f"{where}: {item.path}")
                continue
            items[item.path] = item
    return ResolvedInputs(list(items.values()), duplicates)


def _resolve_source(
    source: str | os.PathLike[str], allow_outside: bool
) -> list[tuple[InputItem, str | None]]:
    path = Path(source).expanduser()
    if path.is_dir():
        files = (
            p
            for p in path.rglob("*")
            if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES and not is_energy_partner(p)
        )
        return [(file_item(Path(os.path.abspath(p))), None) for p in sorted(files)]
    if path.is_file() and path.suffix.lower() == ".csv":
        return _manifest_items(path, allow_outside)
    if path.is_file():
        return [(file_item(Path(os.path.abspath(path))), None)]
    if _GLOB_CHARACTERS.search(str(path)):
        matches = sorted(Path(os.path.abspath(p)) for p in glob.glob(str(path), recursive=True))
        return [(file_item(match), None) for match in matches if match.is_file()]
    raise FileNotFoundError(f"{source}: no such file or folder, and not a glob")


def file_item(path: Path) -> InputItem:
    return InputItem(path=path, scan_id=path.stem)


def _manifest_items(manifest: Path, allow_outside: bool) -> list[tuple[InputItem, str | None]]:
    """One item per manifest row; paths are relative to the manifest's folder and stay inside it.

    The manifest is read as training reads it (:func:`scanml.dataset.read_manifest_table`);
    a job needs only its ``path`` column.
    """
    try:
        table = read_manifest_table(manifest)
    except DataError as exc:
        raise ValueError(exc.problems[0]) from None
    if "path" not in table.columns:
        raise ValueError(
            f"{manifest}: a manifest needs a 'path' column; it has {list(table.columns)}"
        )
    folder = manifest.parent
    inside = Path(os.path.realpath(folder))
    items = []
    for number, record in enumerate(table.to_dict("records"), start=2):  # row 1 is the header
        where = f"{manifest.name} row {number}"
        written = manifest_text(record.get("path"))
        if not written:
            raise ValueError(f"{manifest}: row {number} has an empty path")
        path = Path(os.path.abspath(folder / written))
        refusal = None
        if not allow_outside and not Path(os.path.realpath(path)).is_relative_to(inside):
            refusal = (
                f"InputRefused: {where}: path {written!r} lies outside the manifest's folder"
                f" {inside}; pass --allow-outside to score it"
            )
        spacing, problems = manifest_spacing(record, where)
        if problems:
            raise ValueError(problems[0])
        items.append(
            (
                InputItem(
                    path=path,
                    scan_id=manifest_text(record.get("scan_id")) or path.stem,
                    spacing_mm=spacing,
                    site=manifest_text(record.get("site")) or None,
                    refusal=refusal,
                ),
                where,
            )
        )
    return items
