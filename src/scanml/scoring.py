"""The batch scoring job behind ``scanml score``: every new scan in, one table row out.

:func:`score` reads a folder, glob or manifest of scan files, runs the model
on each whole scan and writes the scores table (``DESIGN.md`` section 3):
one row per input file, failures included, with the flagged decision, the
regions, and where its overlay (flagged scans) and DICOS Threat Detection
Report were written.

Crash safety. The job may be killed at any moment (SIGKILL, a lost node)
and rerun with the same arguments; the table must then hold every file
exactly once. Finished rows are committed in small batches as Parquet part
files in ``<out>.parts/`` (each written to a temporary name, flushed to
disk and renamed, so a part is whole or absent). Files already in the
table or in a part are skipped. At the end the table and the parts are
merged (one row per path, in input order) into ``<out>``, again through a
temporary file and a rename, and the parts are removed; a rerun first picks
up any parts a killed run left. A rerun of a finished job finds nothing to
do and leaves ``<out>`` untouched, byte for byte. A scan's overlay and
report are written (atomically) before its row is committed, so a
committed row never points at a missing file. A lock file in the parts
folder stops a second job writing the same table at the same time.

Throughput. Decoding (``read_scan``: DICOM parsing and pixel decoding, and
``prepare``: resampling to the model's grid) runs in worker processes
through a torch DataLoader, overlapping with the model in the main
process; pixels cross the process boundary as torch tensors, i.e. through
shared memory instead of a pipe, when ``/dev/shm`` has room for them. The
summary records how the time splits between decoding, the model and
writing.

:func:`score_paths` is the same per-scan code without the job around it:
the MLflow pyfunc model calls it, so ``mlflow models predict`` and
``scanml score`` give the same rows.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import math
import os
import re
import shutil
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from scanml.io import SUPPORTED_SUFFIXES, Scan, is_energy_partner, read_scan
from scanml.models import ModelBundle
from scanml.plots import save_overlay
from scanml.predict import Prediction, Predictor, Region
from scanml.preprocess import Preprocessing, prepare
from scanml.tdr import write_tdr

__all__ = [
    "REGION_TYPE",
    "SCORES_SCHEMA",
    "SCORE_COLUMNS",
    "InputItem",
    "ScoreSummary",
    "resolve_inputs",
    "score",
    "score_paths",
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
    ]
)
"""The scores table; :func:`score` writes it and :func:`score_paths` returns it as pandas."""

SCORE_COLUMNS: tuple[str, ...] = tuple(SCORES_SCHEMA.names)

# Committed rows per part file when not given: at most this much work is
# redone after a kill, and a part costs one fsync.
DEFAULT_BATCH_SIZE = 32
# A part is also committed after this many seconds, so a slow model on
# huge scans never holds minutes of work uncommitted.
_COMMIT_INTERVAL_S = 10.0
_DEFAULT_MAX_WORKERS = 8
_GLOB_CHARACTERS = re.compile(r"[*?\[]")
# Decoded pixels go from the workers through shared memory only when
# /dev/shm has this much room: Docker's default of 64 MB would kill the job
# with a bus error on the first large scan (and again on every rerun).
# Below it they are pickled through a pipe: slower, never fatal.
_MIN_SHARED_MEMORY_BYTES = 2 << 30


@dataclass(frozen=True)
class InputItem:
    """One file to score, with what a manifest may say about it."""

    path: Path  # absolute
    scan_id: str  # the manifest's, else the file name without its suffix
    spacing_mm: tuple[float, float] | None = None  # (row, column), for files without spacing
    site: str | None = None


@dataclass(frozen=True)
class ScoreSummary:
    """What one run of :func:`score` did.

    ``scanned`` counts scans scored in this run, ``failed`` the files that
    became error rows, ``skipped`` the files already in the table.
    ``timings`` holds seconds: ``decode`` (summed over the worker
    processes, so it may exceed the wall time), ``decode_wait`` (the model
    process waiting for decoded scans: decoding is the bottleneck when this
    is large), ``model`` and ``write`` (overlays, reports, table).
    """

    scanned: int
    flagged: int
    failed: int
    skipped: int
    seconds: float
    out: Path
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def scans_per_second(self) -> float:
        processed = self.scanned + self.failed
        return processed / self.seconds if self.seconds > 0 else math.nan

    def __str__(self) -> str:
        return (
            f"scanned {self.scanned}, flagged {self.flagged}, failed {self.failed},"
            f" skipped {self.skipped} in {self.seconds:.1f} s"
            f" ({self.scans_per_second:.2f} scans/s) -> {self.out}"
        )


def score(
    model_uri: str,
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    overlays: str | os.PathLike[str] | None = None,
    tdr: str | os.PathLike[str] | None = None,
    workers: int | None = None,
    device: str = "auto",
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = True,
    threshold: float | None = None,
    bundle: ModelBundle | None = None,
) -> ScoreSummary:
    """Score every scan in ``inputs`` with the model at ``model_uri`` into the Parquet table ``out``.

    ``model_uri``: ``runs:/...``, ``models:/NAME/VERSION``,
    ``models:/NAME@champion`` or a model folder. ``inputs``: a folder
    (searched recursively), a glob, a manifest CSV, or a list of these.
    ``overlays``: a folder for a PNG per flagged scan; ``tdr``: a folder for
    a DICOS Threat Detection Report per scored scan. ``workers``: decoding
    processes (default: one per core but one, at most 8; 0 decodes in this
    process). ``batch_size``: rows per committed part, i.e. the most work a
    kill can cost. ``threshold`` overrides the model's calibrated one; a
    scan is flagged when ``score > threshold``. ``bundle``: the model at
    ``model_uri`` already loaded (``scanml watch`` loads it once, not per scan).

    Killed and rerun with the same arguments, the job skips what is done;
    see the module docstring. Returns a summary, also printed when
    ``progress`` is on.
    """
    started = time.perf_counter()
    out = Path(os.path.abspath(out))
    overlays_dir, tdr_dir = (
        Path(os.path.abspath(d)) if d is not None else None for d in (overlays, tdr)
    )
    # A folder of outputs inside the input folder must not become input on a rerun.
    items = [
        item
        for item in resolve_inputs(inputs)
        if not any(d is not None and item.path.is_relative_to(d) for d in (overlays_dir, tdr_dir))
    ]
    timings = {"decode": 0.0, "decode_wait": 0.0, "model": 0.0, "write": 0.0}
    counts = _Counts()
    with _PartStore.open(out) as store:
        done = store.done_paths()
        todo = [item for item in items if str(item.path) not in done]
        if todo:
            bundle = bundle if bundle is not None else ModelBundle.load(model_uri)
            scorer = _ScanScorer(
                predictor=Predictor(bundle, device=device),
                model_uri=model_uri,
                threshold=bundle.threshold if threshold is None else float(threshold),
                overlays=overlays_dir,
                tdr=tdr_dir,
                file_stems=_file_stems(items),
                timings=timings,
            )
            counts = _run(
                scorer, todo, store, workers=workers, batch_size=batch_size, progress=progress
            )
        if store.has_parts() or not out.exists():
            write_started = time.perf_counter()
            store.merge(order=[str(item.path) for item in items])
            timings["write"] += time.perf_counter() - write_started
    summary = ScoreSummary(
        scanned=counts.scanned,
        flagged=counts.flagged,
        failed=counts.failed,
        skipped=len(items) - len(todo),
        seconds=time.perf_counter() - started,
        out=out,
        timings=timings,
    )
    if progress:
        print(summary, file=sys.stderr)
    return summary


def score_paths(
    predictor: Predictor,
    paths: Sequence[str | os.PathLike[str]],
    *,
    model_uri: str,
    threshold: float,
) -> pd.DataFrame:
    """Score ``paths`` one after the other in this process; the scores table's rows as pandas.

    The per-scan code of :func:`score` without the job around it (no
    workers, no overlays or reports, no crash safety): what the MLflow
    pyfunc model runs. The frame is built through :data:`SCORES_SCHEMA`,
    so it equals ``pandas.read_parquet`` of a table :func:`score` wrote
    (up to ``seconds`` and the output file columns).
    """
    scorer = _ScanScorer(
        predictor=predictor,
        model_uri=model_uri,
        threshold=float(threshold),
        overlays=None,
        tdr=None,
        file_stems={},
        timings={"decode": 0.0, "model": 0.0, "write": 0.0},
    )
    preprocessing = predictor.bundle.preprocessing
    rows = [
        scorer.row_for(_decode(_file_item(Path(os.path.abspath(path))), preprocessing))
        for path in paths
    ]
    return pa.Table.from_pylist(rows, schema=SCORES_SCHEMA).to_pandas()


def resolve_inputs(
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
) -> list[InputItem]:
    """The files to score, in a stable order, each once.

    Each input is a folder (every file with a supported suffix below it,
    sorted by path), a manifest ``.csv`` (its ``path`` column, relative to
    the manifest, with ``scan_id``, ``site`` and ``row_spacing_mm`` /
    ``col_spacing_mm`` or ``spacing_mm`` when present), a single file, or a
    glob (``**`` recurses; sorted). A glob matching nothing yields nothing:
    an empty inbox is a normal day. Raises FileNotFoundError for a path
    that is neither.
    """
    sources = [inputs] if isinstance(inputs, str | os.PathLike) else list(inputs)
    items: dict[Path, InputItem] = {}
    for source in sources:
        for item in _resolve_source(source):
            items.setdefault(item.path, item)
    return list(items.values())


# -- the job ------------------------------------------------------------------------------


@dataclass
class _Counts:
    scanned: int = 0
    flagged: int = 0
    failed: int = 0


def _run(
    scorer: _ScanScorer,
    todo: list[InputItem],
    store: _PartStore,
    *,
    workers: int | None,
    batch_size: int,
    progress: bool,
) -> _Counts:
    """Decode in workers, score here, commit rows in parts as they finish."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    workers = _default_workers() if workers is None else workers
    loader = DataLoader(
        _DecodingDataset(
            todo, scorer.predictor.bundle.preprocessing, share_memory=_shared_memory_is_roomy()
        ),
        batch_size=None,
        num_workers=workers,
        collate_fn=_as_is,
        prefetch_factor=2 if workers else None,
    )
    counts = _Counts()
    pending: list[dict[str, Any]] = []
    last_commit = time.monotonic()
    with tqdm(total=len(todo), unit="scan", disable=not progress, desc="scoring") as bar:
        for decoded in _timing_waits(loader, scorer.timings):
            row = scorer.row_for(decoded)
            pending.append(row)
            counts.failed += row["error"] is not None
            counts.scanned += row["error"] is None
            counts.flagged += bool(row["flagged"])
            bar.update()
            bar.set_postfix(flagged=counts.flagged, failed=counts.failed, refresh=False)
            if len(pending) >= batch_size or time.monotonic() - last_commit > _COMMIT_INTERVAL_S:
                scorer.commit(store, pending)
                pending, last_commit = [], time.monotonic()
        scorer.commit(store, pending)
    return counts


