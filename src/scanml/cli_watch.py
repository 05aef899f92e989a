"""The command line of the image store and the scoring service (argument parsing only).

``scanml score --input dicomweb://... --tdr-to dicomweb://...`` calls
:func:`scanml.dicomweb.score_dicomweb`; ``scanml watch`` calls
:func:`scanml.watch.watch`. Kept apart from ``scanml.cli`` so that file
only registers them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scanml.cli_args import add_runtime_options, add_scan_job_options, add_store_options
from scanml.cli_checks import UserFacingError

# scanml.watch.DEFAULT_STATUS_PORT, not imported: `scanml --help` must not load numpy.
DEFAULT_STATUS_PORT = 8765


def uses_store(args: argparse.Namespace) -> bool:
    from scanml.dicomweb import is_dicomweb_url

    return bool(args.tdr_to) or is_dicomweb_url(args.input)


def run_score_with_store(args: argparse.Namespace) -> int:
    """``scanml score`` when the input or the reports' destination is a DICOMweb store."""
    from scanml.dicomweb import DicomwebError, score_dicomweb

    _check_urls(args.input, args.tdr_to)
    try:
        summary = score_dicomweb(
            args.model,
            args.input,
            args.out,
            tdr_to=args.tdr_to,
            overlays=args.overlays,
            tdr=args.tdr,
            spool=args.spool,
            workers=args.workers,
            device=args.device,
            threshold=args.threshold,
        )
    except DicomwebError as exc:
        print(f"scanml score: error: {exc}", file=sys.stderr)
        return 1
    scoring = summary.scoring
    return 0 if scoring.scanned or not scoring.failed else 1


def add_watch(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "watch",
        help="score each new scan in a folder or DICOMweb store as it arrives (scanml.watch.watch)",
        description="A long-running scoring service: every new scan in a folder or a DICOMweb "
        "store is scored exactly once (across restarts) into the scores table, with overlays "
        "and Threat Detection Reports as `scanml score` writes them. SIGTERM finishes the scan "
        "in hand and exits 0. Status: a line on stderr and JSON at "
        "http://127.0.0.1:PORT/status.",
    )
    add_scan_job_options(p, input_help="a folder, or a store: dicomweb://HOST[:PORT]/PATH[?query]")
    add_store_options(p)
    p.add_argument(
        "--poll", type=float, default=1.0, metavar="SECONDS", help="seconds between looks"
    )
    p.add_argument(
        "--settle",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="a folder's file is taken once unchanged this long (default 1)",
    )
    p.add_argument(
        "--partner-wait",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long a dual-energy scan's low-energy file (x.low.dcm) that arrives first "
        "waits for its x.dcm before it is scored alone (default 60)",
    )
    p.add_argument(
        "--status-port",
        type=int,
        default=DEFAULT_STATUS_PORT,
        help=f"status endpoint port on 127.0.0.1 (default {DEFAULT_STATUS_PORT}; 0: any free port;"
        " -1: none)",
    )
    add_runtime_options(
        p, workers_default=0, workers_help="decoding processes per scan (default 0: in process)"
    )
    p.set_defaults(func=run_watch)


def run_watch(args: argparse.Namespace) -> int:
    from scanml.dicomweb import is_dicomweb_url
    from scanml.watch import watch

    _check_urls(args.input, args.tdr_to)
    if not is_dicomweb_url(args.input) and not Path(args.input).is_dir():
        raise UserFacingError(f"--input {args.input}: not a folder and not a dicomweb:// URL")
    for name in ("poll", "settle", "partner_wait"):
        value = getattr(args, name)
        if not 0 <= value < float("inf"):
            flag = name.replace("_", "-")
            raise UserFacingError(f"--{flag} {value}: must be a number of seconds >= 0")
    if not -1 <= args.status_port <= 65535:
        raise UserFacingError(f"--status-port {args.status_port}: not a port (0-65535, or -1)")
    try:
        watch(
            args.model,
            args.input,
            args.out,
            overlays=args.overlays,
            tdr=args.tdr,
            tdr_to=args.tdr_to,
            spool=args.spool,
            poll_s=args.poll,
            settle_s=args.settle,
            partner_wait_s=args.partner_wait,
            status_port=None if args.status_port == -1 else args.status_port,
            device=args.device,
            threshold=args.threshold,
            workers=args.workers,
        )
    except OSError as exc:  # the status port is taken, the output folder is read-only...
        raise UserFacingError(str(exc)) from None
    except RuntimeError as exc:  # another service writes the same table
        raise UserFacingError(str(exc)) from None
    return 0


def _check_urls(*urls: str | None) -> None:
    """Refuse a malformed dicomweb:// URL in one line, before any model is loaded."""
    from scanml.dicomweb import is_dicomweb_url, parse_dicomweb_url

    for url in urls:
        if url is None:
            continue
        if not is_dicomweb_url(url):
            if url.split("://", 1)[0] in ("http", "https"):
                raise UserFacingError(f"{url}: write a store as dicomweb://HOST[:PORT]/PATH")
            continue
        try:
            parse_dicomweb_url(url)
        except ValueError as exc:
            raise UserFacingError(str(exc)) from None
