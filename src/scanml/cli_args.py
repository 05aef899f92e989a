"""Building blocks of the ``scanml`` command's parsers, shared by its subcommand modules."""

from __future__ import annotations

import argparse

__all__ = ["comma_list", "subcommand"]


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
