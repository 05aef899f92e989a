"""Batch scoring through Spark: ``scanml score --engine spark``, and a function a notebook calls.

:func:`score_with_spark` is :func:`scanml.scoring.score` with Spark doing the
scans: the same inputs, the same model package (the registered MLflow model;
each Spark worker loads the weights inside it once), the same per-scan row
function (:class:`~scanml.score_rows.ScanScorer`) and the same table writer
(:class:`~scanml.scores_table.ScoresTable`). So the result columns are the
same, and so is the guarantee: a killed job rerun neither loses nor
duplicates a scan.

How. The driver decides what is left to do exactly as the local job does
(a file whose row has the same fingerprint is skipped), then sends the rest
to Spark in waves of one partition per task slot and ``batch_size`` scans
per partition. Each partition comes back as rows; the driver commits each
one as a part of the table, whole or absent, before the next wave. A kill
costs at most the wave in flight; the rerun starts with the committed
parts. Only the driver writes the table, under the table's lock.

Scan paths must be readable from the Spark workers (a shared filesystem on
a cluster; the same one in ``local[*]``). Decoding runs inside the Spark
worker, not in the guarded decoding processes of the local job: a decoder
that crashes its process fails the Spark task (Spark retries it) instead of
becoming an error row.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scanml.mlflow_client import ResolvedModel
from scanml.score_inputs import InputItem
from scanml.score_rows import file_stems
from scanml.scores_table import ScoresTable
from scanml.scoring import (
    DEFAULT_BATCH_SIZE,
    ScoreSummary,
    ScoringError,
    _Counts,
    _fingerprint,
    _todo,
    plan_job,
)

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = ["DEFAULT_MASTER", "score_with_spark", "spark_session"]

#: The Spark master when the caller brings no session: every core of this machine.
DEFAULT_MASTER = "local[*]"


def score_with_spark(
    model_uri: str,
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    spark: SparkSession | None = None,
    master: str = DEFAULT_MASTER,
    overlays: str | os.PathLike[str] | None = None,
    tdr: str | os.PathLike[str] | None = None,
    device: str = "cpu",
    batch_size: int = DEFAULT_BATCH_SIZE,
    threshold: float | None = None,
    allow_outside: bool = False,
    retry_failed: bool = False,
    progress: bool = True,
) -> ScoreSummary:
    """Score ``inputs`` with the model at ``model_uri`` into ``out`` through a Spark session.

    ``spark``: the session to use (an agency's cluster); without one, a
    session on ``master`` is started and stopped here. The other arguments
    are :func:`scanml.scoring.score`'s; ``batch_size`` is the number of
    scans per Spark task and per committed part.
    """
    started = time.perf_counter()
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
            task = _Task(
                model_uri=model_uri,
                model=model,
                threshold=threshold,
                overlays=overlays_dir,
                tdr=tdr_dir,
                device=device,
            )
            own_session = spark is None
            session = spark if spark is not None else spark_session(master)
            try:
                counts = _run_waves(
                    session, task, todo, fingerprints, file_stems(items), table, batch_size, timings
                )
            finally:
                if own_session:
                    session.stop()
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


def spark_session(master: str = DEFAULT_MASTER, app_name: str = "scanml-score") -> SparkSession:
    """A Spark session whose Python workers run this interpreter (and so this scanml)."""
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise ScoringError(
            "--engine spark needs pyspark: pip install 'scanml[spark]' (and Java 17 or later)"
        ) from None
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    return (
        SparkSession.builder.master(master)
        .appName(app_name)
        .config("spark.ui.enabled", "false")
        .config("spark.driver.host", os.environ.get("SPARK_LOCAL_IP", "127.0.0.1"))
        # A scan that fails is an error row, not a task failure: retries only for lost workers.
        .config("spark.task.maxFailures", "4")
        .getOrCreate()
    )


# -- the job ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Task:
    """What a Spark worker needs to score scans: small and picklable."""

    model_uri: str
    model: ResolvedModel
    threshold: float | None
    overlays: Path | None
    tdr: Path | None
    device: str


def _run_waves(
    spark: SparkSession,
    task: _Task,
    todo: list[InputItem],
    fingerprints: dict[Path, str | None],
    stems: dict[Path, str],
    table: ScoresTable,
    batch_size: int,
    timings: dict[str, float],
) -> _Counts:
    """One partition per task slot and ``batch_size`` scans per partition; commit each partition."""
    context = spark.sparkContext
    slots = max(1, context.defaultParallelism)
    counts = _Counts()
    wave_size = slots * batch_size
    for start in range(0, len(todo), wave_size):
        wave = todo[start : start + wave_size]
        batches = [
            [
                (item, fingerprints[item.path], stems.get(item.path))
                for item in wave[i : i + batch_size]
            ]
            for i in range(0, len(wave), batch_size)
        ]
        partitions = (
            context.parallelize(batches, numSlices=len(batches))
            .map(lambda batch, task=task: _score_batch(task, batch))
            .collect()
        )
        for rows, batch_timings in partitions:
            commit_started = time.perf_counter()
            table.append(rows)
            timings["write"] += time.perf_counter() - commit_started
            for key in ("decode", "model"):
                timings[key] += batch_timings.get(key, 0.0)
            for row in rows:
                counts.failed += row["error"] is not None
                counts.scanned += row["error"] is None
                counts.flagged += bool(row["flagged"])
                counts.outputs_failed += row["output_error"] is not None
    return counts


# -- on a Spark worker --------------------------------------------------------------------

# One loaded model per Spark Python worker (workers are reused between tasks).
_LOADED: dict[tuple[str, str], Any] = {}


def _score_batch(
    task: _Task, batch: Iterable[tuple[InputItem, str | None, str | None]]
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """The scores-table rows of one batch of scans, scored in this Spark worker."""
    from scanml.score_rows import ScanScorer, decode

    batch = list(batch)
    predictor = _predictor(task.model.load_uri, task.device)
    bundle = predictor.bundle
    timings = {"decode": 0.0, "model": 0.0, "write": 0.0}
    scorer = ScanScorer(
        predictor=predictor,
        model_uri=task.model_uri,
        model=task.model,
        threshold=bundle.threshold if task.threshold is None else float(task.threshold),
        overlays=task.overlays,
        tdr=task.tdr,
        file_stems={item.path: stem for item, _, stem in batch if stem is not None},
        fingerprints={item.path: fingerprint for item, fingerprint, _ in batch},
        timings=timings,
    )
    rows = [scorer.row_for(decode(item, bundle.preprocessing)) for item, _, _ in batch]
    return rows, timings


def _predictor(load_uri: str, device: str) -> Any:
    from scanml.models import ModelBundle
    from scanml.predict import Predictor

    key = (load_uri, device)
    if key not in _LOADED:
        _LOADED[key] = Predictor(ModelBundle.load(load_uri), device=device)
    return _LOADED[key]
