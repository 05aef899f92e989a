"""The dataset contract: ``manifest.csv``, COCO ``annotations.json`` and the splits.

A dataset folder holds ``manifest.csv`` (one row per scan) and a COCO
``annotations.json`` (boxes in the scan's own pixels), as defined in
DESIGN.md. :func:`load_dataset` turns them into a validated
:class:`ScanDataset`; every problem is reported with the file, the row and
the column, because these files are written by hand or by other agencies'
export scripts. :func:`assign_splits` adds train/val/test splits that never
put one scan (or one container) in two splits.

The tiles a model trains on are cut from these scans in :mod:`scanml.tiles`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "REQUIRED_COLUMNS",
    "SPLITS",
    "Box",
    "DataError",
    "DataWarning",
    "ScanDataset",
    "ScanRecord",
    "assign_splits",
    "load_dataset",
    "manifest_spacing",
    "manifest_text",
    "read_manifest_table",
]

SPLITS = ("train", "val", "test")
REQUIRED_COLUMNS = ("scan_id", "path", "label", "site")
# Read as text so that validation sees exactly what was written ("1.0" is not a label).
_TEXT_COLUMNS = (*REQUIRED_COLUMNS, "split", "group")
_SPACING_COLUMNS = ("spacing_mm", "row_spacing_mm", "col_spacing_mm")
_KNOWN_COLUMNS = (*_TEXT_COLUMNS, *_SPACING_COLUMNS)
# COCO exporters write float boxes; an edge a thousandth of a pixel out is rounding.
_BBOX_TOLERANCE_PX = 1e-3
_MAX_LISTED_PROBLEMS = 20


class DataError(ValueError):
    """The manifest or the annotations break the data contract.

    ``problems`` lists every problem found, each naming the file, the row or
    entry, and the column, so a curator can fix a large manifest in one pass.
    """

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        listed = self.problems[:_MAX_LISTED_PROBLEMS]
        more = len(self.problems) - len(listed)
        text = "\n  ".join(listed) + (f"\n  ... and {more} more" if more else "")
        super().__init__(f"{len(self.problems)} problem(s) in the dataset:\n  {text}")


class DataWarning(UserWarning):
    """Allowed by the data contract, but probably not what the curator meant."""


@dataclass(frozen=True)
class Box:
    """An annotated object in the scan's own pixels (COCO ``[x, y, w, h]``, x = column).

    ``concealment`` is how the object was hidden (``"rip_on"``, ``"floor"``,
    ``"cartons"``...) where the annotation says so, as a ``concealment`` key
    of the COCO annotation or of its ``attributes``; the quality benchmark
    breaks its figures down by it.

    ``contrast`` is the net attenuation the object changed inside its box
    (the mean of what it added minus the cargo it displaced), where the
    annotation records it, as simulated data does: a training target
    (``train.amount_loss_weight``), never an input.
    """

    x: float
    y: float
    w: float
    h: float
    category: str
    concealment: str | None = None
    contrast: float | None = None


@dataclass(frozen=True)
class ScanRecord:
    """One manifest row with its boxes.

    ``spacing_mm`` comes from the manifest (``row_spacing_mm`` and
    ``col_spacing_mm``, or a square ``spacing_mm``) for formats that carry
    none (TIFF, PNG, ``.npy``); DICOS files carry their own. ``extras`` keeps
    every other manifest column (a container id ``group`` among them).
    """

    scan_id: str
    path: Path
    label: int
    site: str
    split: str | None = None
    boxes: list[Box] = field(default_factory=list)
    spacing_mm: tuple[float, float] | None = None
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class ScanDataset:
    """The scans of one dataset folder, validated.

    ``digest`` identifies the data a run was trained on (MLflow's dataset
    input): the SHA-256 of the manifest and annotation files as loaded, for
    a split or a re-split a hash derived from it, and for a dataset built in
    code (left empty) a hash of its records.
    """

    records: list[ScanRecord]
    categories: list[str]
    root: Path
    digest: str = ""

    def __post_init__(self) -> None:
        if not self.digest:
            self.digest = _content_digest(self.records, self.categories)

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[ScanRecord]:
        return iter(self.records)

    def split(self, name: str) -> ScanDataset:
        """The records of one split; raises DataError when no splits are assigned."""
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {SPLITS}")
        if any(record.split is None for record in self.records):
            raise DataError([f"{self.root}: scans without a split; call assign_splits first"])
        return ScanDataset(
            [record for record in self.records if record.split == name],
            self.categories,
            self.root,
            digest=_derived_digest(self.digest, f"split={name}"),
        )

    @property
    def sites(self) -> list[str]:
        """The sites (scanners or ports) present, sorted."""
        return sorted({record.site for record in self.records})

    def to_pandas(self) -> pd.DataFrame:
        """One row per scan with flat columns (boxes counted), e.g. for MLflow's dataset input."""
        rows = [
            {
                "scan_id": record.scan_id,
                "path": str(record.path),
                "label": record.label,
                "site": record.site,
                "split": record.split,
                "n_boxes": len(record.boxes),
                "categories": ";".join(sorted({box.category for box in record.boxes})),
                "row_spacing_mm": record.spacing_mm[0] if record.spacing_mm else None,
                "col_spacing_mm": record.spacing_mm[1] if record.spacing_mm else None,
                **record.extras,
            }
            for record in self.records
        ]
        return pd.DataFrame(rows)


