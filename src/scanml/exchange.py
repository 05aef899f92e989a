"""Scan packages exchanged between agencies: de-identified, checksummed, verified on arrival.

A package is a BagIt bag (RFC 8493, written and checked with the Library
of Congress ``bagit`` library)::

    PKG/
      bagit.txt  bag-info.txt  manifest-sha256.txt  tagmanifest-sha256.txt
      data/                       a scanml dataset folder: `scanml train --data PKG/data`
        manifest.csv              scan_id, path, label, site, split, ... (+ tdr)
        annotations.json          COCO, rebuilt from the boxes alone
        SUMMARY.md                sites, scanner models, counts, date range (shifted)
        scans/<scan_id>.dcm       de-identified (scanml.deid), or TIFF/PNG without metadata
        tdr/<scan_id>.dcm         Threat Detection Reports, when the data had them

- :func:`export_package` writes one (``scanml export``): new scan ids
  (``scan-00001``...), file names that say nothing, manifest columns limited
  to those known to carry no identifier, and every DICOM file de-identified
  with one date offset and one UID key for the whole package;
- :func:`import_package` verifies one and merges it into a dataset folder
  (``scanml import``): a changed, added or missing byte is an error naming
  the file, and the destination is changed only once everything checked.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import bagit
import numpy as np
import pandas as pd
import pydicom
import tifffile
from PIL import Image

from scanml import __version__
from scanml.dataset import DataError, ScanDataset, ScanRecord, load_dataset
from scanml.deid import Deidentifier
from scanml.io.dicos import find_energy_partners
from scanml.tdr import TDR_SOP_CLASS_UID

__all__ = [
    "ExchangeError",
    "ExportSummary",
    "ImportSummary",
    "export_package",
    "import_package",
    "verify_package",
]

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _quiet_bagit() -> Iterator[None]:
    """bagit logs a line per file hashed and per mismatch; scanml's own error names the file."""
    bagit_log = logging.getLogger("bagit")
    level = bagit_log.level
    bagit_log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        bagit_log.setLevel(level)


PAYLOAD = "data"
SUMMARY_FILE = "SUMMARY.md"

#: Manifest columns exported as they are (scan_id, path and group are replaced).
SAFE_COLUMNS = (
    "label",
    "site",
    "split",
    "row_spacing_mm",
    "col_spacing_mm",
    "spacing_mm",
    "energy",
    "height",
    "width",
    "n_objects",
    "reefer",
    "cargo_type",
    "conveyance",
)
_DICOM_SUFFIXES = (".dcm", ".dicom", ".dcs")


class ExchangeError(ValueError):
    """A package or its input is unusable; the message names the file and the reason."""


@dataclass
class ExportSummary:
    """What went into a package, for the sender's records and the package's SUMMARY.md."""

    package: Path
    n_scans: int
    n_tdrs: int
    sites: dict[str, int]
    labels: dict[str, int]
    categories: dict[str, int]
    scanner_models: list[str]
    date_range: tuple[str, str] | None
    dropped_columns: list[str] = field(default_factory=list)
    unknown_attributes: dict[str, list[str]] = field(default_factory=dict)

    def to_markdown(self) -> str:
        dates = " to ".join(self.date_range) if self.date_range else "none recorded"
        lines = [
            "# scanml scan package",
            "",
            f"Written by scanml {__version__}. De-identified following DICOM PS3.15 Basic "
            "Application Confidentiality Profile: identifiers replaced or removed, dates shifted "
            "by one offset for the whole package, UIDs remapped consistently.",
            "",
            f"- scans: {self.n_scans}; threat detection reports: {self.n_tdrs}",
            f"- sites: {_counts(self.sites)}",
            f"- labels: {_counts(self.labels)}",
            f"- annotated objects by category: {_counts(self.categories) or 'none'}",
            f"- scanner models: {', '.join(self.scanner_models) or 'not disclosed'}",
            f"- acquisition dates (shifted): {dates}",
            f"- manifest columns not exported: {', '.join(self.dropped_columns) or 'none'}",
        ]
        if self.unknown_attributes:
            lines.append("- DICOM attributes removed as unreviewed:")
            lines += [
                f"  - {name}: {', '.join(attrs)}" for name, attrs in self.unknown_attributes.items()
            ]
        return "\n".join(lines) + "\n"

    def __str__(self) -> str:
        return f"package {self.package}\n" + self.to_markdown()


