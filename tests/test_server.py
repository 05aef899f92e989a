"""The shared tracking server: a real PostgreSQL and a real `mlflow server` with logins.

One PostgreSQL and one server per module. An anonymous client is refused; a
user trains into it (its own MLflow run and registered model) while the
server is killed and started again; a read-only user cannot promote.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

import postgres_server
from conftest import CONFIGS
from scanml.server import (
    ServerConfigError,
    ServerSettings,
    normalise_database_uri,
    server_environment,
    start_server,
)

pytestmark = pytest.mark.skipif(
    postgres_server.missing_reason() is not None, reason=str(postgres_server.missing_reason())
)


@dataclass
class SharedServer:
    settings: ServerSettings
    root: Path
    admin_password: str
    process: subprocess.Popen | None

    @property
    def url(self) -> str:
        return self.settings.url

    def start(self) -> None:
        self.process = start_server(
            self.settings, config_dir=self.root, log_path=self.root / "server.log"
        )

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def shared_server() -> Iterator[SharedServer]:
    # Under /tmp, not pytest's tmp_path: the postgres user must reach the cluster's folder.
    root = Path(tempfile.mkdtemp(prefix="scanml-server-"))
    root.chmod(0o755)
    try:
        database = postgres_server.start_postgres(root / "postgres")
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    settings = ServerSettings(
        backend_store_uri=database.uri("mlflow"),
        artifacts_destination=str(root / "artifacts"),
        port=postgres_server.free_port(),
        workers=1,
    )
    admin_password = secrets.token_urlsafe(16)
    server = SharedServer(settings, root, admin_password, None)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("MLFLOW_AUTH_ADMIN_USERNAME", "admin")
            patch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", admin_password)
            server.start()  # the first start creates MLflow's tables: the slow part
            yield server
    finally:
        server.kill()
        database.stop()
        shutil.rmtree(root, ignore_errors=True)


def _login(patch: pytest.MonkeyPatch, user: str, password: str, url: str) -> None:
    patch.setenv("MLFLOW_TRACKING_URI", url)
    patch.setenv("MLFLOW_TRACKING_USERNAME", user)
    patch.setenv("MLFLOW_TRACKING_PASSWORD", password)


def test_server_settings_refuse_what_cannot_work(tmp_path: Path) -> None:
    assert (
        normalise_database_uri("postgresql://u:p@h:5432/db") == "postgresql+pg8000://u:p@h:5432/db"
    )
    with pytest.raises(ServerConfigError, match="not a database URI"):
        normalise_database_uri(str(tmp_path / "mlruns"))
    with pytest.raises(ServerConfigError, match="MLFLOW_AUTH_ADMIN_PASSWORD"):
        server_environment(tmp_path / "basic_auth.ini", environ={})
    done = subprocess.run(
        [sys.executable, "-m", "scanml", "server", "--backend-store-uri", "postgresql://h/db"],
        env={**os.environ, "MLFLOW_AUTH_ADMIN_PASSWORD": ""},
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        line for line in done.stderr.strip().splitlines() if "MLFLOW_AUTH_ADMIN_PASSWORD" in line
    ]
    assert "Traceback" not in done.stderr


@pytest.mark.slow
@pytest.mark.timeout(900)  # includes creating MLflow's tables in PostgreSQL
def test_anonymous_and_wrong_password_are_refused(shared_server: SharedServer) -> None:
    search = f"{shared_server.url}/api/2.0/mlflow/experiments/search?max_results=1"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(search, timeout=60)
    assert refused.value.code == 401
    wrong = urllib.request.Request(search, headers={"Authorization": "Basic YWRtaW46bm9wZQ=="})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(wrong, timeout=60)  # admin:nope
    assert refused.value.code == 401


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_training_survives_a_restart_and_a_reader_cannot_promote(
    shared_server: SharedServer, tiny_dataset: Path, tmp_path: Path, capsys
) -> None:
    from mlflow.server import get_app_client

    from scanml.cli import main

    passwords = {"trainer": secrets.token_urlsafe(16), "reader": secrets.token_urlsafe(16)}
    with pytest.MonkeyPatch.context() as patch:
        _login(patch, "admin", shared_server.admin_password, shared_server.url)
        users = get_app_client("basic-auth", tracking_uri=shared_server.url)
        for user, password in passwords.items():
            users.create_user(user, password)
    training = _start_training(shared_server.url, tiny_dataset, tmp_path, passwords["trainer"])
    try:
        with pytest.MonkeyPatch.context() as patch:
            _login(patch, "admin", shared_server.admin_password, shared_server.url)
            _wait_for_run(MlflowClient(shared_server.url), training)
        shared_server.kill()  # the server dies for real while the run is open
        _wait_for(lambda: "training goes on" in (tmp_path / "train.err").read_text(), training)
        # Hold the training while the server comes back, so the run's end (and its
        # model's registration) meets a live server however slow the restart is.
        training.send_signal(signal.SIGSTOP)
        try:
            shared_server.start()
        finally:
            training.send_signal(signal.SIGCONT)
        try:
            out, _ = training.communicate(timeout=1200)
        except subprocess.TimeoutExpired:
            pytest.fail("training did not end: " + (tmp_path / "train.err").read_text()[-2000:])
    finally:
        if training.poll() is None:
            training.kill()
    errors = (tmp_path / "train.err").read_text()
    assert training.returncode == 0, errors[-2000:]
    assert "model: models:/scanml-shared/1" in out, out

    with pytest.MonkeyPatch.context() as patch:
        _login(patch, "trainer", passwords["trainer"], shared_server.url)
        client = MlflowClient(shared_server.url)
        run_id = out.split("run id: ", 1)[1].split()[0]
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        assert sorted(m.step for m in client.get_metric_history(run_id, "train/loss")) == [1, 2]
        assert "best/auroc" in run.data.metrics
        assert client.get_registered_model("scanml-shared").name == "scanml-shared"

        _login(
            patch, "reader", passwords["reader"], shared_server.url
        )  # READ by default: may look, not promote
        assert client.get_model_version("scanml-shared", "1").run_id == run_id
        assert main(["promote", "1", "--name", "scanml-shared"]) == 2
        refused = capsys.readouterr().err.strip().splitlines()
        assert len(refused) == 1 and "permission denied" in refused[0], refused
        with pytest.raises(MlflowException):
            client.get_model_version_by_alias("scanml-shared", "champion")

        _login(patch, "trainer", passwords["trainer"], shared_server.url)  # the model's creator may
        assert main(["promote", "1", "--name", "scanml-shared"]) == 0
        assert client.get_model_version_by_alias("scanml-shared", "champion").version == "1"


def _start_training(url: str, data: Path, workdir: Path, password: str) -> subprocess.Popen:
    overrides = [
        f"tracking.tracking_uri={url}",
        "tracking.experiment=shared",
        "tracking.registered_model=scanml-shared",
        "tracking.run_name=through-restart",
        # a refused connection fails at once; a loaded server gets two minutes a call
        "tracking.max_retries=1",
        "tracking.timeout_s=120",
        "tracking.retry_after_s=1",
        # the smoke preset, lighter still: what is tested is the server, not the training
        "train.hard_negative_every=0",
        "validation.overlays=0",
    ]
    command = [sys.executable, "-m", "scanml", "train", "--config", str(CONFIGS / "smoke.yaml")]
    command += ["--data", str(data)]
    for override in overrides:
        command += ["--set", override]
    environment = {
        **os.environ,
        "MLFLOW_TRACKING_USERNAME": "trainer",
        "MLFLOW_TRACKING_PASSWORD": password,
    }
    return subprocess.Popen(
        command,
        cwd=workdir,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=(workdir / "train.err").open("w"),
        text=True,
    )


def _wait_for_run(client: MlflowClient, training: subprocess.Popen) -> None:
    def run_exists() -> bool:
        experiment = client.get_experiment_by_name("shared")
        return bool(experiment and client.search_runs([experiment.experiment_id]))

    _wait_for(run_exists, training)


def _wait_for(condition, training: subprocess.Popen, timeout_s: float = 600.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        assert training.poll() is None, "training ended before the server was restarted"
        time.sleep(0.5)
    raise AssertionError("timed out")