def _timing_waits(
    decoded_scans: Iterable[_Decoded], timings: dict[str, float]
) -> Iterator[_Decoded]:
    """The decoded scans, adding the time spent waiting for each to ``timings["decode_wait"]``."""
    iterator = iter(decoded_scans)
    while True:
        started = time.perf_counter()
        decoded = next(iterator, None)
        timings["decode_wait"] += time.perf_counter() - started
        if decoded is None:
            return
        yield decoded


def _default_workers() -> int:
    """One decoding process per core but one (the model's), at most 8."""
    return max(1, min(_DEFAULT_MAX_WORKERS, (os.cpu_count() or 2) - 1))


def _shared_memory_is_roomy() -> bool:
    try:
        return shutil.disk_usage("/dev/shm").free >= _MIN_SHARED_MEMORY_BYTES
    except OSError:  # no /dev/shm (macOS)
        return False


def _as_is(sample: _Decoded) -> _Decoded:
    """DataLoader collate function: samples are whole scans, never batched."""
    return sample


@dataclass
class _Decoded:
    """A scan read and prepared for the model, or why that failed.

    ``prepared`` is the model's input (float32 [C, H', W'] on the model
    grid); the scan itself is kept for its overlay, report and size.
    Between a worker and the main process both pixel arrays can travel as
    torch tensors, which the DataLoader moves through shared memory; numpy
    arrays are pickled through a pipe (100 MB for a large dual-energy scan).
    """

    item: InputItem
    scan: Scan | None
    prepared: np.ndarray | torch.Tensor | None
    error: str | None
    seconds: float

    def to_tensors(self) -> _Decoded:
        """Pixels as tensors, for the trip to the main process."""
        if self.scan is not None:  # from_numpy refuses negative strides: make them contiguous
            self.scan.attenuation = torch.from_numpy(np.ascontiguousarray(self.scan.attenuation))
            self.prepared = torch.from_numpy(np.ascontiguousarray(self.prepared))
        return self

    def to_arrays(self) -> _Decoded:
        """Pixels back as numpy arrays (no copy), as the rest of scanml expects them."""
        if self.scan is not None and isinstance(self.prepared, torch.Tensor):
            self.scan.attenuation = self.scan.attenuation.numpy()
            self.prepared = self.prepared.numpy()
        return self


