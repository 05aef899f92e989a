"""The batch scoring job behind ``scanml score``: every new scan in, one table row out.

:func:`score` reads a folder, glob or manifest of scan files, runs the model
on each whole scan and writes the scores table (``DESIGN.md`` section 3):
one row per input file, failures included, with the flagged decision, the
regions, and where its overlay (flagged scans) and DICOS Threat Detection
Report were written.

Hostile input. Each file is decoded in a worker process
(:mod:`scanml.decode_pool`): a decoder that panics, crashes, is killed for
memory or hangs past ``decode_timeout_s`` costs that file an error row, and
the job carries on. Reading budgets are checked before anything large is
allocated (:mod:`scanml.io.budget`), and so is the size of the scan on the
model's grid (:data:`MAX_MODEL_PIXELS`), which a forged pixel spacing would
otherwise blow up.

Crash safety and reruns. The job may be killed at any moment and rerun
with the same arguments; the table then holds every file exactly once
(:mod:`scanml.scores_table`). A rerun skips a file whose row has the same
content fingerprint, scores again one that changed or reappeared, retries
rows whose overlay or report could not be written, and retries error rows
only when asked (``retry_failed``): a file that killed its decoder would
kill it again. A table holds the scores of one model version: a job whose
model resolves to another version than the table's refuses to mix them.

Side outputs. An overlay or report that cannot be written (read-only or
full disk) is recorded in the row's ``output_error``; the score stands.

Throughput. Decoding (``read_scan`` and ``prepare``) runs in the workers,
overlapping with the model in the main process; pixels cross the process
boundary as torch tensors, through shared memory, when ``/dev/shm`` has
room for them. The summary records how the time splits.

:func:`score_paths` is the same per-scan code without the job around it:
the MLflow pyfunc model calls it, so ``mlflow models predict`` and
``scanml score`` give the same rows.
"""

from __future__ import annotations

import functools
import math
import os
import shutil
import sys
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
from tqdm.auto import tqdm

from scanml.decode_pool import guarded_map
from scanml.mlflow_client import ModelSourceError, ResolvedModel, TrackingServerError, resolve_model
from scanml.models import ModelBundle
from scanml.predict import Predictor
from scanml.score_inputs import InputItem, file_item, resolve_inputs, resolve_job_inputs
from scanml.score_rows import (
    MAX_MODEL_PIXELS,
    Decoded,
    ScanScorer,
    decode,
    decode_in_worker,
    failed_decode,
    file_stems,
)
from scanml.scores_table import (
    REGION_TYPE,
    SCORE_COLUMNS,
    SCORES_SCHEMA,
    ScoresTable,
    TableLockedError,
    fingerprint,
)

__all__ = [
    "MAX_MODEL_PIXELS",
    "REGION_TYPE",
    "SCORES_SCHEMA",
    "SCORE_COLUMNS",
    "InputItem",
    "ScoreSummary",
    "ScoringError",
    "TableLockedError",
    "resolve_inputs",
    "score",
    "score_paths",
]

# Committed rows per part file when not given: at most this much work is
# redone after a kill, and a part costs one fsync.
DEFAULT_BATCH_SIZE = 32
# A part is also committed after this many seconds, so a slow model on
# huge scans never holds minutes of work uncommitted.
_COMMIT_INTERVAL_S = 10.0
_DEFAULT_MAX_WORKERS = 8
# A file whose decoding takes longer than this (a real 25-megapixel scan
# takes seconds) is stopped and becomes an error row.
DEFAULT_DECODE_TIMEOUT_S = 300.0
# Decoded pixels go from the workers through shared memory only when
# /dev/shm has this much room: Docker's default of 64 MB would kill the job
# with a bus error on the first large scan (and again on every rerun).
# Below it they are pickled through a pipe: slower, never fatal.
_MIN_SHARED_MEMORY_BYTES = 2 << 30


class ScoringError(ValueError):
    """The job cannot start as asked (its output, model or threshold); one line for the user."""


