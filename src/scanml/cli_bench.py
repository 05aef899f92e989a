"""``scanml demo`` and ``scanml bench``: the whole job on simulated data, and the benchmarks.

Argument parsing only; each command calls the library function its help names.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scanml.cli_args import subcommand
from scanml.cli_checks import UserFacingError, check_writable, load_config

__all__ = ["add_bench", "add_demo"]


def add_demo(commands: argparse._SubParsersAction) -> None:
    p = subcommand(
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


def add_bench(commands: argparse._SubParsersAction) -> None:
    p = subcommand(commands, "bench", "speed benchmarks into reports/ and MLflow (scanml.bench)")
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
    quality.add_argument(
        "--model",
        dest="models",
        action="append",
        default=[],
        metavar="URI",
        help="measure this trained model instead of training one (repeat it to put models "
        "side by side, each against the first on the same scans; needs --left-out and "
        "--foreign; writes quality-models.md; scanml.quality.compare_models)",
    )
    quality.add_argument(
        "--arm",
        dest="arms",
        action="append",
        nargs="+",
        default=[],
        metavar=("NAME", "URI"),
        help="several runs of one recipe, measured like --model and grouped: each arm's mean "
        "over its runs and its difference from the first arm, with intervals that carry the "
        "spread between runs (repeat it, the reference recipe first)",
    )
    quality.add_argument("--data", type=Path, help="training data (manifest + COCO)")
    quality.add_argument("--left-out", type=Path, help="scans of a site left out of training")
    quality.add_argument("--foreign", type=Path, help="the independent generator's scans")
    quality.add_argument(
        "--bootstrap",
        type=int,
        default=2000,
        metavar="N",
        help="resamples behind each 95 %% interval (fewer: faster, rougher intervals)",
    )
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
    if not 1 <= args.bootstrap <= 100_000:
        raise UserFacingError(f"--bootstrap {args.bootstrap}: must be 1 to 100000")
    if args.models or args.arms:
        return _run_model_comparison(args)
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
    _make_out(args.out)
    from scanml.quality import run_quality_benchmark

    report = run_quality_benchmark(
        data_dir=args.data,
        left_out_dir=args.left_out,
        foreign_dir=args.foreign,
        out_dir=args.out,
        config_path=args.config,
        overrides=args.overrides,
        bootstrap=args.bootstrap,
        command=" ".join(["scanml", *sys.argv[1:]]) if sys.argv[1:] else "make bench-quality",
    )
    print(f"quality report: {args.out / 'quality.md'} ({report.seconds / 60:.1f} min)")
    return 0


def _run_model_comparison(args: argparse.Namespace) -> int:
    if args.data is not None or args.overrides:
        raise UserFacingError(
            f"{_given(args)} measures trained models and trains none: leave out --data and --set"
        )
    models = list(args.models)
    arms: dict[str, list[int]] = {}
    if args.arms:
        if args.models:
            raise UserFacingError("give the models either with --model or with --arm, not both")
        for name, *uris in args.arms:
            if not uris:
                raise UserFacingError(
                    f"--arm {name}: give a name, then its models (--arm NAME URI ...)"
                )
            if name in arms:
                raise UserFacingError(f"--arm {name}: two arms have that name")
            arms[name] = list(range(len(models), len(models) + len(uris)))
            models.extend(uris)
    missing = [
        f"--{name.replace('_', '-')} {getattr(args, name)}"
        for name in ("left_out", "foreign")
        if getattr(args, name) is None or not (getattr(args, name) / "manifest.csv").is_file()
    ]
    if missing:
        raise UserFacingError(
            f"{_given(args)} needs --left-out and --foreign folders with a manifest.csv "
            f"(missing or without one: {', '.join(missing)}); `make bench-quality` makes them"
        )
    check_writable(args.out, "--out")
    from scanml.registry import resolve_model

    for model in models:
        resolve_model(model)
    _make_out(args.out)  # last: a start that fails its checks leaves no folder behind
    from scanml.quality import compare_models

    report = compare_models(
        models,
        left_out_dir=args.left_out,
        foreign_dir=args.foreign,
        out_dir=args.out,
        bootstrap=args.bootstrap,
        arms=arms,
        command=" ".join(["scanml", *sys.argv[1:]]),
    )
    print(f"quality report: {args.out / 'quality-models.md'} ({report.seconds / 60:.1f} min)")
    return 0


def _given(args: argparse.Namespace) -> str:
    return "--arm" if args.arms and not args.models else "--model"


def _make_out(folder: Path) -> None:
    """The report folder, made before the long work rather than found unwritable after it."""
    check_writable(folder, "--out")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserFacingError(f"--out {folder}: cannot be created ({exc.strerror})") from None
