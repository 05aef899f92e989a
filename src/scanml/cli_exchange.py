"""Exchange between agencies: ``scanml export``, ``import``, ``export-model``, ``import-model``.

Argument parsing only; each command calls the library function its help names.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from scanml.cli_checks import UserFacingError

__all__ = ["add_exchange"]


def add_exchange(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "export",
        help="de-identified, checksummed scan package (scanml.exchange.export_package)",
        description="Write a BagIt package of a dataset folder's scans, manifest, COCO annotations "
        "and TDRs, every DICOM file de-identified (DICOM PS3.15 Basic Profile).",
    )
    p.add_argument("--data", type=Path, required=True, help="dataset folder (manifest.csv, ...)")
    p.add_argument("--out", type=Path, required=True, help="the package folder to create")
    p.add_argument(
        "--profile", default="basic", choices=["basic"], help="de-identification profile"
    )
    p.add_argument(
        "--no-device", action="store_true", help="remove the scanner make and model as well"
    )
    p.add_argument(
        "--strict", action="store_true", help="fail on any DICOM attribute no rule covers"
    )
    p.add_argument(
        "--keep-column",
        dest="keep_columns",
        action="append",
        default=[],
        metavar="NAME",
        help="also export this manifest column (repeatable; reviewed to carry no identifier)",
    )
    p.add_argument("--tdr", type=Path, default=None, help="folder of TDRs (default: DATA/tdr)")
    p.set_defaults(func=_run_export)

    p = commands.add_parser(
        "import",
        help="verify a scan package and merge it into a dataset (scanml.exchange.import_package)",
    )
    p.add_argument("package", type=Path, metavar="PKG")
    p.add_argument("--into", type=Path, required=True, help="dataset folder to merge into")
    p.add_argument("--site", default=None, help="site to give the imported scans")
    p.add_argument(
        "--prefix", default=None, help="scan id prefix (default: the package folder's name + '-')"
    )
    p.set_defaults(func=_run_import)

    p = commands.add_parser(
        "export-model",
        help="model package with a model card (scanml.model_package.export_model)",
    )
    p.add_argument("model", metavar="URI", help="runs:/..., models:/NAME/VERSION or a folder")
    p.add_argument("--out", type=Path, required=True, help="the package file (.zip)")
    p.add_argument("--intended-use", default=None, help="the card's intended-use text")
    p.add_argument(
        "--limit", dest="limits", action="append", default=[], help="a known limit (repeatable)"
    )
    p.set_defaults(func=_run_export_model)

    p = commands.add_parser(
        "import-model",
        help="verify a model package and register it in MLflow (scanml.model_package.import_model)",
    )
    p.add_argument("package", type=Path, metavar="FILE")
    p.add_argument("--name", default=None, help="registered model name (default: the sender's)")
    p.add_argument(
        "--example", type=Path, default=None, help="a scan to check the model's signature on"
    )
    p.set_defaults(func=_run_import_model)


def _run_export(args: argparse.Namespace) -> int:
    from scanml.exchange import ExchangeError, export_package

    try:
        summary = export_package(
            args.data,
            args.out,
            profile=args.profile,
            keep_device=not args.no_device,
            strict=args.strict,
            keep_columns=tuple(args.keep_columns),
            tdr_dir=args.tdr,
        )
    except ExchangeError as exc:
        raise UserFacingError(str(exc)) from None
    print(summary)
    return 0


def _run_import(args: argparse.Namespace) -> int:
    from scanml.exchange import ExchangeError, import_package

    try:
        print(import_package(args.package, args.into, site=args.site, id_prefix=args.prefix))
    except ExchangeError as exc:
        raise UserFacingError(str(exc)) from None
    return 0


def _run_export_model(args: argparse.Namespace) -> int:
    from mlflow.exceptions import MlflowException

    from scanml.exchange import ExchangeError
    from scanml.model_package import DEFAULT_INTENDED_USE, export_model

    try:
        card = export_model(
            args.model,
            args.out,
            intended_use=args.intended_use or DEFAULT_INTENDED_USE,
            extra_limits=tuple(args.limits),
        )
    except (ExchangeError, FileNotFoundError, MlflowException) as exc:
        raise UserFacingError(str(exc).splitlines()[0]) from None
    print(f"model package: {args.out}")
    print(card.to_markdown())
    return 0


def _run_import_model(args: argparse.Namespace) -> int:
    from scanml.exchange import ExchangeError
    from scanml.model_package import import_model

    try:
        print(import_model(args.package, name=args.name, example=args.example))
    except ExchangeError as exc:
        raise UserFacingError(str(exc)) from None
    return 0
