"""``scanml score`` locally vs through Spark on the same scans: scans/s, and how each grows.

Scores the first N scans of a dataset's manifest (N = 100 and 1,000 by
default) with the local job (``scanml.scoring.score``, its decoding
workers) and with ``scanml.spark.score_with_spark`` on ``local[2]``, each
into a fresh table, and prints one Markdown row per (engine, N). The Spark
figure includes starting the session (the JVM), as a user pays it. Figures
from a shared machine are noisy: run it on a quiet one to quote them.

Run::

    .venv/bin/scanml synth --out data/bench-spark --n-scans 1000 --seed 0 --sites antwerp,rotterdam
    .venv/bin/python benchmarks/bench_spark.py --model models:/scanml-smoke/1 --data data/bench-spark
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a model URI or folder")
    parser.add_argument("--data", type=Path, required=True, help="a folder with manifest.csv")
    parser.add_argument("--scans", default="100,1000", help="comma-separated scan counts")
    parser.add_argument("--master", default="local[2]", help="Spark master")
    parser.add_argument("--workers", type=int, default=1, help="the local job's decoding workers")
    args = parser.parse_args()

    from scanml.scoring import score
    from scanml.spark import score_with_spark

    manifest = pd.read_csv(args.data / "manifest.csv")
    print("| engine | scans | seconds | scans/s |")
    print("|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as scratch:
        for count in (int(n) for n in args.scans.split(",")):
            if count > len(manifest):
                print(f"| (skipped) | {count} | only {len(manifest)} scans in {args.data} | |")
                continue
            subset = Path(scratch) / f"manifest-{count}.csv"
            manifest.head(count).assign(
                path=lambda m: [str((args.data / p).resolve()) for p in m["path"]]
            ).to_csv(subset, index=False)
            runs = {
                "local": lambda out, subset=subset: score(
                    args.model,
                    subset,
                    out,
                    workers=args.workers,
                    progress=False,
                    allow_outside=True,
                ),
                f"spark {args.master}": lambda out, subset=subset: score_with_spark(
                    args.model, subset, out, master=args.master, progress=False, allow_outside=True
                ),
            }
            for engine, run in runs.items():
                out = Path(scratch) / f"{engine.split()[0]}-{count}.parquet"
                started = time.perf_counter()
                summary = run(out)
                seconds = time.perf_counter() - started
                done = summary.scanned + summary.failed
                print(f"| {engine} | {done} | {seconds:.1f} | {done / seconds:.2f} |", flush=True)


if __name__ == "__main__":
    main()