class _DecodingDataset(Dataset):
    """:func:`_decode` for each input, run by the DataLoader's worker processes."""

    def __init__(
        self, items: list[InputItem], preprocessing: Preprocessing, *, share_memory: bool
    ) -> None:
        self.items = items
        self.preprocessing = preprocessing
        self.share_memory = share_memory

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> _Decoded:
        decoded = _decode(self.items[index], self.preprocessing)
        return decoded.to_tensors() if self.share_memory else decoded


def _decode(item: InputItem, preprocessing: Preprocessing) -> _Decoded:
    """Read one scan and prepare it; a failure of any kind becomes the error text of its row.

    Besides unreadable files (ScanReadError), ``prepare`` refuses for
    instance a single-energy scan given to a dual-energy model.
    """
    started = time.perf_counter()
    try:
        scan = read_scan(item.path, spacing_mm=item.spacing_mm, site=item.site)
        prepared = prepare(scan, preprocessing)
    except Exception as exc:  # the file's row says why; the job carries on
        return _Decoded(item, None, None, _error_text(exc), time.perf_counter() - started)
    return _Decoded(item, scan, prepared, None, time.perf_counter() - started)


@dataclass
class _ScanScorer:
    """Turns a decoded scan into its table row, writing its overlay and report on the way."""

    predictor: Predictor
    model_uri: str
    threshold: float
    overlays: Path | None
    tdr: Path | None
    file_stems: dict[Path, str]
    timings: dict[str, float]

    def row_for(self, decoded: _Decoded) -> dict[str, Any]:
        """The row for one scan; any exception while scoring it becomes an error row."""
        self.timings["decode"] += decoded.seconds
        if decoded.scan is None:
            return self._error_row(decoded.item, decoded.error, decoded.seconds)
        started = time.perf_counter()
        decoded.to_arrays()
        try:
            return self._scored_row(decoded.item, decoded.scan, decoded.prepared, decoded.seconds)
        except Exception as exc:  # one bad scan must not stop the job
            seconds = decoded.seconds + time.perf_counter() - started
            return self._error_row(decoded.item, _error_text(exc), seconds)

    def commit(self, store: _PartStore, rows: list[dict[str, Any]]) -> None:
        started = time.perf_counter()
        store.append(rows)
        self.timings["write"] += time.perf_counter() - started

    def _scored_row(
        self, item: InputItem, scan: Scan, prepared: np.ndarray, decode_seconds: float
    ) -> dict[str, Any]:
        model_started = time.perf_counter()
        prediction = self.predictor.predict_array(
            prepared, scan_shape_hw=(scan.height, scan.width), scan_spacing_mm=scan.spacing_mm
        )
        model_seconds = time.perf_counter() - model_started
        self.timings["model"] += model_seconds
        # The job's own rule rather than prediction.flagged: the threshold may
        # be overridden, and scanml flags strictly above it (scanml.metrics).
        flagged = bool(prediction.score > self.threshold)

        write_started = time.perf_counter()
        overlay = self._write_overlay(item, scan, prediction) if flagged else None
        report = self._write_report(item, scan, prediction, flagged, model_seconds)
        write_seconds = time.perf_counter() - write_started
        self.timings["write"] += write_seconds
        return {
            "scan_id": item.scan_id,
            "path": str(item.path),
            "site": item.site or scan.meta.get("site"),
            "score": float(prediction.score),
            "flagged": flagged,
            "threshold": self.threshold,
            "regions": [self._region_record(region) for region in prediction.regions],
            "model_uri": self.model_uri,
            "error": None,
            "height": scan.height,
            "width": scan.width,
            "seconds": decode_seconds + model_seconds + write_seconds,
            "overlay": str(overlay) if overlay else None,
            "tdr": str(report) if report else None,
        }

    def _error_row(self, item: InputItem, error: str | None, seconds: float) -> dict[str, Any]:
        return {
            "scan_id": item.scan_id,
            "path": str(item.path),
            "site": item.site,
            "score": None,
            "flagged": None,
            "threshold": self.threshold,
            "regions": [],
            "model_uri": self.model_uri,
            "error": error,
            "height": None,
            "width": None,
            "seconds": seconds,
            "overlay": None,
            "tdr": None,
        }

    def _region_record(self, region: Region) -> dict[str, Any]:
        return {
            "x": float(region.x),
            "y": float(region.y),
            "w": float(region.w),
            "h": float(region.h),
            "score": float(region.score),
            "category": region.category,
        }

    def _write_overlay(self, item: InputItem, scan: Scan, prediction: Prediction) -> Path | None:
        if self.overlays is None:
            return None
        return save_overlay(
            scan,
            prediction,
            self.overlays / f"{self.file_stems[item.path]}.png",
            title=f"{item.scan_id}  score {prediction.score:.3f} > {self.threshold:.3f}",
            heat_floor=self.predictor.bundle.region_threshold,
        )

    def _write_report(
        self,
        item: InputItem,
        scan: Scan,
        prediction: Prediction,
        flagged: bool,
        model_seconds: float,
    ) -> Path | None:
        if self.tdr is None:
            return None
        return write_tdr(
            self.tdr / f"{self.file_stems[item.path]}.dcm",
            scan_meta=scan.meta,
            prediction_regions=prediction.regions,
            score=float(prediction.score),
            threshold=self.threshold,
            flagged=flagged,
            model_uri=self.model_uri,
            class_names=self.predictor.bundle.class_names,
            processing_ms=model_seconds * 1000,
            peak_xy=prediction.peak_xy,
        )


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _file_stems(items: Sequence[InputItem]) -> dict[Path, str]:
    """A file name (without suffix) for each input's overlay and report.

    The scan id, made safe for a file name; where two inputs share one
    (``a/1.dcm`` and ``b/1.dcm``), a short hash of the path tells them
    apart. Computed over all inputs, so a rerun names every file the same.
    """
    safe = {item.path: re.sub(r"[^A-Za-z0-9._-]", "_", item.scan_id) or "scan" for item in items}
    seen: dict[str, int] = {}
    for name in safe.values():
        seen[name] = seen.get(name, 0) + 1
    return {
        path: name
        if seen[name] == 1
        else f"{name}-{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
        for path, name in safe.items()
    }


