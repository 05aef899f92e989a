"""Tiles per second that TileDataset delivers through a DataLoader.

For 0, 1 and 2 workers, without and with augmentation (threat projection
and every X-ray transform), on a small simulated dataset (or ``--data``).
Two figures per case: the first epoch, which decodes and prepares every
scan and starts the workers, and the later epochs, served from each
worker's scan cache: the steady state of a long training run. Prints a
Markdown table. Run: ``.venv/bin/python benchmarks/bench_loader.py``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from scanml.bench import loader_benchmark
from scanml.data import load_dataset
from scanml.synth import generate_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="a dataset folder; default: simulate one")
    parser.add_argument("--n-scans", type=int, default=12, help="scans to simulate")
    parser.add_argument("--channels", default="high", help="comma-separated, e.g. high,low")
    parser.add_argument("--spacing-mm", type=float, default=8.0)
    parser.add_argument("--tile-size", type=int, default=128)
    parser.add_argument("--tiles-per-scan", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        data_dir = args.data
        if data_dir is None:
            data_dir = Path(folder) / "data"
            generate_dataset(
                data_dir, args.n_scans, seed=0, sites=["antwerp", "rotterdam"], progress=False
            )
        rows = loader_benchmark(
            data_dir,
            channels=tuple(args.channels.split(",")),
            spacing_mm=args.spacing_mm,
            tile_size=args.tile_size,
            tiles_per_scan=args.tiles_per_scan,
            epochs=args.epochs,
        )
    print(
        f"{len(load_dataset(data_dir)) if args.data else args.n_scans} scans, {os.cpu_count()} CPUs"
    )
    print(f"tiles {args.tile_size} px at {args.spacing_mm} mm, channels {args.channels}\n")
    print("| workers | augmented | first epoch tiles/s | cached epochs tiles/s |")
    print("|---:|:---:|---:|---:|")
    for row in rows:
        augmented = "yes" if row["augment"] else "no"
        print(
            f"| {row['workers']} | {augmented} | {row['cold_tiles_per_s']:.0f}"
            f" | {row['tiles_per_s']:.0f} |"
        )


if __name__ == "__main__":
    main()