@dataclass
class ImportSummary:
    """What an import added to a dataset folder."""

    into: Path
    site: str | None
    n_scans: int
    id_prefix: str
    n_total: int

    def __str__(self) -> str:
        return (
            f"imported {self.n_scans} scans into {self.into} as {self.id_prefix}*"
            f"{f' (site {self.site})' if self.site else ''}; the dataset now holds {self.n_total}"
        )


def export_package(
    data_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    profile: str = "basic",
    keep_device: bool = True,
    strict: bool = False,
    keep_columns: tuple[str, ...] = (),
    tdr_dir: str | os.PathLike[str] | None = None,
) -> ExportSummary:
    """De-identify ``data_dir`` (manifest, COCO, scans, TDRs) into the BagIt package ``out``.

    TDRs are read from ``tdr_dir`` (default ``data_dir/tdr`` when present)
    and kept when they reference a scan of the package. With ``strict`` an
    attribute no rule covers fails the export before anything is written;
    otherwise it is removed and listed in the summary.
    """
    if profile != "basic":
        raise ExchangeError(f"--profile {profile!r}: the only profile is 'basic' (PS3.15 Basic)")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ExchangeError(f"{out}: already exists and is not empty; choose a new package folder")
    try:
        dataset = load_dataset(data_dir)
    except (DataError, FileNotFoundError) as exc:
        raise ExchangeError(str(exc)) from None
    deid = Deidentifier(secrets.token_hex(16), keep_device=keep_device)
    new_ids = {r.scan_id: f"scan-{k:05d}" for k, r in enumerate(dataset.records, start=1)}
    tdrs = _find_tdrs(Path(tdr_dir) if tdr_dir else Path(data_dir) / "tdr")
    if strict:
        _refuse_unknown(deid, [r.path for r in dataset.records] + tdrs)

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        payload = staging  # bagit moves it into data/
        (payload / "scans").mkdir(parents=True)
        exported = {
            r.scan_id: _export_scan(r, payload / "scans", new_ids[r.scan_id], deid)
            for r in dataset.records
        }
        paths = {key: e.path.relative_to(payload).as_posix() for key, e in exported.items()}
        scan_by_uid = {
            e.instance_uid: new_ids[key] for key, e in exported.items() if e.instance_uid
        }
        models = {e.scanner_model for e in exported.values() if e.scanner_model}
        dates = [e.date for e in exported.values() if e.date]
        tdr_paths = _export_tdrs(tdrs, scan_by_uid, payload / "tdr", deid)
        dropped = _write_manifest(dataset, payload, new_ids, paths, tdr_paths, keep_columns)
        _write_coco(dataset, payload, new_ids, paths)
        summary = ExportSummary(
            package=out,
            n_scans=len(dataset.records),
            n_tdrs=len(tdr_paths),
            sites=dict(sorted(Counter(r.site for r in dataset.records).items())),
            labels={
                "clean": sum(r.label == 0 for r in dataset.records),
                "anomalous": sum(r.label == 1 for r in dataset.records),
            },
            categories=dict(
                sorted(Counter(b.category for r in dataset.records for b in r.boxes).items())
            ),
            scanner_models=sorted(models) if keep_device else [],
            date_range=(_iso(min(dates)), _iso(max(dates))) if dates else None,
            dropped_columns=dropped,
            unknown_attributes={k: sorted(v) for k, v in sorted(deid.unknown.items())},
        )
        (payload / SUMMARY_FILE).write_text(summary.to_markdown())
        with _quiet_bagit():
            bagit.make_bag(
                str(staging),
                bag_info={
                    "Bag-Software-Agent": f"scanml {__version__} with bagit {bagit.VERSION}",
                    "External-Description": "de-identified container X-ray scans (scanml export)",
                },
                checksums=["sha256"],
            )
        if out.exists():
            out.rmdir()
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    for name, attributes in summary.unknown_attributes.items():
        log.warning("%s: removed unreviewed attributes %s", name, ", ".join(attributes))
    return summary