def load_dataset(
    data_dir: str | Path,
    *,
    manifest: str = "manifest.csv",
    annotations: str | None = "annotations.json",
) -> ScanDataset:
    """Load and validate a dataset folder.

    Paths in the manifest are relative to the folder; COCO
    ``images[].file_name`` matches ``manifest.path``. ``annotations=None``
    loads a manifest alone (every scan then has no boxes). Raises
    FileNotFoundError for a missing file and DataError listing every
    contract violation; warns (DataWarning) for anomalous scans without boxes.
    """
    root = Path(data_dir).resolve()
    manifest_path = root / manifest
    if not manifest_path.is_file():
        raise FileNotFoundError(f"no manifest at {manifest_path}")
    by_path = _read_manifest(manifest_path, root)
    records = list(by_path.values())
    files = [manifest_path]
    categories: list[str] = []
    if annotations is not None:
        annotations_path = root / annotations
        if not annotations_path.is_file():
            raise FileNotFoundError(f"no annotations at {annotations_path}")
        files.append(annotations_path)
        categories, boxes = _read_annotations(annotations_path, by_path)
        records = [dataclasses.replace(r, boxes=boxes.get(r.scan_id, [])) for r in records]
    _check_labels_agree_with_boxes(records, files[-1])
    return ScanDataset(records, categories, root, digest=_file_digest(files))


def assign_splits(
    dataset: ScanDataset,
    *,
    val_fraction: float,
    test_fraction: float,
    seed: int,
) -> ScanDataset:
    """Give every scan a split, keeping the manifest's split column when it has one.

    Otherwise splits are drawn with ``seed``, stratified by (site, label) so
    every split sees every scanner and both classes. The unit of assignment
    is a group: the manifest's ``group`` column (e.g. a container id, so that
    repeated scans of one container stay together) or else the scan itself.
    Rounding is carried across strata, so the split sizes match the
    fractions overall even when each stratum is small.
    """
    if min(val_fraction, test_fraction) < 0 or val_fraction + test_fraction >= 1:
        raise ValueError(
            f"need 0 <= val_fraction, test_fraction and a sum below 1, got {val_fraction}, {test_fraction}"
        )
    given = [record.split is not None for record in dataset.records]
    if all(given):
        _check_groups_within_one_split(dataset)
        return dataset
    if any(given):
        missing = [r.scan_id for r, has in zip(dataset.records, given, strict=True) if not has]
        raise DataError([f"{dataset.root}: the split column is empty for scans {missing}"])

    groups: dict[str, list[int]] = {}
    for index, record in enumerate(dataset.records):
        groups.setdefault(_group_key(record), []).append(index)
    strata: dict[tuple[str, int], list[str]] = {}
    for key, members in groups.items():
        site = dataset.records[members[0]].site
        label = max(dataset.records[i].label for i in members)
        strata.setdefault((site, label), []).append(key)

    rng = np.random.default_rng(seed)
    split_of_group: dict[str, str] = {}
    seen = n_val = n_test = 0
    for stratum in sorted(strata):
        keys = sorted(strata[stratum])
        keys = [keys[i] for i in rng.permutation(len(keys))]
        seen += len(keys)
        take_test = _round_half_up(test_fraction * seen) - n_test
        take_val = min(_round_half_up(val_fraction * seen) - n_val, len(keys) - take_test)
        n_test, n_val = n_test + take_test, n_val + take_val
        take_train = len(keys) - take_test - take_val
        split_of_group.update(
            zip(
                keys,
                ["test"] * take_test + ["val"] * take_val + ["train"] * take_train,
                strict=True,
            )
        )

    records = [
        dataclasses.replace(record, split=split_of_group[_group_key(record)])
        for record in dataset.records
    ]
    tag = f"splits:val={val_fraction}:test={test_fraction}:seed={seed}"
    return ScanDataset(
        records, dataset.categories, dataset.root, _derived_digest(dataset.digest, tag)
    )


