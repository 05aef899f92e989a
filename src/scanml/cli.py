"""The ``scanml`` command: argument parsing only, every command calls the library.

Each subcommand maps one-to-one onto a Python function a notebook can call
(named in its help). Heavy modules are imported when a command runs, so
``scanml --help`` is instant.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from scanml import __version__, cli_watch

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
    if args.command in ("evaluate", "compare", "promote"):
        from scanml.mlflow_client import bound_client_calls

        bound_client_calls()  # a tracking server that is down fails in seconds, not minutes
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except UserFacingError as exc:
        print(f"scanml {args.command}: error: {exc}", file=sys.stderr)
        return 2


class UserFacingError(Exception):
    """An error whose message is all the user needs (bad input, bad configuration)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scanml",
        description="Train, evaluate and run anomaly detectors on X-ray scans of shipping containers.",
    )
    parser.add_argument("--version", action="version", version=f"scanml {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (
        _add_synth,
        _add_train,
        _add_evaluate,
        _add_score,
        _add_compare,
        _add_promote,
        _add_info,
        _add_demo,
        _add_bench,
        cli_watch.add_watch,
    ):
        add(commands)
    return parser


# -- synth ------------------------------------------------------------------------------


def _add_synth(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "synth",
        help="simulate container scans with ground truth (scanml.synth.generate_dataset)",
        description="Simulate side-view transmission X-ray scans of shipping containers, with "
        "concealed drugs, cigarettes and weapons, as DICOS files plus manifest.csv and "
        "annotations.json (COCO).",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--n-scans", type=int, required=True, help="number of scans")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same bytes)")
    p.add_argument(
        "--anomaly-fraction", type=float, default=0.5, help="share of scans with a concealment"
    )
    p.add_argument(
        "--sites", type=_csv, default=None, help="comma-separated scanner profiles (default: all)"
    )
    p.add_argument(
        "--lengths", type=_csv, default=["20ft", "40ft"], help="container lengths, e.g. 20ft,40ft"
    )
    p.add_argument(
        "--energy",
        choices=["site", "single", "dual"],
        default="site",
        help="single or dual energy, or as the site's scanner does (default)",
    )
    p.add_argument(
        "--format",
        dest="file_format",
        choices=["dcm", "tiff"],
        default="dcm",
        help="DICOS (default) or 16-bit TIFF",
    )
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument(
        "--skip-existing", action="store_true", help="keep scans already written (resume)"
    )
    p.add_argument(
        "--vary-acquisition",
        action="store_true",
        help="draw each scan's flux, blur, streaks, pixel pitch and saturation around its "
        "site's (scanners differ as much as scenes do)",
    )
    p.set_defaults(func=_run_synth)


def _run_synth(args: argparse.Namespace) -> int:
    from scanml.synth import generate_dataset

    summary = generate_dataset(
        out_dir=args.out,
        n_scans=args.n_scans,
        seed=args.seed,
        anomaly_fraction=args.anomaly_fraction,
        sites=args.sites,
        lengths=tuple(args.lengths),
        energy=args.energy,
        file_format=args.file_format,
        workers=args.workers,
        skip_existing=args.skip_existing,
        vary_acquisition=args.vary_acquisition,
    )
    print(summary)
    return 0


# -- train ------------------------------------------------------------------------------