def verify_package(package: str | os.PathLike[str]) -> bagit.Bag:
    """Check every checksum, and that no file is missing or added; raises ExchangeError naming the file."""
    package = Path(package)
    if not (package / "bagit.txt").is_file():
        raise ExchangeError(f"{package}: not a scan package (no bagit.txt)")
    failed = f"{package}: package failed verification"
    try:
        with _quiet_bagit():
            bag = bagit.Bag(str(package))
            # Name missing and undeclared files first: bagit's quick size check only counts them.
            declared = {os.path.normpath(path) for path in bag.payload_entries()}
            present = {os.path.normpath(path) for path in bag.payload_files()}
            problems = [f"{path}: missing" for path in sorted(declared - present)]
            problems += [f"{path}: not in the manifest" for path in sorted(present - declared)]
            if problems:
                raise ExchangeError(f"{failed}: {'; '.join(problems)}")
            bag.validate(processes=1)
    except bagit.BagValidationError as exc:
        problems = [_describe_problem(package, detail) for detail in exc.details]
        problems = problems or _changed_files(package, bag) or [str(exc)]
        raise ExchangeError(f"{failed}: {'; '.join(problems)}") from None
    except bagit.BagError as exc:
        raise ExchangeError(f"{package}: not a valid package: {exc}") from None
    return bag


def import_package(
    package: str | os.PathLike[str],
    into: str | os.PathLike[str],
    *,
    site: str | None = None,
    id_prefix: str | None = None,
) -> ImportSummary:
    """Verify ``package`` and merge its scans, manifest and annotations into the dataset ``into``.

    Imported scans get ids ``<prefix><their id>`` (default prefix: the
    package folder's name) and, with ``site``, that site. Files are copied
    under ``into/imported/<prefix>/``; the destination's manifest and
    annotations are replaced atomically, last, and only after the package
    verified and the merged dataset loaded cleanly.
    """
    package, into = Path(package), Path(into)
    verify_package(package)
    prefix = id_prefix if id_prefix is not None else f"{package.resolve().name}-"
    incoming = load_dataset(package / PAYLOAD)
    existing = load_dataset(into) if (into / "manifest.csv").exists() else None
    if existing is not None:
        clash = {prefix + r.scan_id for r in incoming.records} & {
            r.scan_id for r in existing.records
        }
        if clash:
            raise ExchangeError(
                f"{into}: scan ids {sorted(clash)[:5]} already present; import with another --prefix"
            )
    folder = Path("imported") / prefix.rstrip("-_")
    if (into / folder).exists():
        raise ExchangeError(f"{into / folder}: already exists; import with another --prefix")

    into.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".import.", dir=into))
    try:
        manifest, coco = _merged_tables(package / PAYLOAD, into, existing, prefix, folder, site)
        shutil.copytree(
            package / PAYLOAD,
            staging / "files",
            ignore=shutil.ignore_patterns("*.csv", "*.json", "*.md"),
        )
        (staging / "manifest.csv").write_text(manifest.to_csv(index=False))
        (staging / "annotations.json").write_text(json.dumps(coco, indent=1))
        (into / folder).parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / "files", into / folder)
        try:
            merged = load_dataset_from(staging, into)
        except (DataError, FileNotFoundError) as exc:
            shutil.rmtree(into / folder, ignore_errors=True)
            raise ExchangeError(f"{package}: the merged dataset does not load: {exc}") from None
        os.replace(staging / "annotations.json", into / "annotations.json")
        os.replace(staging / "manifest.csv", into / "manifest.csv")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ImportSummary(into, site, len(incoming.records), prefix, len(merged.records))


