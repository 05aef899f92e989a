"""The command line of scale-out (argument parsing only): tracking server, Spark scoring.

``scanml server`` calls :func:`scanml.server.serve`, ``scanml score --engine
spark`` :func:`scanml.spark.score_with_spark`. Kept apart from
``scanml.cli`` so that file only registers it.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

DEFAULT_SERVER_PORT = 5000


def add_server(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "server",
        help="the shared tracking server: MLflow on PostgreSQL with logins (scanml.server.serve)",
        description="Run `mlflow server` with a PostgreSQL backend store and MLflow's basic "
        "authentication, so several data scientists share one registry and anonymous requests "
        "are refused. The admin user is created on the first start from "
        "MLFLOW_AUTH_ADMIN_USERNAME (default admin) and MLFLOW_AUTH_ADMIN_PASSWORD.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--backend-store-uri",
        default=os.environ.get("SCANML_SERVER_DB"),
        help="the database: postgresql://USER:PASSWORD@HOST:5432/DB (default: $SCANML_SERVER_DB)",
    )
    p.add_argument(
        "--artifacts", type=Path, default=Path("mlartifacts"), help="where models and plots go"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=DEFAULT_SERVER_PORT, help="port to listen on")
    p.add_argument("--workers", type=int, default=2, help="server worker processes")
    p.add_argument(
        "--default-permission",
        default="READ",
        help="what every user may do on what others created until an admin grants more",
    )
    p.add_argument(
        "--config-dir",
        type=Path,
        default=Path(".scanml-server"),
        help="folder for the generated basic_auth.ini",
    )
    p.set_defaults(func=run_server)


def run_server(args: argparse.Namespace) -> int:
    from scanml.server import ServerConfigError, ServerSettings, serve

    if not args.backend_store_uri:
        print(
            "scanml server: error: --backend-store-uri (or $SCANML_SERVER_DB) is required, "
            "e.g. postgresql://mlflow:PASSWORD@127.0.0.1:5432/mlflow",
            file=sys.stderr,
        )
        return 2
    settings = ServerSettings(
        backend_store_uri=args.backend_store_uri,
        artifacts_destination=str(args.artifacts.resolve()),
        host=args.host,
        port=args.port,
        workers=args.workers,
        default_permission=args.default_permission,
    )
    try:
        return serve(settings, config_dir=args.config_dir)
    except ServerConfigError as exc:
        print(f"scanml server: error: {exc}", file=sys.stderr)
        return 2


# -- scanml score --engine spark ----------------------------------------------------------


def add_engine_options(p: argparse.ArgumentParser) -> None:
    """``scanml score``'s choice of engine."""
    p.add_argument(
        "--engine",
        choices=["local", "spark"],
        default="local",
        help="local: this machine's processes; spark: a Spark session (scanml.spark)",
    )
    p.add_argument(
        "--spark-master",
        default=None,
        help="Spark master for --engine spark (None: $SPARK_MASTER, else local[*])",
    )
    p.add_argument(
        "--spark-batch-size",
        type=int,
        default=None,
        metavar="N",
        help="--engine spark: scans per Spark task and per committed part (None: 32)",
    )


def run_score_with_spark(args: argparse.Namespace) -> int:
    """``scanml score --engine spark``: the arguments were checked by ``scanml score``."""
    from scanml.scoring import ScoringError, TableLockedError
    from scanml.spark import DEFAULT_MASTER, score_with_spark

    device = "cpu" if args.device == "auto" else args.device
    try:
        summary = score_with_spark(
            args.model,
            args.input,
            args.out,
            master=args.spark_master or os.environ.get("SPARK_MASTER") or DEFAULT_MASTER,
            overlays=args.overlays,
            tdr=args.tdr,
            device=device,
            threshold=args.threshold,
            allow_outside=args.allow_outside,
            retry_failed=args.retry_failed,
            **({"batch_size": args.spark_batch_size} if args.spark_batch_size else {}),
        )
    except (ScoringError, TableLockedError, FileNotFoundError) as exc:
        print(f"scanml score: error: {exc}", file=sys.stderr)
        return 2
    if summary.outputs_failed:
        return 1
    return 0 if summary.scanned or not summary.failed else 1


# -- scanml train --nproc N ---------------------------------------------------------------


def add_nproc_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--nproc",
        type=int,
        default=None,
        metavar="N",
        help="train with N processes on this machine (DistributedDataParallel under torchrun); "
        "on several machines run torchrun yourself: torchrun --nproc-per-node N -m scanml train ...",
    )


def run_train_processes(args: argparse.Namespace) -> int:
    """``scanml train --nproc N ...`` as ``torchrun --standalone --nproc-per-node N -m scanml train ...``."""
    if args.nproc < 1:
        print(f"scanml train: error: --nproc {args.nproc}: must be 1 or more", file=sys.stderr)
        return 2
    argv = ["train", "--data", str(args.data)]
    if args.config is not None:
        argv += ["--config", str(args.config)]
    for override in args.overrides:
        argv += ["--set", override]
    if args.resume is not None:
        argv += ["--resume", args.resume]
    from scanml.distributed import launch

    return launch(args.nproc, argv)
