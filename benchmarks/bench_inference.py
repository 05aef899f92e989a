"""Whole-scan inference against the naive sliding window, on 20 ft and 40 ft scans.

For each container size: scans/s and megapixels/s of :class:`scanml.predict.Predictor`
(one fully-convolutional pass), of a sliding window at the same output
stride (a 128 px tile per output cell), the speed-up, and the network's
achieved FLOP/s as a share of this machine's float32 matmul FLOP/s. Also
the time :func:`scanml.preprocess.prepare` takes for a 2-megapixel scan.
Prints a Markdown table. Run: ``.venv/bin/python benchmarks/bench_inference.py``.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from scanml.bench import matmul_flops
from scanml.bench_inference import inference_benchmark
from scanml.io import Scan
from scanml.preprocess import Preprocessing, prepare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--spacing-mm", type=float, default=8.0, help="the model's spacing")
    parser.add_argument("--window", type=int, default=128, help="sliding-window tile, pixels")
    parser.add_argument("--quick", action="store_true", help="one timed run instead of three")
    args = parser.parse_args()
    device = torch.device(args.device)

    peak = matmul_flops(device)
    prepare_ms = prepare_milliseconds()
    rows = inference_benchmark(
        args.arch, device=device, spacing_mm=args.spacing_mm, window=args.window, quick=args.quick
    )

    print(f"{args.arch} on {device} ({torch.get_num_threads()} threads, {os.cpu_count()} CPUs),")
    print(f"{args.spacing_mm} mm/px, sliding window {args.window} px, random weights\n")
    print(
        "| scan | model pixels | whole scans/s | whole MP/s | windows | sliding scans/s "
        "| speed-up | GFLOP/scan | GFLOP/s | share of matmul |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['scan']} | {row['pixels']} | {row['whole_scans_per_s']:.2f} "
            f"| {row['whole_megapixels_per_s']:.2f} | {row['windows']} "
            f"| {row['window_scans_per_s']:.3f} | {row['speedup']:.1f}x "
            f"| {row['gflop_per_scan']:.1f} | {row['flops_per_s'] / 1e9:.1f} "
            f"| {100 * row['flops_per_s'] / peak:.0f} % |"
        )
    print(f"\nfloat32 matmul: {peak / 1e9:.1f} GFLOP/s")
    print(f"prepare(), 2 MP scan at 5 mm to 8 mm: {prepare_ms:.1f} ms (best of 5)")


def prepare_milliseconds(repeats: int = 5) -> float:
    """prepare() on a 2-megapixel single-energy scan at 5 mm, to the model's 8 mm."""
    attenuation = np.random.default_rng(0).uniform(0, 6, (1, 1000, 2000)).astype(np.float32)
    scan = Scan(attenuation, (5.0, 5.0), ["high"])
    preprocessing = Preprocessing(channels=("high",), spacing_mm=8.0)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        prepare(scan, preprocessing)
        best = min(best, time.perf_counter() - started)
    return best * 1e3


if __name__ == "__main__":
    main()
