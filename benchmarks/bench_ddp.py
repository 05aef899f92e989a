"""DDP training with N processes vs 1: tiles/s, wall time, and the validation AUROC reached.

Trains the same preset on the same data with ``scanml train --nproc N`` for
each N (1 and 2 by default), each into its own MLflow store, and prints one
Markdown row per N: wall time of the whole command, seconds per epoch
(rank 0's), tiles per second over all ranks (every training scan's tiles
per epoch, divided by rank 0's epoch time), and the best validation AUROC
(the same validation scans for every N). Figures from a shared machine are
noisy: run it on a quiet one to quote them. On a GPU machine the ranks use
NCCL, one GPU each.

Run::

    .venv/bin/scanml synth --out data/bench-ddp --n-scans 100 --seed 0 --sites antwerp,rotterdam
    .venv/bin/python benchmarks/bench_ddp.py --data data/bench-ddp --config configs/smoke.yaml
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="a dataset folder")
    parser.add_argument("--config", type=Path, default=Path("configs/smoke.yaml"))
    parser.add_argument("--nproc", default="1,2", help="comma-separated process counts")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()

    from mlflow import MlflowClient

    print("| processes | wall s | s/epoch (rank 0) | tiles/s (all ranks) | best val AUROC |")
    print("|---:|---:|---:|---:|---:|")
    for nproc in (int(n) for n in args.nproc.split(",")):
        with tempfile.TemporaryDirectory() as workdir:
            uri = f"sqlite:///{workdir}/mlflow.db"
            command = [sys.executable, "-m", "scanml", "train", "--nproc", str(nproc)]
            command += ["--config", str(args.config.resolve()), "--data", str(args.data.resolve())]
            for override in [
                *args.overrides,
                "tracking.run_name=bench",
                "tracking.system_metrics=false",
            ]:
                command += ["--set", override]
            started = time.perf_counter()
            subprocess.run(
                command,
                cwd=workdir,
                env={**os.environ, "MLFLOW_TRACKING_URI": uri},
                check=True,
                stdout=subprocess.DEVNULL,
            )
            wall = time.perf_counter() - started
            client = MlflowClient(uri)
            run = client.search_runs(
                [client.get_experiment_by_name(_experiment(args)).experiment_id]
            )[0]
            params, metrics = run.data.params, run.data.metrics
            epoch_s = [
                m.value for m in client.get_metric_history(run.info.run_id, "train/epoch_seconds")
            ]
            tiles_per_epoch = int(params["data.n_train"]) * int(params["data.tiles_per_scan"])
            mean_epoch = sum(epoch_s) / len(epoch_s)
            print(
                f"| {nproc} | {wall:.0f} | {mean_epoch:.1f} | {tiles_per_epoch / mean_epoch:.1f} | {metrics.get('best/auroc', float('nan')):.3f} |",
                flush=True,
            )


def _experiment(args: argparse.Namespace) -> str:
    from scanml.config import load_config

    return load_config(args.config, args.overrides).tracking.experiment


if __name__ == "__main__":
    main()
