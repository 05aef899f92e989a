"""``scanml score``: batch-scoring scans into a Parquet table.

Argument parsing and the checks that run before the job starts; the job is
:func:`scanml.scoring.score` (or :func:`scanml.dicomweb.score_dicomweb` for a store).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from scanml import cli_scale, cli_watch
from scanml.cli_args import (
    add_runtime_options,
    add_scan_job_options,
    add_store_options,
    subcommand,
)
from scanml.cli_checks import UserFacingError, check_inputs, check_writable

__all__ = ["add_score"]


def add_score(commands: argparse._SubParsersAction) -> None:
    p = subcommand(
        commands,
        "score",
        "batch-score scans into a Parquet table (scanml.scoring.score)",
        "Score every scan in a folder, glob or manifest. One row per input file, "
        "failures included; a killed job rerun with the same arguments skips what is done.",
    )
    add_scan_job_options(p, input_help="a folder, a glob, or a manifest.csv")
    add_runtime_options(
        p, workers_default=None, workers_help="decoding processes (None: cores - 1, at most 8)"
    )
    p.add_argument(
        "--allow-outside",
        action="store_true",
        help="score manifest paths outside the manifest's folder (refused by default)",
    )
    p.add_argument(
        "--retry-failed", action="store_true", help="score again the files of error rows"
    )
    add_store_options(p)
    cli_scale.add_engine_options(p)
    p.set_defaults(func=_run_score)


def _run_score(args: argparse.Namespace) -> int:
    if cli_watch.uses_store(args):
        return cli_watch.run_score_with_store(args)
    check_inputs(args.input)
    check_writable(args.out.parent if str(args.out.parent) else Path("."), "--out")
    if args.out.is_dir():
        raise UserFacingError(f"--out {args.out}: is a folder; give the table's file name")
    # Unwritable --overlays/--tdr folders are the scoring job's to report: it
    # warns once, keeps every score and lists the outputs that failed.
    from scanml.mlflow_client import ModelSourceError, TrackingServerError
    from scanml.mlflow_client import resolve_model as resolve_within_deadline

    try:  # a tracking server that is down fails here in seconds, naming it
        resolve_within_deadline(args.model)
    except TrackingServerError as exc:
        raise UserFacingError(str(exc)) from None
    except ModelSourceError:
        pass  # the registry lookup below says what is wrong and what exists instead
    from scanml.registry import resolve_model as name_what_exists

    name_what_exists(args.model)  # the server answers: a wrong URI names the models that exist
    if args.engine == "spark":
        return cli_scale.run_score_with_spark(args)
    from scanml.scoring import ScoringError, TableLockedError, score

    try:
        summary = score(
            args.model,
            args.input,
            args.out,
            overlays=args.overlays,
            tdr=args.tdr,
            workers=args.workers,
            device=args.device,
            threshold=args.threshold,
            allow_outside=args.allow_outside,
            retry_failed=args.retry_failed,
        )
    except (ScoringError, TableLockedError, FileNotFoundError) as exc:
        raise UserFacingError(str(exc)) from None
    if summary.outputs_failed:
        return 1
    return 0 if summary.scanned or not summary.failed else 1
