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
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from scanml import __version__, cli_scale, cli_watch
from scanml.cli_checks import (
    MODEL_HELP,
    UserFacingError,
    check_dataset,
    check_inputs,
    check_writable,
    load_config,
)

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
    if args.command in ("evaluate", "compare", "promote", "score", "watch"):
        from scanml.mlflow_client import bound_client_calls

        bound_client_calls()  # a tracking server that is down fails in seconds, not minutes
    try:
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
            ("scanml.data", "DataError"),
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
        _add_synth,
        _add_train,
        _add_evaluate,
        _add_score,
        _add_compare,
        _add_promote,
        _add_info,
        _add_demo,
        _add_bench,
        _add_exchange,
        cli_watch.add_watch,
        cli_scale.add_server,
    ):
        add(commands)
    return parser


def _subcommand(
    commands: argparse._SubParsersAction, name: str, help: str, description: str | None = None
) -> argparse.ArgumentParser:
    """A subcommand whose --help shows every default."""
    return commands.add_parser(
        name,
        help=help,
        description=description or help,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )


# -- synth ------------------------------------------------------------------------------


def _add_synth(commands: argparse._SubParsersAction) -> None:
    p = _subcommand(
        commands,
        "synth",
        "simulate container scans with ground truth (scanml.synth.generate_dataset)",
        "Simulate side-view transmission X-ray scans of shipping containers, with "
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
        "--sites", type=_csv, default=None, help="comma-separated scanner profiles (None: all)"
    )
    p.add_argument(
        "--lengths", type=_csv, default="20ft,40ft", help="container lengths, comma-separated"
    )
    p.add_argument(
        "--energy",
        choices=["site", "single", "dual"],
        default="site",
        help="single or dual energy, or as the site's scanner does",
    )
    p.add_argument(
        "--format",
        dest="file_format",
        choices=["dcm", "tiff"],
        default="dcm",
        help="DICOS or 16-bit TIFF",
    )
    p.add_argument("--workers", type=int, default=None, help="processes (None: all cores)")
    p.add_argument(
        "--skip-existing", action="store_true", help="keep scans already written (resume)"
    )
    p.add_argument(
        "--vary-acquisition",
        action="store_true",
        help="draw each scan's flux, blur, streaks, pixel pitch and saturation around its "
        "site's (scanners differ as much as scenes do)",
    )
    p.add_argument(
        "--threat-strength",
        type=_strength_range,
        default=(1.0, 1.0),
        metavar="LOW,HIGH",
        help="thin each concealment along the ray by a factor drawn log-uniformly in "
        "[LOW, HIGH] (0 < LOW <= HIGH <= 1; default 1,1: as drawn), so that threats range "
        "from obvious to barely visible",
    )
    p.add_argument(
        "--scene-variety",
        action="store_true",
        help="more cargo kinds (cars) and a floor build drawn per container",
    )
    p.set_defaults(func=_run_synth)


def _strength_range(text: str) -> tuple[float, float]:
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected LOW,HIGH, e.g. 0.2,1") from None
    if not 0.0 < low <= high <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r}: need 0 < LOW <= HIGH <= 1")
    return low, high


def _run_synth(args: argparse.Namespace) -> int:
    if args.n_scans < 1:
        raise UserFacingError(f"--n-scans {args.n_scans}: need at least one scan")
    if not 0.0 <= args.anomaly_fraction <= 1.0:
        raise UserFacingError(f"--anomaly-fraction {args.anomaly_fraction}: must be in [0, 1]")
    check_writable(args.out, "--out")
    from scanml.synth import generate_dataset

    try:
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
            threat_strength=args.threat_strength,
            scene_variety=args.scene_variety,
        )
    except ValueError as exc:  # an unknown site or length: the message lists the known ones
        raise UserFacingError(str(exc)) from None
    print(_synth_summary(summary))
    return 0


def _synth_summary(summary) -> str:
    clean = summary.n_scans - summary.n_anomalous
    rate = f"{summary.scans_per_second:.1f} scans/s"
    return "\n".join(
        [
            f"{summary.n_scans} scans in {summary.out_dir}: {summary.n_anomalous} with a "
            f"concealment ({summary.n_objects} objects), {clean} clean",
            f"  written {summary.n_generated}, kept from before {summary.n_skipped}; "
            f"{summary.megapixels:.0f} megapixels in {summary.seconds:.1f} s ({rate})",
            f"  manifest     {summary.manifest}",
            f"  annotations  {summary.annotations}",
        ]
    )


# -- train ------------------------------------------------------------------------------


def _add_train(commands: argparse._SubParsersAction) -> None:
    p = _subcommand(
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
    print(f"checkpoints: {result.run_dir}")
    return 0


# -- evaluate ---------------------------------------------------------------------------


def _add_evaluate(commands: argparse._SubParsersAction) -> None:
    p = _subcommand(
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


# -- score ------------------------------------------------------------------------------


def _add_score(commands: argparse._SubParsersAction) -> None:
    p = _subcommand(
        commands,
        "score",
        "batch-score scans into a Parquet table (scanml.scoring.score)",
        "Score every scan in a folder, glob or manifest. One row per input file, "
        "failures included; a killed job rerun with the same arguments skips what is done.",
    )
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--input", required=True, help="a folder, a glob, or a manifest.csv")
    p.add_argument("--out", type=Path, required=True, help="the scores table (.parquet)")
    p.add_argument("--overlays", type=Path, default=None, help="folder for a PNG per flagged scan")
    p.add_argument(
        "--tdr", type=Path, default=None, help="folder for a DICOS Threat Detection Report per scan"
    )
    p.add_argument(
        "--workers", type=int, default=None, help="decoding processes (None: cores - 1, at most 8)"
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="override the model's calibrated threshold (None: the model's)",
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


# -- compare / promote ------------------------------------------------------------------


def _add_compare(commands: argparse._SubParsersAction) -> None:
    p = _subcommand(
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


def _add_promote(commands: argparse._SubParsersAction) -> None:
    p = _subcommand(
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


# -- info / demo / bench ----------------------------------------------------------------


def _add_info(commands: argparse._SubParsersAction) -> None:
    p = _subcommand(
        commands, "info", "read scan files and print what scanml sees (scanml.io.read_scan)"
    )
    p.add_argument("paths", nargs="+", type=Path, help="scan files")
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
    p = _subcommand(
        commands,
        "demo",
        "the whole job on simulated data: data, train, evaluate, score (scanml.demo.run_demo)",
    )
    p.add_argument("--workdir", type=Path, default=Path("."), help="project folder to work in")
    p.add_argument(
        "--config", type=Path, default=Path("configs/default.yaml"), help="training preset"
    )
    p.add_argument("--n-scans", type=int, default=300, help="scans to simulate for training")
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    load_config(args.config, [])
    check_writable(args.workdir, "--workdir")
    from scanml.demo import run_demo

    run_demo(args.workdir, config=args.config, n_scans=args.n_scans)
    return 0


def _add_bench(commands: argparse._SubParsersAction) -> None:
    p = _subcommand(commands, "bench", "speed benchmarks into reports/ and MLflow (scanml.bench)")
    p.add_argument("--out", type=Path, default=Path("reports"), help="folder for the report")
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
    load_config(args.config, args.overrides)
    from scanml.quality import run_quality_benchmark

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


# -- exchange between agencies: export / import / export-model / import-model -----------


def _add_exchange(commands: argparse._SubParsersAction) -> None:
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


def _csv(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]
