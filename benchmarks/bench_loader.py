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
import time
from collections.abc import Sequence
from pathlib import Path

from torch.utils.data import DataLoader

from scanml.data import TileDataset, TileSampler, load_dataset
from scanml.preprocess import Preprocessing
from scanml.synth import generate_dataset
from scanml.transforms import ThreatProjector, TrainTransform


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


def loader_benchmark(
    data_dir: str | Path,
    *,
    channels: tuple[str, ...] = ("high",),
    spacing_mm: float = 8.0,
    tile_size: int = 128,
    tiles_per_scan: int = 64,
    batch_size: int = 64,
    workers: Sequence[int] = (0, 1, 2),
    augment: Sequence[bool] = (False, True),
    epochs: int = 3,
) -> list[dict]:
    """One row per (augment, workers): tiles, first-epoch and cached-epoch tiles/s.

    ``tiles_per_s`` is measured over epochs 2.., when every scan comes from
    a worker's cache (persistent workers): what the model sees in a long
    run. ``cold_tiles_per_s`` includes worker start-up and decoding.
    """
    if epochs < 2:
        raise ValueError("need at least two epochs: one to fill the caches, one to measure")
    dataset = load_dataset(data_dir)
    preprocessing = Preprocessing(channels=channels, spacing_mm=spacing_mm)
    rows = []
    for augmented in augment:
        transform = (
            TrainTransform(tip=ThreatProjector.from_dataset(dataset, preprocessing, n_generated=16))
            if augmented
            else None
        )
        for n_workers in workers:
            sampler = TileSampler(tile_size=tile_size, tiles_per_scan=tiles_per_scan)
            tiles = TileDataset(dataset, preprocessing, sampler, transform=transform)
            loader = DataLoader(
                tiles,
                batch_size=batch_size,
                num_workers=n_workers,
                persistent_workers=n_workers > 0,
                collate_fn=tiles.collate,
            )
            counts, seconds = [], []
            for epoch in range(epochs):
                tiles.set_epoch(epoch)
                started = time.perf_counter()
                counts.append(sum(len(batch["label"]) for batch in loader))
                seconds.append(time.perf_counter() - started)
            rows.append(
                {
                    "workers": n_workers,
                    "augment": augmented,
                    "tiles": counts[0],
                    "cold_tiles_per_s": counts[0] / seconds[0],
                    "tiles_per_s": sum(counts[1:]) / sum(seconds[1:]),
                    "reads": tiles.stats.totals()["reads"],
                }
            )
            del loader  # stops its workers before the next case starts its own
    return rows


if __name__ == "__main__":
    main()