def _add_train(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "train",
        help="train a model, tracked in MLflow (scanml.train.train)",
        description="Train (or fine-tune) a dense anomaly detector on a dataset folder holding "
        "manifest.csv and annotations.json. Prints the MLflow run id and the registered model URI.",
    )
    p.add_argument(
        "--config", type=Path, default=None, help="YAML preset, e.g. configs/default.yaml"
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
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from scanml.config import ConfigError, load_config
    from scanml.data import DataError
    from scanml.train import train

    try:
        config = None if args.resume else load_config(args.config, args.overrides)
        result = train(config, args.data, resume=args.resume, overrides=args.overrides)
    except (ConfigError, DataError, FileNotFoundError) as exc:
        raise UserFacingError(str(exc)) from None
    print(f"run id: {result.run_id}")
    print(f"model: {result.model_uri}")
    print(f"checkpoints: {result.run_dir}")
    return 0


# -- evaluate ---------------------------------------------------------------------------


def _add_evaluate(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "evaluate",
        help="evaluate a model on a dataset and log the report to MLflow (scanml.evaluation.evaluate)",
    )
    p.add_argument(
        "--model",
        required=True,
        help="runs:/..., models:/NAME/VERSION, models:/NAME@alias or a folder",
    )
    p.add_argument(
        "--data", type=Path, required=True, help="folder with manifest.csv and annotations.json"
    )
    p.add_argument(
        "--split",
        default="test",
        help="manifest split to evaluate (default: test; 'all' for every scan)",
    )
    p.add_argument("--out", type=Path, default=None, help="folder for report.md and report.json")
    p.add_argument(
        "--calibrate-far",
        type=float,
        default=None,
        metavar="FAR",
        help="recalibrate the threshold on the val split at this false-alarm rate and store it",
    )
    p.set_defaults(func=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from scanml.evaluation import evaluate

    report = evaluate(
        args.model, args.data, split=args.split, out_dir=args.out, calibrate_far=args.calibrate_far
    )
    print(report.to_markdown())
    return 0


# -- score ------------------------------------------------------------------------------


def _add_score(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "score",
        help="batch-score scans into a Parquet table (scanml.scoring.score)",
        description="Score every scan in a folder, glob or manifest. One row per input file, "
        "failures included; a killed job rerun with the same arguments skips what is done.",
    )
    p.add_argument(
        "--model",
        required=True,
        help="runs:/..., models:/NAME/VERSION, models:/NAME@champion or a folder",
    )
    p.add_argument("--input", required=True, help="a folder, a glob, or a manifest.csv")
    p.add_argument("--out", type=Path, required=True, help="the scores table (.parquet)")
    p.add_argument("--overlays", type=Path, default=None, help="folder for a PNG per flagged scan")
    p.add_argument(
        "--tdr", type=Path, default=None, help="folder for a DICOS Threat Detection Report per scan"
    )
    p.add_argument(
        "--workers", type=int, default=None, help="decoding processes (default: cores - 1)"
    )
    p.add_argument(
        "--threshold", type=float, default=None, help="override the model's calibrated threshold"
    )
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto")
    p.add_argument(
        "--allow-outside",
        action="store_true",
        help="score manifest paths outside the manifest's folder (refused by default)",
    )
    p.add_argument(
        "--retry-failed", action="store_true", help="score again the files of error rows"
    )
    cli_watch.add_store_options(p)
    p.set_defaults(func=_run_score)


def _run_score(args: argparse.Namespace) -> int:
    from scanml.scoring import ScoringError, TableLockedError, score

    if cli_watch.uses_store(args):
        return cli_watch.run_score_with_store(args)
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


# -- compare / promote ------------------------------------------------------------------


def _add_compare(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "compare", help="runs side by side, best first (scanml.evaluation.compare_runs)"
    )
    p.add_argument("--experiment", default="scanml", help="MLflow experiment name")
    p.add_argument("--metric", default="val/auroc", help="sort key (default: val/auroc)")
    p.add_argument("--limit", type=int, default=20)
    p.set_defaults(func=_run_compare)


def _run_compare(args: argparse.Namespace) -> int:
    from scanml.evaluation import compare_runs

    table = compare_runs(args.experiment, metric=args.metric, limit=args.limit)
    print(
        table.to_string(index=False) if len(table) else f"no runs in experiment {args.experiment!r}"
    )
    return 0


def _add_promote(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("promote", help="set the 'champion' alias (scanml.evaluation.promote)")
    p.add_argument(
        "target", metavar="RUN_OR_VERSION", help="an MLflow run id or a registered model version"
    )
    p.add_argument("--name", default="scanml-anomaly", help="registered model name")
    p.add_argument("--alias", default="champion")
    p.set_defaults(func=_run_promote)


def _run_promote(args: argparse.Namespace) -> int:
    from scanml.evaluation import promote

    change = promote(args.target, name=args.name, alias=args.alias)
    print(change)
    return 0


# -- info / demo / bench ----------------------------------------------------------------


def _add_info(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "info", help="read scan files and print what scanml sees (scanml.io.read_scan)"
    )
    p.add_argument("paths", nargs="+", type=Path)
    p.add_argument(
        "--spacing-mm",
        type=float,
        nargs=2,
        default=None,
        metavar=("ROW", "COL"),
        help="pixel spacing for TIFF/PNG/.npy, which carry none",
    )
    p.add_argument(
        "--profile",
        default=None,
        help="scanner profile to apply (a name in configs/profiles or $SCANML_PROFILES)",
    )
    p.set_defaults(func=_run_info)


def _run_info(args: argparse.Namespace) -> int:
    import warnings

    from scanml.io import ScanAssumptionWarning, ScanReadError, read_scan

    failed = 0
    for path in args.paths:
        try:
            with warnings.catch_warnings():  # printed below, with the file's other facts
                warnings.simplefilter("ignore", ScanAssumptionWarning)
                scan = read_scan(
                    path,
                    spacing_mm=tuple(args.spacing_mm) if args.spacing_mm else None,
                    profile=args.profile,
                )
        except ScanReadError as exc:
            print(f"{path}: ERROR {exc.reason}")
            failed += 1
            continue
        except ValueError as exc:  # an unknown profile name, an invalid profile file
            raise UserFacingError(str(exc)) from exc
        _, height, width = scan.attenuation.shape
        print(
            f"{path}: {height} x {width} px, channels {scan.channels}, spacing {scan.spacing_mm} mm, "
            f"attenuation {scan.attenuation.min():.2f}..{scan.attenuation.max():.2f}, "
            f"site {scan.meta.get('site')}"
        )
        _print_reading_notes(scan.meta)
    return 1 if failed else 0


def _print_reading_notes(meta: dict) -> None:
    """What the reader applied and assumed, so that no guess goes unseen."""
    encoding = meta.get("encoding")
    if encoding in ("LIN", "LOG"):
        print(f"  values: {encoding}, sign {meta.get('sign', 1):+d}")
    print(f"  profile: {meta.get('profile') or 'none'}; spacing from {meta.get('spacing_source')}")
    open_beam = meta.get("open_beam") or {}
    if open_beam:
        channels = open_beam.get("channels") or []
        levels = ", ".join(
            f"{c['air_transmission_min']:.1%}..{c['air_transmission_max']:.1%}" for c in channels
        )
        print(
            f"  open beam: {open_beam.get('method')}"
            + (f", air at {levels} of full scale" if levels else "")
            + (", corrected" if open_beam.get("applied") else "")
        )
    for override in meta.get("profile_overrides") or []:
        print(f"  profile: {override}")
    for note in meta.get("assumptions") or []:
        print(f"  ASSUMED: {note}")


def _add_demo(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "demo", help="the whole job on simulated data: data, train, evaluate, score"
    )
    p.add_argument("--workdir", type=Path, default=Path("."))
    p.add_argument("--config", type=Path, default=Path("configs/default.yaml"))
    p.add_argument("--n-scans", type=int, default=300)
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from scanml.demo import run_demo

    run_demo(args.workdir, config=args.config, n_scans=args.n_scans)
    return 0


def _add_bench(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "bench", help="speed benchmarks into reports/ and MLflow (scanml.bench)"
    )
    p.add_argument("--out", type=Path, default=Path("reports"))
    p.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke check")
    p.add_argument(
        "--skip-training",
        action="store_true",
        help="leave out the time-to-AUROC training (~25 min on 2 cores)",
    )
    quality = p.add_argument_group(
        "detection quality (--quality; scanml.quality.run_quality_benchmark, make bench-quality)"
    )
    quality.add_argument(
        "--quality",
        action="store_true",
        help="train the preset within its time budget, then measure it with 95 %% intervals "
        "on the test split, a left-out site and an independent generator's scans",
    )
    quality.add_argument("--data", type=Path, help="training data (manifest + COCO)")
    quality.add_argument("--left-out", type=Path, help="scans of a site left out of training")
    quality.add_argument("--foreign", type=Path, help="the independent generator's scans")
    quality.add_argument("--config", type=Path, default=Path("configs/default.yaml"))
    quality.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE"
    )
    p.set_defaults(func=_run_bench)


def _run_bench(args: argparse.Namespace) -> int:
    from scanml.bench import run_benchmarks

    if args.quality:
        return _run_quality_bench(args)
    path = run_benchmarks(args.out, quick=args.quick, training=not args.skip_training)
    print(f"benchmark report: {path}")
    return 0


def _run_quality_bench(args: argparse.Namespace) -> int:
    missing = [
        f"--{name.replace('_', '-')} {getattr(args, name)}"
        for name in ("data", "left_out", "foreign")
        if getattr(args, name) is None or not (getattr(args, name) / "manifest.csv").is_file()
    ]
    if missing:
        raise UserFacingError(
            "--quality needs --data, --left-out and --foreign folders with a manifest.csv "
            f"(missing or without one: {', '.join(missing)}); `make bench-quality` makes them"
        )
    from scanml.config import ConfigError, load_config
    from scanml.quality import run_quality_benchmark

    try:
        load_config(args.config, args.overrides)
    except ConfigError as exc:
        raise UserFacingError(str(exc)) from None
    report = run_quality_benchmark(
        data_dir=args.data,
        left_out_dir=args.left_out,
        foreign_dir=args.foreign,
        out_dir=args.out,
        config_path=args.config,
        overrides=args.overrides,
        command=" ".join(["scanml", *sys.argv[1:]]) if sys.argv[1:] else "make bench-quality",
    )
    print(f"quality report: {args.out / 'quality.md'} ({report.seconds / 60:.1f} min)")
    return 0


def _csv(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]
