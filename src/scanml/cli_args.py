"""Building blocks of the ``scanml`` command's parsers, shared by its subcommand modules."""

from __future__ import annotations

import argparse
from pathlib import Path

from scanml.cli_checks import MODEL_HELP

__all__ = [
    "add_runtime_options",
    "add_scan_job_options",
    "add_store_options",
    "comma_list",
    "subcommand",
]


def subcommand(
    commands: argparse._SubParsersAction, name: str, help: str, description: str | None = None
) -> argparse.ArgumentParser:
    """A subcommand whose --help shows every default."""
    return commands.add_parser(
        name,
        help=help,
        description=description or help,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )


def comma_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


# -- the options `scanml score` and `scanml watch` share ------------------------------
# Defined once, so the two commands cannot drift apart in a flag's name, type
# or default. Each command adds its own options between these groups.


def add_scan_job_options(p: argparse.ArgumentParser, *, input_help: str) -> None:
    """The model, the scans to read, and the outputs: the table, overlays and reports."""
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--input", required=True, help=input_help)
    p.add_argument("--out", type=Path, required=True, help="the scores table (.parquet)")
    p.add_argument("--overlays", type=Path, default=None, help="folder for a PNG per flagged scan")
    p.add_argument(
        "--tdr", type=Path, default=None, help="folder for a DICOS Threat Detection Report per scan"
    )


def add_store_options(p: argparse.ArgumentParser) -> None:
    """The options for a DICOMweb store: where reports go, where fetched scans wait."""
    p.add_argument(
        "--tdr-to",
        default=None,
        metavar="URL",
        help="store each Threat Detection Report in this DICOMweb store (dicomweb://HOST/PATH)",
    )
    p.add_argument(
        "--spool",
        type=Path,
        default=None,
        help="folder for scans fetched from a dicomweb:// input (default: <out>.spool)",
    )


def add_runtime_options(
    p: argparse.ArgumentParser, *, workers_default: int | None, workers_help: str
) -> None:
    """How the job runs: decoding processes, the threshold, the device."""
    p.add_argument("--workers", type=int, default=workers_default, help=workers_help)
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="override the model's calibrated threshold (None: the model's)",
    )
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto")
