"""Training on two processes (DistributedDataParallel, gloo on the CPU) into one MLflow run.

`scanml train --nproc 2` is killed for real (SIGKILL to torchrun and both
ranks) after its first checkpoint, then resumed; the run ends FINISHED, with
every epoch logged once, by rank 0, and the model registered.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from mlflow import MlflowClient

from conftest import CONFIGS

pytestmark = pytest.mark.slow


def _train(workdir: Path, uri: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "scanml", "train", "--nproc", "2", *args],
        cwd=workdir,
        env={**os.environ, "MLFLOW_TRACKING_URI": uri, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=(workdir / "train.err").open("a"),
        text=True,
        start_new_session=True,
    )


def _kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants: torchrun starts each rank in a session of its own."""
    try:
        family = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for process in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(family, timeout=60)


@pytest.mark.timeout(1200)
def test_two_processes_train_into_one_run_killed_and_resumed(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_dir = tmp_path / "runs" / "ddp"
    first = _train(
        tmp_path, uri, "--config", str(CONFIGS / "smoke.yaml"), "--data", str(tiny_dataset),
        "--set", "tracking.run_name=ddp", "--set", "tracking.registered_model=scanml-ddp",
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 900
        while not (run_dir / "last.pt").exists():
            assert first.poll() is None, (tmp_path / "train.err").read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint in time"
            time.sleep(0.2)
        _kill_tree(first.pid)  # torchrun and both ranks, mid-epoch 2
        first.wait(timeout=60)
    finally:
        if first.poll() is None:
            _kill_tree(first.pid)

    resumed = _train(tmp_path, uri, "--data", str(tiny_dataset), "--resume", "ddp")
    out, _ = resumed.communicate(timeout=900)
    assert resumed.returncode == 0, (tmp_path / "train.err").read_text()[-3000:]

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("scanml-smoke")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1, "two ranks, a kill and a resume: still one run"
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["distributed.world_size"] == "2"
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert sorted(m.step for m in history) == [1, 2]
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "val/auroc")) == [1, 2]
    assert f"run id: {run.info.run_id}" in out
    assert "model: models:/scanml-ddp/1" in out