# -- inputs -------------------------------------------------------------------------------


def _resolve_source(source: str | os.PathLike[str]) -> list[InputItem]:
    path = Path(source).expanduser()
    if path.is_dir():
        files = (
            p
            for p in path.rglob("*")
            if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES and not is_energy_partner(p)
        )
        return [_file_item(Path(os.path.abspath(p))) for p in sorted(files)]
    if path.is_file() and path.suffix.lower() == ".csv":
        return _manifest_items(path)
    if path.is_file():
        return [_file_item(Path(os.path.abspath(path)))]
    if _GLOB_CHARACTERS.search(str(path)):
        matches = sorted(Path(os.path.abspath(p)) for p in glob.glob(str(path), recursive=True))
        return [_file_item(match) for match in matches if match.is_file()]
    raise FileNotFoundError(f"{source}: no such file or folder, and not a glob")


def _file_item(path: Path) -> InputItem:
    return InputItem(path=path, scan_id=path.stem)


def _manifest_items(manifest: Path) -> list[InputItem]:
    """One item per manifest row; paths are relative to the manifest's folder."""
    table = pd.read_csv(manifest, dtype={"path": str, "scan_id": str, "site": str})
    if "path" not in table.columns:
        raise ValueError(
            f"{manifest}: a manifest needs a 'path' column; it has {list(table.columns)}"
        )
    folder = manifest.parent
    items = []
    for record in table.to_dict("records"):
        path = Path(os.path.abspath(folder / record["path"]))
        items.append(
            InputItem(
                path=path,
                scan_id=_text(record.get("scan_id")) or _file_item(path).scan_id,
                spacing_mm=_manifest_spacing(record),
                site=_text(record.get("site")),
            )
        )
    return items