def load_dataset_from(staging: Path, root: Path) -> ScanDataset:
    """Load a manifest and annotations written in ``staging`` whose paths are relative to ``root``."""
    return load_dataset(
        root,
        manifest=os.path.relpath(staging / "manifest.csv", root),
        annotations=os.path.relpath(staging / "annotations.json", root),
    )


# -- export helpers ---------------------------------------------------------------------


@dataclass(frozen=True)
class _ExportedScan:
    """Where a scan went, and what the summary reports about it."""

    path: Path
    instance_uid: str | None = None  # DICOM only: the new SOP Instance UID, which TDRs reference
    scanner_model: str | None = None
    date: str | None = None  # shifted, DICOM DA


def _export_scan(
    record: ScanRecord, scans_dir: Path, new_id: str, deid: Deidentifier
) -> _ExportedScan:
    """Write one scan under its new id: DICOM de-identified, other formats as pixels only."""
    source = record.path
    if _is_dicom(source):
        dataset = _read_dicom(source)
        # A dual-energy DICOS scan is two instances, x.dcm and x.low.dcm: both travel,
        # de-identified with the same key, so they still pair up by their UIDs.
        for partner in find_energy_partners(source, dataset):
            companion = _read_dicom(partner)
            deid.deidentify(companion, name=partner.name)
            companion.SeriesDescription = new_id
            companion.save_as(
                scans_dir / f"{new_id}{partner.name[len(source.stem) :]}", enforce_file_format=True
            )
        deid.deidentify(dataset, name=f"{record.scan_id}{source.suffix}")
        dataset.SeriesDescription = new_id  # scanml reads a DICOM scan's id from here
        target = scans_dir / f"{new_id}.dcm"
        dataset.save_as(target, enforce_file_format=True)
        dates = [dataset.get(k) for k in ("AcquisitionDate", "ContentDate", "StudyDate")]
        return _ExportedScan(
            target,
            str(dataset.SOPInstanceUID),
            str(dataset.get("ManufacturerModelName") or "") or None,
            next((str(d) for d in dates if d), None),
        )
    suffix = source.suffix.lower()
    target = scans_dir / f"{new_id}{suffix}"
    if suffix in (".tif", ".tiff"):
        # Pixels only: TIFF tags (DateTime, Artist, HostComputer, descriptions) stay home.
        with tifffile.TiffFile(source) as tiff:
            pages = np.stack([page.asarray() for page in tiff.pages])
        tifffile.imwrite(target, pages, photometric="minisblack", metadata=None)
    elif suffix == ".png":
        with Image.open(source) as image:
            image.save(target)  # without the text chunks
    elif suffix == ".npy":
        np.save(target, np.load(source, allow_pickle=False))
    else:
        raise ExchangeError(f"{source}: cannot export {suffix or 'suffix-less'} files")
    return _ExportedScan(target)


def _find_tdrs(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.rglob("*.dcm")):
        if _read_dicom(path).get("SOPClassUID") == TDR_SOP_CLASS_UID:
            found.append(path)
    return found


