"""``scanml train``, ``evaluate``, ``compare`` and ``promote``: a model's life in MLflow.

Argument parsing only; each command calls the library function its help names.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from scanml import cli_scale
from scanml.cli_args import subcommand
from scanml.cli_checks import (
    MODEL_HELP,
    UserFacingError,
    check_dataset,
    check_writable,
    load_config,
)

__all__ = ["add_compare", "add_evaluate", "add_promote", "add_train"]


def add_train(commands: argparse._SubParsersAction) -> None:
    p = subcommand(
        commands,
        "train",
        "train a model, tracked in MLflow (scanml.train.train)",
        "Train (or fine-tune) a dense anomaly detector on a dataset folder holding "
        "manifest.csv and annotations.json. Prints the MLflow run id and the registered model URI.",
    )
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help="YAML preset, e.g. configs/default.yaml (None: the built-in defaults)",
    )
    p.add_argument(
        "--data", type=Path, required=True, help="folder with manifest.csv and annotations.json"
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a configuration field (repeatable), e.g. --set train.epochs=3",
    )
    p.add_argument(
        "--resume",
        metavar="RUN",
        default=None,
        help="continue a killed run: its MLflow run id or its folder under runs/",
    )
    cli_scale.add_nproc_option(p)
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    config = None if args.resume else load_config(args.config, args.overrides)
    check_dataset(args.data, "--data")
    if args.nproc:  # the same command under torchrun, N processes (scanml.distributed)
        return cli_scale.run_train_processes(args)
    from scanml.train import train  # torch and friends: only once the arguments are sound

    try:
        result = train(config, args.data, resume=args.resume, overrides=args.overrides)
    except FileNotFoundError as exc:
        raise UserFacingError(str(exc)) from None
    print(f"run id: {result.run_id}")
    print(f"model: {result.model_uri}")
    if result.kept_epoch:  # rank 0; the other ranks keep nothing
        print(
            f"kept epoch: {result.kept_epoch} (train.keep; "
            f"best validation at epoch {result.best_epoch})"
        )
    print(f"checkpoints: {result.run_dir}")
    return 0


def add_evaluate(commands: argparse._SubParsersAction) -> None:
    p = subcommand(
        commands,
        "evaluate",
        "evaluate a model on a dataset and log the report to MLflow (scanml.evaluation.evaluate)",
        "Score a split of a dataset with a model, on the split the model was trained "
        "without (its own fractions and seed), and log metrics, plots, overlays and a "
        "report to MLflow; the headline figures also go on the registered model version.",
    )
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument(
        "--data", type=Path, required=True, help="folder with manifest.csv and annotations.json"
    )
    p.add_argument(
        "--split",
        default="test",
        choices=["train", "val", "test", "all"],
        help="split to evaluate ('all' for every scan)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for report.md, report.json, plots and overlays (None: a temporary folder)",
    )
    p.add_argument(
        "--calibrate-far",
        type=float,
        default=None,
        metavar="FAR",
        help="recalibrate the threshold on the val split at this false-alarm rate and store it",
    )
    p.add_argument(
        "--calibration-variants",
        type=int,
        default=None,
        metavar="N",
        help="with --calibrate-far: redraws of each clean val scan through the model's "
        "acquisition chain that the threshold must also hold on (default: as many as the "
        "model was trained with; 0: the scans alone)",
    )
    p.add_argument(
        "--calibrate-on",
        default=None,
        metavar="SITE",
        help="also report, per site, the false-alarm rate of a threshold set on SITE's clean "
        "scans (at --calibrate-far, else the model's target) and of the stored one",
    )
    p.add_argument(
        "--experiment", default="scanml-evaluation", help="MLflow experiment of the evaluation run"
    )
    p.add_argument("--overlays", type=int, default=4, help="overlays to draw with the true boxes")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto")
    p.set_defaults(func=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    check_dataset(args.data, "--data")
    if args.calibrate_far is not None and not 0.0 < args.calibrate_far < 1.0:
        raise UserFacingError(f"--calibrate-far {args.calibrate_far}: must be in (0, 1)")
    if args.calibration_variants is not None:
        if args.calibrate_far is None:
            raise UserFacingError("--calibration-variants needs --calibrate-far")
        if not 0 <= args.calibration_variants <= 64:
            raise UserFacingError(
                f"--calibration-variants {args.calibration_variants}: must be 0 to 64"
            )
    if args.out is not None:
        check_writable(args.out, "--out")
    from scanml.registry import resolve_model

    resolve_model(args.model)
    from scanml.evaluation import evaluate

    try:
        report = evaluate(
            args.model,
            args.data,
            split=args.split,
            out_dir=args.out,
            calibrate_far=args.calibrate_far,
            calibrate_on=args.calibrate_on,
            calibration_variants=args.calibration_variants,
            experiment=args.experiment,
            device=args.device,
            overlays=args.overlays,
        )
    except ValueError as exc:  # a site or split the data lacks, no clean scans to calibrate on
        if type(exc) is not ValueError:
            raise
        raise UserFacingError(str(exc)) from None
    print(report.to_markdown())
    return 0


def add_compare(commands: argparse._SubParsersAction) -> None:
    p = subcommand(
        commands,
        "compare",
        "training runs side by side, best first (scanml.runs.compare_runs)",
        "List the training runs of an experiment, best first on --metric. Metrics that "
        "'scanml evaluate' logged for a run's model (test/auroc, ...) are shown with the run.",
    )
    p.add_argument(
        "--experiment",
        default=None,
        help="MLflow experiment (None: the one the --config preset trains into)",
    )
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help="preset whose experiment to list (None: the built-in defaults, as configs/default.yaml)",
    )
    p.add_argument(
        "--metric",
        default="best/auroc",
        help="the metric to show and sort by: best/... (the kept epoch), val/... (the last), "
        "test/... (from scanml evaluate)",
    )
    p.add_argument("--limit", type=int, default=20, help="most runs to list")
    p.set_defaults(func=_run_compare)


def _run_compare(args: argparse.Namespace) -> int:
    experiment = args.experiment or load_config(args.config, []).tracking.experiment
    import pandas as pd

    from scanml.runs import compare_runs

    table = compare_runs(experiment, metric=args.metric, limit=args.limit)
    if not len(table):
        print(f"no runs in experiment {experiment!r}")
        return 0
    with pd.option_context("display.width", 250, "display.max_columns", None):
        print(table.to_string(index=False))
    return 0


def add_promote(commands: argparse._SubParsersAction) -> None:
    p = subcommand(
        commands,
        "promote",
        "point the 'champion' alias at a model version (scanml.runs.promote)",
        "Point an alias (champion: the model in service) at a registered model version, given "
        "by the run that logged it (its id or a unique prefix) or by its version number.",
    )
    p.add_argument(
        "target", metavar="RUN_OR_VERSION", help="an MLflow run id or a registered version number"
    )
    p.add_argument(
        "--name",
        default=None,
        help="registered model (None: the one the run registered; for a version number, "
        "the --config preset's)",
    )
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help="preset whose registered model a version number belongs to (None: built-in defaults)",
    )
    p.add_argument("--alias", default="champion", help="the alias to move")
    p.set_defaults(func=_run_promote)


def _run_promote(args: argparse.Namespace) -> int:
    default_name = None
    if args.name is None and args.target.isdigit():
        default_name = load_config(args.config, []).tracking.registered_model
    from scanml.runs import promote

    change = promote(args.target, name=args.name, alias=args.alias, default_name=default_name)
    print(change)
    return 0