@dataclass(frozen=True)
class ScoreSummary:
    """What one run of :func:`score` did.

    ``scanned`` counts scans scored in this run, ``failed`` the files that
    became error rows, ``skipped`` the files already in the table,
    ``outputs_failed`` the scored scans whose overlay or report could not be
    written (their scores stand), ``duplicates`` the manifest rows that
    repeated a path. ``timings`` holds seconds: ``decode`` (summed over the
    worker processes, so it may exceed the wall time), ``decode_wait`` (the
    model process waiting for decoded scans), ``model`` and ``write``.
    """

    scanned: int
    flagged: int
    failed: int
    skipped: int
    seconds: float
    out: Path
    timings: dict[str, float] = field(default_factory=dict)
    outputs_failed: int = 0
    duplicates: int = 0

    @property
    def scans_per_second(self) -> float:
        processed = self.scanned + self.failed
        return processed / self.seconds if self.seconds > 0 else math.nan

    def __str__(self) -> str:
        extra = f", outputs failed {self.outputs_failed}" if self.outputs_failed else ""
        extra += f", duplicate rows {self.duplicates}" if self.duplicates else ""
        return (
            f"scanned {self.scanned}, flagged {self.flagged}, failed {self.failed},"
            f" skipped {self.skipped}{extra} in {self.seconds:.1f} s"
            f" ({self.scans_per_second:.2f} scans/s) -> {self.out}"
        )


@dataclass(frozen=True)
class JobPlan:
    """A scoring job's checked arguments: absolute outputs, input items, the resolved model."""

    out: Path
    overlays_dir: Path | None
    tdr_dir: Path | None
    items: list[InputItem]
    model: ResolvedModel
    duplicates: int  # inputs named twice, reported and scored once


