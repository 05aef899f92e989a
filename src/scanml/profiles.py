"""Scanner profiles: what a scanner's files leave out, supplied once per scanner.

Vendors' files do not say everything a reader needs: SDICOS-written DX has
no pixel spacing, some systems store log values under a LIN label, the open
beam sits at 80 % of full scale, and energies are told apart only by
convention. A *profile* states those facts for one scanner model (or one
site), and :func:`scanml.io.read_scan` applies it to every file it matches,
so a new agency onboards a scanner by adding one YAML file, not code.

A profile matches a file by its Manufacturer, Manufacturer's Model Name
and Station Name (each a case-insensitive regular expression matched
against the whole value, all given ones must match), or by site: the
manifest's ``site`` column or ``read_scan(site=...)``. Profiles live in
``configs/profiles/*.yaml`` (one profile, or a ``profiles:`` list, per
file); ``SCANML_PROFILES`` names another folder. Everything a profile says
is recorded in ``Scan.meta["profile"]``; what the file says wins, except
for the fields marked *overrides* below.

(:mod:`scanml.synth.profiles` describes the *simulated* sites' physics; this
module describes how real files are to be read.)
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = [
    "DEFAULT_PROFILE_DIR",
    "OpenBeam",
    "ProfileRegistry",
    "ScannerProfile",
    "default_registry",
    "load_profiles",
]

DEFAULT_PROFILE_DIR = Path("configs/profiles")


class OpenBeam(BaseModel):
    """Where the unattenuated beam (air) sits in the stored values.

    ``method``: ``full_scale`` (air is stored at the full scale: what the
    file format promises), ``level`` (air at ``level`` times the full
    scale, for every row), or ``estimate`` (per detector row, from the air
    above and beside the container: for beams that are not flat-fielded).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["full_scale", "level", "estimate"] = "estimate"
    level: float | None = Field(default=None, gt=0.0, le=1.0)

    @model_validator(mode="after")
    def _level_with_its_method(self) -> OpenBeam:
        if (self.method == "level") != (self.level is not None):
            raise ValueError("open_beam.level is given with method 'level', and only then")
        return self


class ScannerProfile(BaseModel):
    """One scanner model or site: how its files are to be read.

    ``spacing_mm`` (row, column) is used when the file carries none (or
    ``0\\0``). ``channels`` names the energies in file order (high first),
    and a multi-frame file is read as energies only when the file or the
    profile declares them. ``relationship``/``sign`` *override* the file's
    PixelIntensityRelationship(Sign), for files known to be mislabelled;
    ``log_scale`` is the attenuation of one stored LOG step (natural-log
    units), for LOG files that do not state it. ``ooi_type`` is what
    threat reports about its scans name as the object of inspection.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    manufacturer: str | None = None
    model: str | None = None
    station: str | None = None
    sites: tuple[str, ...] = ()
    spacing_mm: tuple[float, float] | None = None
    channels: tuple[str, ...] | None = None
    relationship: Literal["LIN", "LOG"] | None = None
    sign: Literal[1, -1] | None = None
    log_scale: float | None = Field(default=None, gt=0.0)
    open_beam: OpenBeam = OpenBeam()
    ooi_type: Literal["CARGO", "BAGGAGE", "OTHER"] = "CARGO"

    @field_validator("spacing_mm")
    @classmethod
    def _positive_spacing(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not all(v > 0 for v in value):
            raise ValueError(f"spacing_mm must be two positive numbers, got {value}")
        return value

    @field_validator("manufacturer", "model", "station")
    @classmethod
    def _valid_pattern(cls, value: str | None) -> str | None:
        if value is not None:
            re.compile(value)
        return value

    def matches_file(self, attributes: Mapping[str, str | None]) -> bool:
        """Whether every pattern the profile gives matches the file's attribute.

        ``attributes`` holds ``manufacturer``, ``model`` and ``station``. A
        profile without patterns matches by site only.
        """
        patterns = {"manufacturer": self.manufacturer, "model": self.model, "station": self.station}
        given = {key: pattern for key, pattern in patterns.items() if pattern is not None}
        if not given:
            return False
        return all(
            re.fullmatch(pattern, (attributes.get(key) or "").strip(), re.IGNORECASE) is not None
            for key, pattern in given.items()
        )

    def matches_site(self, site: str | None) -> bool:
        return site is not None and site.strip().lower() in {s.lower() for s in self.sites}


class ProfileRegistry:
    """The profiles known to the reader, looked up by name, file attributes or site."""

    def __init__(self, profiles: Iterable[ScannerProfile] = ()) -> None:
        self.profiles: list[ScannerProfile] = list(profiles)
        names = [profile.name for profile in self.profiles]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"scanner profile names must be unique: {', '.join(duplicates)}")

    def __len__(self) -> int:
        return len(self.profiles)

    def get(self, name: str) -> ScannerProfile:
        for profile in self.profiles:
            if profile.name == name:
                return profile
        known = ", ".join(p.name for p in self.profiles) or "none"
        raise KeyError(f"no scanner profile named {name!r} (known: {known})")

    def match(
        self, attributes: Mapping[str, str | None], site: str | None = None
    ) -> ScannerProfile | None:
        """The first profile matching the file's attributes, else the first matching ``site``."""
        for profile in self.profiles:
            if profile.matches_file(attributes):
                return profile
        for profile in self.profiles:
            if profile.matches_site(site):
                return profile
        return None


def load_profiles(folder: str | os.PathLike[str]) -> ProfileRegistry:
    """Every profile in ``folder/*.yaml`` (a mapping, or a ``profiles:`` list, per file).

    Raises ValueError naming the file and the field for an invalid profile.
    """
    folder = Path(folder)
    profiles: list[ScannerProfile] = []
    for path in sorted(folder.glob("*.yaml")) + sorted(folder.glob("*.yml")):
        try:
            document = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: not valid YAML ({exc})") from exc
        entries = document.get("profiles") if isinstance(document, dict) else None
        for entry in entries if entries is not None else [document]:
            profiles.append(_profile(path, entry))
    return ProfileRegistry(profiles)


@functools.cache
def _cached_registry(folder: str, signature: tuple[tuple[str, float], ...]) -> ProfileRegistry:
    return load_profiles(folder)


def default_registry() -> ProfileRegistry:
    """The profiles in ``$SCANML_PROFILES``, else ``configs/profiles`` under the working folder.

    Reloaded when a file there changes; empty when the folder does not exist.
    """
    folder = Path(os.environ.get("SCANML_PROFILES") or DEFAULT_PROFILE_DIR)
    if not folder.is_dir():
        return ProfileRegistry()
    signature = tuple(
        (p.name, p.stat().st_mtime)
        for p in sorted(folder.iterdir())
        if p.suffix in (".yaml", ".yml")
    )
    return _cached_registry(str(folder.resolve()), signature)


def _profile(path: Path, entry: Any) -> ScannerProfile:
    if not isinstance(entry, dict):
        raise ValueError(f"{path}: a scanner profile must be a mapping, got {type(entry).__name__}")
    try:
        return ScannerProfile.model_validate(entry)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
            for error in exc.errors()
        )
        raise ValueError(
            f"{path}: invalid scanner profile {entry.get('name')!r}: {problems}"
        ) from exc
    except re.error as exc:
        raise ValueError(
            f"{path}: invalid pattern in profile {entry.get('name')!r}: {exc}"
        ) from exc
