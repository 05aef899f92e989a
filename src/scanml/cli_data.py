"""``scanml synth`` and ``scanml info``: making scans, and seeing what scanml reads in one.

Argument parsing only; each command calls the library function its help names.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from scanml.cli_args import comma_list, subcommand
from scanml.cli_checks import UserFacingError, check_writable

__all__ = ["add_info", "add_synth"]


def add_synth(commands: argparse._SubParsersAction) -> None:
    p = subcommand(
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
        "--sites",
        type=comma_list,
        default=None,
        help="comma-separated scanner profiles (None: all)",
    )
    p.add_argument(
        "--lengths", type=comma_list, default="20ft,40ft", help="container lengths, comma-separated"
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


def add_info(commands: argparse._SubParsersAction) -> None:
    p = subcommand(
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