def _export_tdrs(
    tdrs: list[Path], scan_by_uid: dict[str, str], tdr_dir: Path, deid: Deidentifier
) -> dict[str, str]:
    """De-identify the reports about exported scans; returns scan id -> report path."""
    written: dict[str, str] = {}
    for path in tdrs:
        dataset = _read_dicom(path)
        deid.deidentify(dataset, name=f"tdr {path.name}")
        referenced = [  # DICOS names the scan in the Referenced Study Sequence, DICOM in SOP
            str(item.get("ReferencedSOPInstanceUID", ""))
            for keyword in ("ReferencedStudySequence", "ReferencedSOPSequence")
            for item in dataset.get(keyword) or []
        ]
        scan_id = next((scan_by_uid[uid] for uid in referenced if uid in scan_by_uid), None)
        if scan_id is None:
            log.warning("%s: references no exported scan; left out", path)
            continue
        tdr_dir.mkdir(exist_ok=True)
        target = tdr_dir / f"{scan_id}.dcm"
        dataset.save_as(target, enforce_file_format=True)
        written[scan_id] = target.relative_to(tdr_dir.parent).as_posix()
    return written


def _write_manifest(
    dataset: ScanDataset,
    payload: Path,
    new_ids: dict[str, str],
    paths: dict[str, str],
    tdr_paths: dict[str, str],
    keep_columns: tuple[str, ...],
) -> list[str]:
    """The package's manifest.csv; returns the source columns left out."""
    source = pd.read_csv(dataset.root / "manifest.csv", dtype=str, keep_default_na=False)
    allowed = [c for c in source.columns if c in SAFE_COLUMNS or c in keep_columns]
    table = source.set_index("scan_id").loc[[r.scan_id for r in dataset.records], allowed]
    table.insert(0, "path", [paths[r.scan_id] for r in dataset.records])
    table.insert(0, "scan_id", [new_ids[r.scan_id] for r in dataset.records])
    if "group" in source.columns:  # keeps repeated scans of one container together, anonymously
        groups = source.set_index("scan_id").loc[[r.scan_id for r in dataset.records], "group"]
        pseudonyms = {g: f"group-{k:05d}" for k, g in enumerate(dict.fromkeys(groups), start=1)}
        table["group"] = [pseudonyms[g] if g else "" for g in groups]
    if tdr_paths:
        table["tdr"] = [tdr_paths.get(new_ids[r.scan_id], "") for r in dataset.records]
    table.to_csv(payload / "manifest.csv", index=False)
    return [c for c in source.columns if c not in (*allowed, "scan_id", "path", "group")]