def plan_job(
    model_uri: str,
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    overlays: str | os.PathLike[str] | None,
    tdr: str | os.PathLike[str] | None,
    batch_size: int,
    threshold: float | None,
    allow_outside: bool,
    progress: bool,
) -> JobPlan:
    """What every scoring engine checks and resolves before it reads a scan.

    Output folders inside the input never become input on a rerun. Raises
    :class:`ScoringError` for any argument at fault.
    """
    out = Path(os.path.abspath(out))
    if batch_size < 1:
        raise ScoringError(f"batch_size must be at least 1, got {batch_size}")
    if threshold is not None and not math.isfinite(threshold):
        raise ScoringError(f"--threshold {threshold}: not a finite number")
    _check_writable(out.parent, what=f"--out {out}")
    overlays_dir, tdr_dir = (
        Path(os.path.abspath(d)) if d is not None else None for d in (overlays, tdr)
    )
    for folder, name in ((overlays_dir, "--overlays"), (tdr_dir, "--tdr")):
        if folder is not None:
            _warn_if_unwritable(folder, name, progress)
    try:
        resolved_inputs = resolve_job_inputs(inputs, allow_outside=allow_outside)
    except (ValueError, FileNotFoundError) as exc:
        raise ScoringError(f"--input: {exc}") from None
    _report_duplicates(resolved_inputs.duplicates, progress)
    items = [
        item
        for item in resolved_inputs.items
        if not any(d is not None and item.path.is_relative_to(d) for d in (overlays_dir, tdr_dir))
    ]
    return JobPlan(
        out, overlays_dir, tdr_dir, items, _resolve(model_uri), len(resolved_inputs.duplicates)
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
    allow_outside: bool = False,
    retry_failed: bool = False,
    decode_timeout_s: float = DEFAULT_DECODE_TIMEOUT_S,
    bundle: ModelBundle | None = None,
) -> ScoreSummary:
    """Score every scan in ``inputs`` with the model at ``model_uri`` into the Parquet table ``out``.

    ``model_uri``: ``runs:/...``, ``models:/NAME/VERSION``,
    ``models:/NAME@champion`` or a model folder. ``inputs``: a folder
    (searched recursively), a glob, a manifest CSV (paths inside its folder
    unless ``allow_outside``), or a list of these. ``overlays``: a folder
    for a PNG per flagged scan; ``tdr``: a folder for a DICOS Threat
    Detection Report per scored scan. ``workers``: decoding processes
    (default: one per core but one, at most 8; 0 decodes in this process,
    unguarded). ``batch_size``: rows per committed part, i.e. the most work
    a kill can cost. ``threshold`` overrides the model's calibrated one; a
    scan is flagged when ``score > threshold``. ``retry_failed`` scores
    error rows again. ``bundle``: the model at ``model_uri`` already loaded
    (``scanml watch`` loads it once, not per scan).

    Raises :class:`ScoringError` (an unwritable ``out``, a model that does
    not exist or differs from the one the table holds, a threshold that is
    not a finite number), :class:`~scanml.scores_table.TableLockedError`
    (another job writes ``out``) and
    :class:`~scanml.mlflow_client.TrackingServerError`, all before any scan
    is read. Returns a summary, also printed when ``progress`` is on.
    """
    started = time.perf_counter()
    if workers is not None and workers < 0:
        raise ScoringError(f"--workers {workers}: must be 0 or more")
    job = plan_job(
        model_uri,
        inputs,
        out,
        overlays=overlays,
        tdr=tdr,
        batch_size=batch_size,
        threshold=threshold,
        allow_outside=allow_outside,
        progress=progress,
    )
    out, overlays_dir, tdr_dir, items, model = (
        job.out,
        job.overlays_dir,
        job.tdr_dir,
        job.items,
        job.model,
    )
    timings = {"decode": 0.0, "decode_wait": 0.0, "model": 0.0, "write": 0.0}
    counts = _Counts()
    with ScoresTable.open(out) as table:
        fingerprints = {item.path: _fingerprint(item) for item in items}
        todo = _todo(
            table, model, items, fingerprints, retry_failed, wants_outputs=bool(overlays or tdr)
        )
        if todo:
            bundle = bundle if bundle is not None else ModelBundle.load(model.load_uri)
            if not math.isfinite(bundle.threshold):
                raise ScoringError(
                    f"--model {model_uri}: its threshold {bundle.threshold} is not a finite"
                    " number; pass --threshold"
                )
            scorer = ScanScorer(
                predictor=Predictor(bundle, device=device),
                model_uri=model_uri,
                model=model,
                threshold=bundle.threshold if threshold is None else float(threshold),
                overlays=overlays_dir,
                tdr=tdr_dir,
                file_stems=file_stems(items),
                fingerprints=fingerprints,
                timings=timings,
            )
            counts = _run(
                scorer,
                todo,
                table,
                workers=workers,
                batch_size=batch_size,
                progress=progress,
                decode_timeout_s=decode_timeout_s,
            )
        if table.has_parts() or not out.exists():
            write_started = time.perf_counter()
            table.merge(order=[str(item.path) for item in items])
            timings["write"] += time.perf_counter() - write_started
    summary = ScoreSummary(
        scanned=counts.scanned,
        flagged=counts.flagged,
        failed=counts.failed,
        skipped=len(items) - len(todo),
        seconds=time.perf_counter() - started,
        out=out,
        timings=timings,
        outputs_failed=counts.outputs_failed,
        duplicates=job.duplicates,
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
    (up to ``seconds``, the output file columns and the resolved model).
    """
    scorer = ScanScorer(
        predictor=predictor,
        model_uri=model_uri,
        model=ResolvedModel(model_uri, model_uri),
        threshold=float(threshold),
        overlays=None,
        tdr=None,
        file_stems={},
        fingerprints={},
        timings={"decode": 0.0, "model": 0.0, "write": 0.0},
    )
    preprocessing = predictor.bundle.preprocessing
    rows = []
    for path in paths:
        item = file_item(Path(os.path.abspath(path)))
        scorer.fingerprints[item.path] = fingerprint(item.path)
        rows.append(scorer.row_for(decode(item, preprocessing)))
    return pa.Table.from_pylist(rows, schema=SCORES_SCHEMA).to_pandas()


# -- before the job -----------------------------------------------------------------------


def _resolve(model_uri: str) -> ResolvedModel:
    try:
        return resolve_model(model_uri)
    except (ModelSourceError, TrackingServerError) as exc:
        raise ScoringError(str(exc)) from None


def _check_writable(folder: Path, *, what: str) -> None:
    """Create ``folder`` if needed and write a probe file into it; ScoringError if that fails."""
    reason = _unwritable_reason(folder)
    if reason is not None:
        raise ScoringError(f"{what}: cannot write into {folder} ({reason})")


def _warn_if_unwritable(folder: Path, option: str, progress: bool) -> None:
    """Side outputs: an unwritable folder is reported now and recorded per row; scores go on."""
    reason = _unwritable_reason(folder)
    if reason is not None:
        print(
            f"scanml score: warning: {option} {folder} is not writable ({reason}): scans are"
            " still scored, and each row's output_error says what was not written",
            file=sys.stderr,
        )


def _unwritable_reason(folder: Path) -> str | None:
    probe = folder / f".scanml-probe-{uuid.uuid4().hex}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    return None


def _report_duplicates(duplicates: list[str], progress: bool) -> None:
    if duplicates and progress:
        shown = "; ".join(duplicates[:5]) + (" ..." if len(duplicates) > 5 else "")
        print(
            f"scanml score: warning: {len(duplicates)} manifest row(s) repeat a path and are"
            f" scored once: {shown}",
            file=sys.stderr,
        )


def _fingerprint(item: InputItem) -> str | None:
    return None if item.refusal is not None else fingerprint(item.path)


def _todo(
    table: ScoresTable,
    model: ResolvedModel,
    items: list[InputItem],
    fingerprints: dict[Path, str | None],
    retry_failed: bool,
    *,
    wants_outputs: bool,
) -> list[InputItem]:
    """The items a rerun must score; refuses a table that holds another model's scores."""
    rows = table.rows(
        [
            "path",
            "fingerprint",
            "error",
            "output_error",
            "model_uri",
            "model_name",
            "model_version",
            "model_run_id",
        ]
    ).to_pylist()
    for row in rows:
        if not _same_model(model, row):
            recorded = ResolvedModel(
                row["model_uri"],
                row["model_uri"],
                row["model_name"],
                row["model_version"],
                row["model_run_id"],
            ).describe()
            raise ScoringError(
                f"{table.out} holds scores of {recorded}, but {model.uri} is now"
                f" {model.describe()}: scores of two models are never mixed in one table;"
                " write to a new --out (or remove the old table to rescore everything)"
            )
    latest = {row["path"]: row for row in rows}  # parts come after the table: newest wins
    todo = []
    for item in items:
        row = latest.get(str(item.path))
        if (
            row is None
            or row["fingerprint"] != fingerprints[item.path]
            or (row["error"] is not None and retry_failed)
            or (row["output_error"] is not None and wants_outputs)
        ):
            todo.append(item)
    return todo


def _same_model(model: ResolvedModel, row: dict[str, Any]) -> bool:
    if row["model_name"] is None and row["model_run_id"] is None and model.name is None:
        return model.run_id is not None or row["model_uri"] == model.uri
    return model.same_model_as(row["model_name"], row["model_version"], row["model_run_id"])


# -- the job ------------------------------------------------------------------------------


@dataclass
class _Counts:
    scanned: int = 0
    flagged: int = 0
    failed: int = 0
    outputs_failed: int = 0


def _run(
    scorer: ScanScorer,
    todo: list[InputItem],
    table: ScoresTable,
    *,
    workers: int | None,
    batch_size: int,
    progress: bool,
    decode_timeout_s: float,
) -> _Counts:
    """Decode in guarded workers, score here, commit rows in parts as they finish."""
    workers = _default_workers() if workers is None else workers
    preprocessing = scorer.predictor.bundle.preprocessing
    if workers == 0:
        decoded_scans: Iterable[Decoded] = (decode(item, preprocessing) for item in todo)
    else:
        decoded_scans = guarded_map(
            functools.partial(
                decode_in_worker,
                preprocessing=preprocessing,
                share_memory=_shared_memory_is_roomy(),
            ),
            todo,
            workers=workers,
            on_failure=failed_decode,
            timeout_s=decode_timeout_s,
        )
    counts = _Counts()
    pending: list[dict[str, Any]] = []
    last_commit = time.monotonic()
    with tqdm(total=len(todo), unit="scan", disable=not progress, desc="scoring") as bar:
        for decoded in _timing_waits(decoded_scans, scorer.timings):
            row = scorer.row_for(decoded)
            pending.append(row)
            counts.failed += row["error"] is not None
            counts.scanned += row["error"] is None
            counts.flagged += bool(row["flagged"])
            counts.outputs_failed += row["output_error"] is not None
            bar.update()
            bar.set_postfix(flagged=counts.flagged, failed=counts.failed, refresh=False)
            if len(pending) >= batch_size or time.monotonic() - last_commit > _COMMIT_INTERVAL_S:
                scorer.commit(table, pending)
                pending, last_commit = [], time.monotonic()
        scorer.commit(table, pending)
    return counts


def _timing_waits(decoded_scans: Iterable[Decoded], timings: dict[str, float]) -> Iterator[Decoded]:
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
