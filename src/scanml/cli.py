"""The ``scanml`` command: argument parsing only, every command calls the library.

Each subcommand maps one-to-one onto a Python function a notebook can call
(named in its help). Heavy modules are imported when a command runs, so
``scanml --help`` is instant, and the arguments a user can get wrong (a
configuration, a data folder, a model URI, an output place) are checked
before the heavy work starts: a mistake is one line naming what was wrong
and what exists, and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Sequence

from scanml import (
    __version__,
    cli_bench,
    cli_data,
    cli_exchange,
    cli_scale,
    cli_score,
    cli_train,
    cli_watch,
)
from scanml.cli_checks import UserFacingError

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("mlflow", "alembic", "urllib3", "matplotlib", "PIL", "dicomweb_client"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    bounded = contextlib.nullcontext()
    if args.command in ("evaluate", "compare", "promote", "score", "watch"):
        from scanml.mlflow_client import bound_client_calls

        bounded = bound_client_calls()  # a tracking server that is down fails in seconds
    try:
        with bounded:  # and main() called from a notebook leaves its environment as it was
            return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if not _is_user_error(exc):
            raise
        print(f"scanml {args.command}: error: {exc}", file=sys.stderr)
        return 2


def _is_user_error(exc: Exception) -> bool:
    """Errors that describe a user's mistake in one message: print it, no traceback.

    Checked by class name through the modules already imported, so that
    ``scanml --help`` and the light commands never import MLflow or torch.
    """
    if isinstance(exc, UserFacingError | FileNotFoundError | NotADirectoryError):
        return True
    user_errors = [
        getattr(sys.modules.get(module), name, None)
        for module, name in (
            ("scanml.config", "ConfigError"),
            ("scanml.dataset", "DataError"),
            ("scanml.registry", "RegistryLookupError"),
            ("scanml.io", "ScanReadError"),
        )
    ]
    return any(kind is not None and isinstance(exc, kind) for kind in user_errors)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scanml",
        description="Train, evaluate and run anomaly detectors on X-ray scans of shipping containers.",
    )
    parser.add_argument("--version", action="version", version=f"scanml {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (
        cli_data.add_synth,
        cli_train.add_train,
        cli_train.add_evaluate,
        cli_score.add_score,
        cli_train.add_compare,
        cli_train.add_promote,
        cli_data.add_info,
        cli_bench.add_demo,
        cli_bench.add_bench,
        cli_exchange.add_exchange,
        cli_watch.add_watch,
        cli_scale.add_server,
    ):
        add(commands)
    return parser