def _write_coco(
    dataset: ScanDataset, payload: Path, new_ids: dict[str, str], paths: dict[str, str]
) -> None:
    """COCO from the validated boxes only: no info block, no free-text attributes."""
    categories = {name: k for k, name in enumerate(dataset.categories, start=1)}
    images, annotations = [], []
    for image_id, record in enumerate(dataset.records, start=1):
        images.append(
            {
                "id": image_id,
                "file_name": paths[record.scan_id],
                "scan_id": new_ids[record.scan_id],
                "site": record.site,
                **_image_size(record),
            }
        )
        for box in record.boxes:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": categories[box.category],
                    "bbox": [box.x, box.y, box.w, box.h],
                    "area": box.w * box.h,
                    "iscrowd": 0,
                }
            )
    coco = {
        "info": {"description": "scanml scan package", "version": "1"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": k, "name": name} for name, k in categories.items()],
    }
    (payload / "annotations.json").write_text(json.dumps(coco, indent=1))


def _image_size(record: ScanRecord) -> dict[str, int]:
    extras = record.extras
    if extras.get("width") not in (None, "") and extras.get("height") not in (None, ""):
        return {"width": int(float(extras["width"])), "height": int(float(extras["height"]))}
    return {}


def _refuse_unknown(deid: Deidentifier, paths: list[Path]) -> None:
    for path in paths:
        if not _is_dicom(path):
            continue
        dataset = _read_dicom(path)
        for partner in find_energy_partners(path, dataset):  # a dual-energy scan's x.low.dcm
            _refuse_unknown(deid, [partner])
        unknown = deid.unknown_attributes(dataset)
        if unknown:
            raise ExchangeError(
                f"{path}: attributes no de-identification rule covers (--strict): "
                f"{', '.join(unknown)}"
            )


def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() in _DICOM_SUFFIXES:
        return True
    with path.open("rb") as stream:
        return stream.read(132)[128:] == b"DICM"


def _read_dicom(path: Path) -> pydicom.Dataset:
    try:
        return pydicom.dcmread(path)
    except (pydicom.errors.InvalidDicomError, OSError) as exc:
        raise ExchangeError(f"{path}: not a readable DICOM file ({exc})") from None


# -- import helpers ---------------------------------------------------------------------


def _merged_tables(
    payload: Path,
    into: Path,
    existing: ScanDataset | None,
    prefix: str,
    folder: Path,
    site: str | None,
) -> tuple[pd.DataFrame, dict]:
    theirs = pd.read_csv(payload / "manifest.csv", dtype=str, keep_default_na=False)
    theirs["scan_id"] = prefix + theirs["scan_id"]
    theirs["path"] = [(folder / p).as_posix() for p in theirs["path"]]
    if "tdr" in theirs:
        theirs["tdr"] = [(folder / p).as_posix() if p else "" for p in theirs["tdr"]]
    if "group" in theirs:
        theirs["group"] = [prefix + g if g else "" for g in theirs["group"]]
    if site:
        theirs["site"] = site
    their_coco = json.loads((payload / "annotations.json").read_text())
    if existing is None:
        manifest = theirs
        coco = {"images": [], "annotations": [], "categories": []}
    else:
        ours = pd.read_csv(into / "manifest.csv", dtype=str, keep_default_na=False)
        manifest = pd.concat([ours, theirs], ignore_index=True).fillna("")
        coco = json.loads((into / "annotations.json").read_text())

    category_id = {c["name"]: c["id"] for c in coco["categories"]}
    for category in their_coco["categories"]:
        if category["name"] not in category_id:
            category_id[category["name"]] = max(category_id.values(), default=0) + 1
            coco["categories"].append(
                {"id": category_id[category["name"]], "name": category["name"]}
            )
    their_names = {c["id"]: c["name"] for c in their_coco["categories"]}
    image_offset = max((i["id"] for i in coco["images"]), default=0)
    annotation_offset = max((a["id"] for a in coco["annotations"]), default=0)
    for image in their_coco["images"]:
        coco["images"].append(
            {
                **image,
                "id": image["id"] + image_offset,
                "file_name": (folder / image["file_name"]).as_posix(),
                "scan_id": prefix + image.get("scan_id", ""),
                **({"site": site} if site else {}),
            }
        )
    for annotation in their_coco["annotations"]:
        coco["annotations"].append(
            {
                **annotation,
                "id": annotation["id"] + annotation_offset,
                "image_id": annotation["image_id"] + image_offset,
                "category_id": category_id[their_names[annotation["category_id"]]],
            }
        )
    return manifest, coco


def _changed_files(package: Path, bag: bagit.Bag) -> list[str]:
    """The files whose SHA-256 differs: bagit's size check fails first without naming them."""
    changed = []
    for path, hashes in bag.payload_entries().items():
        if "sha256" in hashes and (package / path).is_file():
            digest = hashlib.sha256((package / path).read_bytes()).hexdigest()
            if digest != hashes["sha256"]:
                changed.append(f"{path}: content changed (sha256 differs from the manifest)")
    return changed


def _describe_problem(package: Path, detail: object) -> str:
    path = getattr(detail, "path", None)
    if isinstance(detail, bagit.ChecksumMismatch):
        return f"{path}: content changed (sha256 differs from the manifest)"
    if isinstance(detail, bagit.FileMissing):
        return f"{path}: missing"
    if isinstance(detail, bagit.UnexpectedFile):
        return f"{path}: not in the manifest"
    return str(detail)


def _iso(dicom_date: str) -> str:
    return f"{dicom_date[:4]}-{dicom_date[4:6]}-{dicom_date[6:8]}"


def _counts(counter: dict[str, int]) -> str:
    return ", ".join(f"{key} {value}" for key, value in counter.items())
