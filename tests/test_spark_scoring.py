"""`scanml score --engine spark`: a real local Spark session, a driver really killed.

The Spark job must write what the local job writes (same rows, same
columns) and keep its guarantee: killed with SIGKILL and rerun, every scan
is in the table exactly once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from conftest import TrainedModel

pyspark = pytest.importorskip("pyspark")

pytestmark = [pytest.mark.slow, pytest.mark.spark]


@pytest.mark.timeout(1500)  # a smoke training (the shared fixture), two Spark sessions
def test_spark_job_killed_and_rerun_scores_each_scan_once_like_scanml_score(
    trained_model: TrainedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from scanml.scoring import score
    from scanml.spark import score_with_spark, spark_session

    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained_model.tracking_uri)
    # Eight scans (four Spark tasks of two, two waves on local[2]): enough to kill between waves.
    manifest = pd.read_csv(trained_model.data_dir / "manifest.csv").head(8)
    n_scans = len(manifest)
    inputs = tmp_path / "manifest.csv"
    manifest.assign(path=[str(trained_model.data_dir / p) for p in manifest["path"]]).to_csv(
        inputs, index=False
    )
    local = score(
        trained_model.model_uri,
        inputs,
        tmp_path / "local.parquet",
        workers=0,
        progress=False,
        allow_outside=True,
    )
    assert local.scanned + local.failed == n_scans

    out = tmp_path / "spark.parquet"
    parts = out.with_name(f"{out.name}.parts")
    driver = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "scanml",
            "score",
            "--engine",
            "spark",
            "--spark-master",
            "local[2]",
            "--spark-batch-size",
            "2",
            "--model",
            trained_model.model_uri,
            "--input",
            str(inputs),
            "--allow-outside",
            "--out",
            str(out),
        ],
        env={**os.environ, "PYSPARK_PYTHON": sys.executable},
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "driver.err").open("w"),
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 600
        while not list(parts.glob("part-*.parquet")):
            assert driver.poll() is None, (tmp_path / "driver.err").read_text()[-2000:]
            assert time.monotonic() < deadline, "no part committed in time"
            time.sleep(0.2)
        os.kill(driver.pid, signal.SIGKILL)  # the driver dies mid-job, its table unmerged
        driver.wait(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):  # its Spark JVM and workers, if any stayed
            os.killpg(driver.pid, signal.SIGKILL)
    committed = sum(pq.read_metadata(part).num_rows for part in parts.glob("part-*.parquet"))
    assert 0 < committed < n_scans
    assert not out.exists()

    spark = spark_session("local[2]")
    try:
        rerun = score_with_spark(
            trained_model.model_uri,
            inputs,
            out,
            allow_outside=True,
            spark=spark,
            batch_size=4,
            progress=False,
        )
    finally:
        spark.stop()
    assert rerun.skipped == committed
    assert rerun.scanned + rerun.failed == n_scans - committed

    spark_rows = pq.read_table(out).drop_columns(["seconds"]).to_pylist()
    local_rows = pq.read_table(tmp_path / "local.parquet").drop_columns(["seconds"]).to_pylist()
    assert len({row["path"] for row in spark_rows}) == len(spark_rows) == n_scans
    assert [_comparable(row) for row in spark_rows] == [_comparable(row) for row in local_rows]
    assert not parts.exists()


def _comparable(row: dict) -> dict:
    """A row up to float noise. A scan scored at the threshold itself (the clean validation
    scan that set it) may fall on either side with another thread count: its flag and
    regions are left out."""
    row = _rounded(row)
    score, threshold = row["score"], row["threshold"]
    if score is not None and threshold is not None and abs(score - threshold) <= 1e-5:
        row = {k: v for k, v in row.items() if k not in ("flagged", "regions")}
    return row


def _rounded(value):
    """Rows compared up to float noise: the same code on the same CPU, other threads."""
    if isinstance(value, float):
        return round(value, 5)
    if isinstance(value, dict):
        return {key: _rounded(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_rounded(item) for item in value]
    return value