def _manifest_spacing(record: dict[str, Any]) -> tuple[float, float] | None:
    row, column = record.get("row_spacing_mm"), record.get("col_spacing_mm")
    if _number(row) is not None and _number(column) is not None:
        return (float(row), float(column))
    square = _number(record.get("spacing_mm"))
    return (square, square) if square is not None else None


def _text(value: Any) -> str | None:
    """A manifest cell as text; None for an empty cell (pandas reads it as NaN)."""
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def _number(value: Any) -> float | None:
    """A manifest cell as a number; None for an empty cell."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value)


# -- crash-safe table ---------------------------------------------------------------------


class _PartStore:
    """The scores table ``out`` plus its committed-but-not-merged parts in ``<out>.parts/``."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.parts_dir = out.with_name(f"{out.name}.parts")

    @classmethod
    @contextlib.contextmanager
    def open(cls, out: Path) -> Iterator[_PartStore]:
        """Lock the table for this job, drop half-written temporaries, and unlock at the end.

        The lock is a POSIX record lock on ``<out>.parts/lock``: the kernel
        releases it when the process dies, however it dies, and, unlike an
        flock, the forked decoding workers do not share it, so a killed
        job whose workers linger for a few seconds leaves no lock behind.
        """
        store = cls(out)
        store.parts_dir.mkdir(parents=True, exist_ok=True)
        lock_path = store.parts_dir / "lock"
        with lock_path.open("a") as lock:
            try:
                fcntl.lockf(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except (BlockingIOError, PermissionError):
                raise RuntimeError(f"another scoring job is writing {out}") from None
            for partial in store.parts_dir.glob("*.partial"):
                partial.unlink()
            out.with_name(f".{out.name}.partial").unlink(missing_ok=True)
            yield store
            if not store.has_parts():
                lock_path.unlink()
                store.parts_dir.rmdir()

    def done_paths(self) -> set[str]:
        """Paths with a row in the table or in a part: the files a rerun skips."""
        sources = ([self.out] if self.out.exists() else []) + self._parts()
        return {
            path
            for source in sources
            for path in pq.read_table(source, columns=["path"])["path"].to_pylist()
        }

    def has_parts(self) -> bool:
        """Whether committed rows wait to be merged (this run's, or a killed run's)."""
        return bool(self._parts())

    def append(self, rows: list[dict[str, Any]]) -> None:
        """Commit ``rows`` as the next part: whole and on disk once this returns."""
        if not rows:
            return
        parts = self._parts()
        number = int(parts[-1].stem.split("-")[1]) + 1 if parts else 0
        table = pa.Table.from_pylist(rows, schema=SCORES_SCHEMA)
        _write_table_atomically(table, self.parts_dir / f"part-{number:06d}.parquet")

    def merge(self, order: Sequence[str]) -> None:
        """Fold the parts into the table: one row per path, inputs' order, then any older rows.

        A path in both the table and a part (a kill between writing the
        table and removing the parts) keeps its first row; the rows are
        the same. Rows of files no longer among the inputs are kept, after
        the inputs, in their previous order.
        """
        parts = self._parts()
        sources = ([self.out] if self.out.exists() else []) + parts
        combined = pa.concat_tables(
            [SCORES_SCHEMA.empty_table()]
            + [
                pq.read_table(source).select(SCORE_COLUMNS).cast(SCORES_SCHEMA)
                for source in sources
            ]
        )
        position = {path: index for index, path in enumerate(order)}
        first_row: dict[str, int] = {}
        for row, path in enumerate(combined["path"].to_pylist()):
            first_row.setdefault(path, row)
        ranked = sorted(
            first_row.items(), key=lambda entry: (position.get(entry[0], len(order)), entry[1])
        )
        _write_table_atomically(
            combined.take(pa.array([row for _, row in ranked], type=pa.int64())), self.out
        )
        for part in parts:
            part.unlink()
        _fsync_directory(self.parts_dir)

    def _parts(self) -> list[Path]:
        return sorted(self.parts_dir.glob("part-*.parquet"))


def _write_table_atomically(table: pa.Table, path: Path) -> None:
    """Write ``table`` beside ``path``, flush it to disk, rename it over ``path``, flush the folder."""
    partial = path.with_name(f".{path.name}.partial")
    pq.write_table(table, partial)
    with partial.open("rb") as stream:
        os.fsync(stream.fileno())
    os.replace(partial, path)
    _fsync_directory(path.parent)


def _fsync_directory(folder: Path) -> None:
    """Make renames and removals in ``folder`` survive a power cut."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
