"""What the local-contrast input (``model.input_contrast``) costs, in training and scoring.

For each input (attenuation only, one window, two windows): the default
network's training step (batches of 16 crops of 128 px, forward, backward
and an AdamW step; random weights) and the :class:`scanml.predict.Predictor`
on whole scans of a dataset folder. Prints a Markdown table. Run:
``.venv/bin/python benchmarks/bench_input_contrast.py --data data/raw/synth``.
"""

from __future__ import annotations

import argparse
import time

import torch

from scanml.dataset import load_dataset
from scanml.io import read_scan
from scanml.models import ModelBundle, create_model
from scanml.predict import Predictor
from scanml.preprocess import Preprocessing

INPUTS: tuple[int | list[int] | None, ...] = (None, 33, [17, 65])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a dataset folder (manifest.csv)")
    parser.add_argument("--scans", type=int, default=5, help="whole scans to score")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps")
    args = parser.parse_args()

    records = list(load_dataset(args.data).records)[: args.scans]
    scans = [read_scan(r.path, spacing_mm=r.spacing_mm, site=r.site) for r in records]
    torch.manual_seed(0)
    crops = torch.rand(16, 1, 128, 128)
    print("| model.input_contrast | training step | tiles/s (network only) | scoring |")
    print("|---|---:|---:|---:|")
    for windows in INPUTS:
        network = create_model(
            "resnet18", 1, output_stride=16, stages=3, input_contrast=windows
        ).train()
        optimiser = torch.optim.AdamW(network.parameters(), 1e-3)
        for step in range(args.steps + 3):  # three to warm up
            if step == 3:
                started = time.perf_counter()
            loss = network(crops).float().mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        step_s = (time.perf_counter() - started) / args.steps
        predictor = Predictor(
            ModelBundle(
                network.eval(), "resnet18", Preprocessing(("high",), 8.0), ["a", "b", "c", "d"]
            )
        )
        predictor.predict(scans[0])
        started = time.perf_counter()
        for scan in scans:
            predictor.predict(scan)
        scan_s = (time.perf_counter() - started) / len(scans)
        print(
            f"| {windows} | {step_s * 1000:.0f} ms | {16 / step_s:.0f} | {scan_s:.2f} s/scan |",
            flush=True,
        )


if __name__ == "__main__":
    main()