# -- helpers: manifest and annotations --------------------------------------------------


def read_manifest_table(path: str | Path) -> pd.DataFrame:
    """A manifest's cells as written: the contract's text columns as text, empty cells missing.

    The one reader of ``manifest.csv``: :func:`load_dataset` validates its
    rows against the contract, the scoring job (:mod:`scanml.score_inputs`)
    reads the ``path``, ``scan_id``, ``site`` and spacing columns from it.
    Raises DataError when the file is not a readable CSV.
    """
    try:
        return pd.read_csv(
            path,
            dtype=dict.fromkeys(_TEXT_COLUMNS, str),
            keep_default_na=False,
            na_values=[""],
            skipinitialspace=True,
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError([f"{path}: not a readable CSV file ({exc})"]) from exc


def manifest_text(value: Any) -> str:
    """A text cell as written, stripped; a missing cell or column is empty."""
    return "" if value is None or pd.isna(value) else str(value).strip()


def _read_manifest(path: Path, root: Path) -> dict[str, ScanRecord]:
    """The manifest's scans, keyed by their normalised relative path (what COCO file names match)."""
    frame = read_manifest_table(path)
    missing = [column for column in REQUIRED_COLUMNS if column not in frame.columns]
    if missing:
        raise DataError([f"{path}: missing column(s) {missing}; found {list(frame.columns)}"])

    extras_columns = [c for c in frame.columns if c not in _KNOWN_COLUMNS]
    extras = frame[extras_columns].astype(object).where(frame[extras_columns].notna(), None)
    problems: list[str] = []
    records: dict[str, ScanRecord] = {}
    first_row_of_id: dict[str, int] = {}
    first_row_of_path: dict[str, int] = {}
    rows = zip(frame.to_dict("records"), extras.to_dict("records"), strict=True)
    for row_number, (row, row_extras) in enumerate(rows, start=1):
        where = f"{path}: row {row_number} (line {row_number + 1})"
        text = {c: manifest_text(row.get(c)) for c in _TEXT_COLUMNS}
        row_problems = [f"{where}, column {c!r}: empty" for c in REQUIRED_COLUMNS if not text[c]]
        scan_id, relative = text["scan_id"], _normalise_path(text["path"])
        if scan_id and first_row_of_id.setdefault(scan_id, row_number) != row_number:
            row_problems.append(
                f"{where}, column 'scan_id': {scan_id!r} repeats row {first_row_of_id[scan_id]}"
            )
        if relative and first_row_of_path.setdefault(relative, row_number) != row_number:
            row_problems.append(
                f"{where}, column 'path': {relative!r} repeats row {first_row_of_path[relative]}"
            )
        if text["label"] not in ("", "0", "1"):
            row_problems.append(f"{where}, column 'label': expected 0 or 1, got {text['label']!r}")
        split = text["split"] or None
        if split is not None and split not in SPLITS:
            row_problems.append(f"{where}, column 'split': expected one of {SPLITS}, got {split!r}")
        scan_path = root / relative
        if relative and not scan_path.is_file():
            row_problems.append(f"{where}, column 'path': no file at {scan_path}")
        spacing, spacing_problems = manifest_spacing(row, where)
        row_problems += spacing_problems
        problems += row_problems
        if not row_problems:
            group = {"group": text["group"]} if text["group"] else {}
            records[relative] = ScanRecord(
                scan_id=scan_id,
                path=scan_path,
                label=int(text["label"]),
                site=text["site"],
                split=split,
                spacing_mm=spacing,
                extras={**row_extras, **group},
            )
    if problems:
        raise DataError(problems)
    if not records:
        raise DataError([f"{path}: no scans"])
    return records


def manifest_spacing(
    row: Mapping[str, Any], where: str
) -> tuple[tuple[float, float] | None, list[str]]:
    """A row's (row, column) pixel spacing in mm, and the problems with it.

    ``row_spacing_mm`` with ``col_spacing_mm`` if given, else a square
    ``spacing_mm``, else None; each problem names ``where`` and the column.
    """
    values: dict[str, float] = {}
    problems = []
    for column in _SPACING_COLUMNS:
        raw = row.get(column)
        if raw is None or pd.isna(raw):
            continue
        try:
            values[column] = float(raw)
        except (TypeError, ValueError):
            values[column] = math.nan
        if not (math.isfinite(values[column]) and values[column] > 0):
            problems.append(
                f"{where}, column {column!r}: expected a positive number of mm, got {raw!r}"
            )
    if problems:
        return None, problems
    if "row_spacing_mm" in values or "col_spacing_mm" in values:
        if not ("row_spacing_mm" in values and "col_spacing_mm" in values):
            return None, [f"{where}: row_spacing_mm and col_spacing_mm must be given together"]
        return (values["row_spacing_mm"], values["col_spacing_mm"]), []
    if "spacing_mm" in values:
        return (values["spacing_mm"], values["spacing_mm"]), []
    return None, []


def _read_annotations(
    path: Path, by_path: Mapping[str, ScanRecord]
) -> tuple[list[str], dict[str, list[Box]]]:
    """Categories (in category-id order) and boxes per scan id from a COCO file."""
    try:
        coco = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError([f"{path}: not a readable JSON file ({exc})"]) from exc
    if not isinstance(coco, dict) or not all(
        isinstance(coco.get(key), list) for key in ("images", "annotations", "categories")
    ):
        raise DataError(
            [f"{path}: expected a COCO object with lists 'images', 'annotations', 'categories'"]
        )
    problems: list[str] = []
    categories = _coco_categories(path, coco["categories"], problems)
    images = _coco_images(path, coco["images"], by_path, problems)

    boxes: dict[str, list[Box]] = {}
    for k, annotation in enumerate(coco["annotations"]):
        if not isinstance(annotation, dict):
            problems.append(f"{path}: annotations[{k}]: not an object")
            continue
        where = f"{path}: annotations[{k}] (id {annotation.get('id')!r})"
        image_id, category_id, bbox = (
            annotation.get(key) for key in ("image_id", "category_id", "bbox")
        )
        if not _is_int(image_id) or image_id not in images:
            problems.append(f"{where}, field 'image_id': {image_id!r} is no valid image")
        elif not _is_int(category_id) or category_id not in categories:
            problems.append(f"{where}, field 'category_id': unknown category {category_id!r}")
        elif not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
            problems.append(f"{where}, field 'bbox': expected [x, y, w, h] numbers, got {bbox!r}")
        else:
            record, width, height = images[image_id]
            x, y, w, h = (float(v) for v in bbox)
            slack = _BBOX_TOLERANCE_PX
            if not (w > 0 and h > 0):
                problems.append(
                    f"{where}, field 'bbox': width and height must be positive, got {bbox}"
                )
            elif x < -slack or y < -slack or x + w > width + slack or y + h > height + slack:
                problems.append(
                    f"{where}, field 'bbox': {bbox} leaves the {width:g} x {height:g} image of {record.scan_id!r}"
                )
            else:
                boxes.setdefault(record.scan_id, []).append(
                    Box(
                        x,
                        y,
                        w,
                        h,
                        categories[category_id],
                        _concealment(annotation),
                        _contrast(annotation),
                    )
                )
    if problems:
        raise DataError(problems)
    return [categories[i] for i in sorted(categories)], boxes


def _annotated(annotation: Mapping[str, Any], key: str) -> tuple[Any, Any]:
    """``key`` as the annotation's own field, then as one of its ``attributes`` (CVAT style)."""
    attributes = annotation.get("attributes")
    return annotation.get(key), attributes.get(key) if isinstance(attributes, dict) else None


def _concealment(annotation: Mapping[str, Any]) -> str | None:
    """How the object was hidden: the annotation's own key, or its ``attributes``'."""
    for value in _annotated(annotation, "concealment"):
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def _contrast(annotation: Mapping[str, Any]) -> float | None:
    """The net attenuation change inside the box, where the annotation records one."""
    for value in _annotated(annotation, "contrast"):
        if _is_number(value):
            return float(value)
    return None


def _coco_categories(path: Path, entries: list[Any], problems: list[str]) -> dict[int, str]:
    names: dict[int, str] = {}
    for k, entry in enumerate(entries):
        where = f"{path}: categories[{k}]"
        if not (
            isinstance(entry, dict)
            and _is_int(entry.get("id"))
            and isinstance(entry.get("name"), str)
        ):
            problems.append(f"{where}: needs an integer 'id' and a string 'name'")
        elif entry["id"] in names or entry["name"] in names.values():
            problems.append(f"{where}: id {entry['id']} or name {entry['name']!r} repeats")
        else:
            names[entry["id"]] = entry["name"]
    return names


def _coco_images(
    path: Path, entries: list[Any], by_path: Mapping[str, ScanRecord], problems: list[str]
) -> dict[int, tuple[ScanRecord, float, float]]:
    """Image id -> (its manifest record, width, height)."""
    images: dict[int, tuple[ScanRecord, float, float]] = {}
    matched: dict[str, int] = {}
    for k, entry in enumerate(entries):
        where = f"{path}: images[{k}]"
        if not (
            isinstance(entry, dict)
            and _is_int(entry.get("id"))
            and isinstance(entry.get("file_name"), str)
        ):
            problems.append(f"{where}: needs an integer 'id' and a string 'file_name'")
            continue
        relative = _normalise_path(entry["file_name"])
        width, height = entry.get("width"), entry.get("height")
        if entry["id"] in images:
            problems.append(f"{where}, field 'id': {entry['id']} repeats")
        elif relative not in by_path:
            problems.append(
                f"{where}, field 'file_name': {entry['file_name']!r} matches no manifest path"
            )
        elif matched.setdefault(relative, k) != k:
            problems.append(
                f"{where}, field 'file_name': {relative!r} repeats images[{matched[relative]}]"
            )
        elif not (_is_number(width) and _is_number(height) and width > 0 and height > 0):
            problems.append(
                f"{where}: needs positive 'width' and 'height', got {width!r}, {height!r}"
            )
        else:
            images[entry["id"]] = (by_path[relative], float(width), float(height))
    return images


def _check_labels_agree_with_boxes(records: Sequence[ScanRecord], annotations: Path) -> None:
    """A clean scan with boxes is an error; an anomalous one without boxes a warning.

    Clean scans feed negative tiles, so a box on one would teach the model
    that a threat is normal. An anomalous scan without boxes still counts
    for scan-level metrics, but gives no training tiles.
    """
    contradicting = [r.scan_id for r in records if r.label == 0 and r.boxes]
    if contradicting:
        raise DataError([f"{annotations}: scans labelled 0 (clean) have boxes: {contradicting}"])
    unboxed = [r.scan_id for r in records if r.label == 1 and not r.boxes]
    if unboxed:
        warnings.warn(
            f"{len(unboxed)} scans labelled 1 have no boxes in {annotations} "
            f"(they count for scan metrics but give no training tiles): {unboxed[:10]}",
            DataWarning,
            stacklevel=3,
        )


def _check_groups_within_one_split(dataset: ScanDataset) -> None:
    splits_of_group: dict[str, set[str]] = {}
    for record in dataset.records:
        splits_of_group.setdefault(_group_key(record), set()).add(str(record.split))
    leaking = {key: sorted(splits) for key, splits in splits_of_group.items() if len(splits) > 1}
    if leaking:
        raise DataError(
            [
                f"{dataset.root}: group {key!r} spans splits {s}"
                for key, s in sorted(leaking.items())
            ]
        )


def _group_key(record: ScanRecord) -> str:
    """What must stay in one split: the container (``group`` column), else the scan."""
    group = record.extras.get("group")
    return f"group:{group}" if group else f"scan:{record.scan_id}"


def _round_half_up(value: float) -> int:
    return math.floor(value + 0.5)


def _normalise_path(text: str) -> str:
    """One spelling per relative path: forward slashes, no ``./``, no doubled separators."""
    return PurePosixPath(text.replace("\\", "/")).as_posix() if text else ""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _file_digest(paths: Sequence[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def _derived_digest(parent: str, tag: str) -> str:
    return hashlib.sha256(f"{parent}|{tag}".encode()).hexdigest()


def _content_digest(records: Sequence[ScanRecord], categories: Sequence[str]) -> str:
    """For a dataset built in code rather than loaded: a hash of what it holds."""
    content = [
        [
            r.scan_id,
            str(r.path),
            r.label,
            r.site,
            r.split,
            r.spacing_mm,
            [dataclasses.astuple(b) for b in r.boxes],
        ]
        for r in records
    ]
    return hashlib.sha256(json.dumps([content, list(categories)], default=str).encode()).hexdigest()
