"""MLflow tracking that survives a dead server: real server processes, really killed."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient

from scanml.tracking import Tracker, resolve_tracking_uri, run_tags


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_server(root: Path, port: int) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        f"sqlite:///{root / 'server.db'}",
        "--artifacts-destination",
        str(root / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as answer:
                if answer.status == 200:
                    return process
        except OSError:
            time.sleep(0.5)
        if process.poll() is not None:
            break
    _kill(process)
    raise RuntimeError("mlflow server did not start")


def _kill(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def test_default_store_is_local_sqlite(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri() == "sqlite:///mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://example:5000")
    assert resolve_tracking_uri() == "http://example:5000"
    assert resolve_tracking_uri("sqlite:///x.db") == "sqlite:///x.db"


@pytest.mark.timeout(120)
def test_unreachable_server_warns_and_training_goes_on() -> None:
    tracker = Tracker(f"http://127.0.0.1:{_free_port()}", "nowhere", max_retries=0, timeout_s=2)
    with pytest.warns(RuntimeWarning, match="training goes on"):
        assert tracker.start(run_name="offline") is None
    tracker.log_metrics({"loss": 1.0}, step=1)  # no run: nothing to send, nothing raised
    tracker.end()
    assert not tracker.available


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_outage_then_recovery_loses_no_metric(tmp_path: Path) -> None:
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    server = _start_server(tmp_path, port)
    try:
        tracker = Tracker(uri, "outage", max_retries=0, timeout_s=2, retry_after_s=0.0)
        run_id = tracker.start(run_name="survives", tags=run_tags())
        assert run_id
        tracker.log_metrics({"loss": 3.0}, step=1)

        _kill(server)  # the server dies for real, mid-run
        with pytest.warns(RuntimeWarning, match="training goes on"):
            tracker.log_metrics({"loss": 2.0}, step=2)
        tracker.log_metrics({"loss": 1.5}, step=3)
        assert not tracker.available

        server = _start_server(tmp_path, port)
        tracker.log_metrics({"loss": 1.0}, step=4)  # flushes what was kept
        tracker.end()
        assert tracker.available

        client = MlflowClient(uri)
        history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "loss"))
        assert history == [(1, 3.0), (2, 2.0), (3, 1.5), (4, 1.0)]
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        assert "version.torch" in run.data.tags
    finally:
        _kill(server)


def test_tracking_sits_below_every_step_and_still_resolves_the_moved_pyfunc() -> None:
    code = (
        "import sys, scanml.tracking as t; "
        "print(sorted(m for m in sys.modules if m.startswith('scanml.'))); "
        "from scanml.tracking import ScanmlPyfunc, log_model; import scanml.pyfunc as p; "
        "print(ScanmlPyfunc is p.ScanmlPyfunc and log_model is p.log_model)"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    imported, moved = completed.stdout.splitlines()
    assert imported == "['scanml.tracking']"  # no scoring, predict or models behind it
    assert moved == "True"  # models logged before the move import it from tracking
