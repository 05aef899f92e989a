"""Throughput of the simulator: ``generate_dataset`` scans/s and megapixels/s.

    .venv/bin/python benchmarks/bench_synth.py --n-scans 100 --workers 2

Writes into a temporary folder (removed afterwards) and extrapolates to the
1,000-scan dataset the project budgets five minutes for on two cores. The
machine is shared, so besides wall time it reports the CPU time the workers
used: that, divided by the cores, is what an idle machine would take.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time

from scanml.synth import generate_dataset, simulate_scan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-scans", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--format", dest="file_format", choices=("dcm", "tiff"), default="dcm")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    started = time.perf_counter()
    simulate_scan(args.seed, "antwerp", length="40ft")
    print(f"one 40 ft dual-energy scan, in process: {time.perf_counter() - started:.2f} s")

    cpu_before = _children_cpu_seconds()
    with tempfile.TemporaryDirectory() as out:
        summary = generate_dataset(
            out,
            args.n_scans,
            args.seed,
            file_format=args.file_format,
            workers=args.workers,
            progress=False,
        )
    cpu_per_scan = (_children_cpu_seconds() - cpu_before) / summary.n_scans
    rate = summary.n_scans / summary.seconds
    print(
        f"{summary.n_scans} scans ({args.file_format}, {args.workers} workers, all sites): "
        f"{summary.seconds:.1f} s, {rate:.2f} scans/s, "
        f"{summary.megapixels / summary.seconds:.2f} MP/s "
        f"({summary.megapixels / summary.n_scans:.2f} MP per scan and channel)"
    )
    print(f"1,000 scans extrapolated: {1000 / rate / 60:.1f} min at this wall rate")
    print(
        f"worker CPU {cpu_per_scan:.2f} s per scan: 1,000 scans on {args.workers} idle cores "
        f"≈ {1000 * cpu_per_scan / args.workers / 60:.1f} min"
    )


def _children_cpu_seconds() -> float:
    """User plus system CPU time of finished child processes (the pool's workers)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    main()
