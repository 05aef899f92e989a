"""The command line's checks of what a user typed, run before any heavy import.

Each check raises :class:`UserFacingError` with one line that names the
flag, the value and what is wrong (and, where it helps, what exists), so
that ``scanml`` can print it and exit with status 2 before minutes of work
start or an output folder, a run folder or a lock file is left behind.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from scanml.config import Config

__all__ = [
    "MODEL_HELP",
    "UserFacingError",
    "check_dataset",
    "check_inputs",
    "check_writable",
    "load_config",
]


class UserFacingError(Exception):
    """An error whose message is all the user needs (bad input, bad configuration)."""


MODEL_HELP = "runs:/RUN_ID/model, models:/NAME/VERSION, models:/NAME@ALIAS or a model folder"


def load_config(path: Path | None, overrides: Sequence[str]) -> Config:
    """The preset with ``--set`` applied; a bad key blames --set and names the nearest key."""
    from scanml.config import Config, ConfigError, parse_overrides
    from scanml.config import load_config as load

    try:
        parsed = parse_overrides(overrides)
    except ConfigError as exc:
        raise UserFacingError(f"--set: {exc}") from None
    known = set(Config().flat())
    sections = {key.split(".")[0] for key in known}
    for key in parsed:
        if key in known or any(k.startswith(f"{key}.") for k in known):
            continue
        near = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
        hint = (
            f"; did you mean {near[0]}?" if near else f"; sections: {', '.join(sorted(sections))}"
        )
        raise UserFacingError(f"--set {key}=...: no such configuration key{hint}")
    try:
        config = load(path, parsed)
    except ConfigError as exc:
        if parsed and any(key in str(exc) for key in parsed):
            raise UserFacingError(f"--set: {exc}") from None
        raise UserFacingError(str(exc)) from None
    return config


def check_dataset(folder: Path, flag: str) -> None:
    if not folder.exists():
        raise UserFacingError(f"{flag} {folder}: no such folder")
    if not folder.is_dir():
        raise UserFacingError(f"{flag} {folder}: not a folder (give the dataset's folder)")
    if not (folder / "manifest.csv").is_file():
        present = sorted(p.name for p in folder.iterdir())[:10]
        raise UserFacingError(
            f"{flag} {folder}: no manifest.csv in it (it holds: {', '.join(present) or 'nothing'})"
        )


def check_inputs(source: str) -> None:
    path = Path(source).expanduser()
    if path.exists() or any(c in source for c in "*?["):
        return
    parent = path.parent if path.parent.is_dir() else None
    near = (
        difflib.get_close_matches(path.name, [p.name for p in parent.iterdir()], n=3)
        if parent
        else []
    )
    hint = f"; did you mean {', '.join(str(parent / n) for n in near)}?" if near else ""
    raise UserFacingError(f"--input {source}: no such file or folder, and not a glob{hint}")


def check_writable(folder: Path, flag: str) -> None:
    """``folder`` exists and is writable, or can be created where its nearest ancestor is."""
    folder = Path(os.path.abspath(folder))
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if existing != folder and not existing.is_dir():
        raise UserFacingError(f"{flag} {folder}: {existing} is a file, not a folder")
    if existing.is_dir() and not os.access(existing, os.W_OK | os.X_OK):
        what = (
            "is not writable"
            if existing == folder
            else f"cannot be created ({existing} is not writable)"
        )
        raise UserFacingError(f"{flag} {folder}: {what}")
    if existing == folder and not folder.is_dir():
        raise UserFacingError(f"{flag} {folder}: is a file, not a folder")
