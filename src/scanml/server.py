"""The shared tracking server: ``mlflow server`` on PostgreSQL behind MLflow's basic authentication.

Several data scientists share one registry: runs, models and the users'
permissions live in one PostgreSQL database, and every request needs a user
name and password (an anonymous one gets 401). ``scanml server`` (and
``make server``) calls :func:`serve`; tests and notebooks call
:func:`start_server`, which returns the running process.

Credentials never sit in the repository: the admin user is created, on the
first start against an empty database, from ``MLFLOW_AUTH_ADMIN_USERNAME``
(default ``admin``) and ``MLFLOW_AUTH_ADMIN_PASSWORD``; clients send theirs
through ``MLFLOW_TRACKING_USERNAME`` and ``MLFLOW_TRACKING_PASSWORD``.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "PERMISSIONS",
    "ServerConfigError",
    "ServerSettings",
    "normalise_database_uri",
    "serve",
    "server_command",
    "server_environment",
    "start_server",
    "wait_until_healthy",
    "write_auth_config",
]

#: MLflow's permission levels, weakest first; ``default_permission`` is what a
#: user holds on what others created until an admin grants more.
PERMISSIONS = ("NO_PERMISSIONS", "READ", "USE", "EDIT", "MANAGE")
_DATABASE_SCHEMES = ("postgresql", "mysql", "mssql", "sqlite")
# pg8000 is pure Python and BSD-licensed; SQLAlchemy's default PostgreSQL
# driver (psycopg2) is LGPL and needs a compiler or a binary wheel.
_POSTGRES_DRIVER = "postgresql+pg8000"


class ServerConfigError(ValueError):
    """A setting the server cannot start with; the message names it and says why."""


@dataclass(frozen=True)
class ServerSettings:
    """Where the server keeps its state and where it listens."""

    backend_store_uri: str
    artifacts_destination: str
    host: str = "127.0.0.1"
    port: int = 5000
    workers: int = 1
    default_permission: str = "READ"
    #: Seconds a verified password stays cached in a worker. Checking one costs a
    #: deliberately slow hash (PBKDF2), paid on every request without the cache.
    auth_cache_ttl_s: int = 60

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def serve(settings: ServerSettings, *, config_dir: str | Path) -> int:
    """Run the server in the foreground until it stops; returns its exit status."""
    command, environment = _prepare(settings, config_dir)
    return subprocess.call(command, env=environment)


def start_server(
    settings: ServerSettings,
    *,
    config_dir: str | Path,
    log_path: str | Path | None = None,
    timeout_s: float = 600.0,
) -> subprocess.Popen:
    """Start the server in its own process group and return once it answers ``/health``."""
    command, environment = _prepare(settings, config_dir)
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    try:
        process = subprocess.Popen(
            command, env=environment, stdout=log, stderr=log, start_new_session=True
        )
    finally:
        if log_path:
            log.close()
    wait_until_healthy(settings.url, process, timeout_s=timeout_s, log_path=log_path)
    return process


def write_auth_config(
    path: str | Path,
    *,
    database_uri: str,
    default_permission: str = "READ",
    auth_cache_ttl_s: int = 60,
) -> Path:
    """The basic-auth app's configuration file: where users live, and no password."""
    if default_permission not in PERMISSIONS:
        raise ServerConfigError(
            f"default permission {default_permission!r}: must be one of {', '.join(PERMISSIONS)}"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "\n".join(
            [
                "[mlflow]",
                f"default_permission = {default_permission}",
                f"database_uri = {database_uri}",
                # the admin's name and password come from MLFLOW_AUTH_ADMIN_USERNAME/PASSWORD
                "admin_username = admin",
                "authorization_function = mlflow.server.auth:authenticate_request_basic_auth",
                f"auth_cache_ttl_seconds = {auth_cache_ttl_s}",
                "",
            ]
        )
    )
    path.chmod(0o600)  # the database URI may carry the database password
    return path


def server_command(settings: ServerSettings) -> list[str]:
    """``mlflow server`` with the basic-auth app, artifacts proxied through the server."""
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--app-name",
        "basic-auth",
        "--backend-store-uri",
        normalise_database_uri(settings.backend_store_uri),
        "--artifacts-destination",
        settings.artifacts_destination,
        "--host",
        settings.host,
        "--port",
        str(settings.port),
        "--workers",
        str(settings.workers),
    ]


def server_environment(
    auth_config: str | Path, environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The server's environment: the auth configuration, and refusal without an admin password."""
    environment = dict(os.environ if environ is None else environ)
    if not environment.get("MLFLOW_AUTH_ADMIN_PASSWORD"):
        raise ServerConfigError(
            "MLFLOW_AUTH_ADMIN_PASSWORD is not set: export the password the admin user gets on "
            "the first start (at least 12 characters; ignored once the admin exists)"
        )
    environment.setdefault("MLFLOW_AUTH_ADMIN_USERNAME", "admin")
    environment["MLFLOW_AUTH_CONFIG_PATH"] = str(Path(auth_config).resolve())
    # Signs the UI's CSRF tokens. One random key per start is shared by its workers;
    # export a fixed one when several servers sit behind one address.
    environment.setdefault("MLFLOW_FLASK_SERVER_SECRET_KEY", secrets.token_hex(32))
    # MLflow's job runner (GenAI evaluation jobs, a pool of consumer processes) serves
    # nothing scanml logs; an operator who wants it exports the variable as true.
    environment.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    return environment


def normalise_database_uri(uri: str) -> str:
    """A SQLAlchemy database URI, with PostgreSQL going through the pg8000 driver."""
    scheme = uri.split("://", 1)[0] if "://" in uri else ""
    if scheme.split("+", 1)[0] not in _DATABASE_SCHEMES:
        raise ServerConfigError(
            f"backend store {uri!r}: not a database URI; give one such as "
            "postgresql://USER:PASSWORD@HOST:5432/DATABASE"
        )
    if scheme == "postgresql":
        return _POSTGRES_DRIVER + uri[len(scheme) :]
    return uri


def wait_until_healthy(
    url: str,
    process: subprocess.Popen,
    *,
    timeout_s: float = 300.0,
    log_path: str | Path | None = None,
) -> None:
    """Poll ``/health`` (which needs no login) until it answers 200; stop the process if it never does."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {process.returncode}{_tail(log_path)}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    _stop(process)
    raise RuntimeError(
        f"mlflow server at {url} did not answer in {timeout_s:.0f} s{_tail(log_path)}"
    )


def _prepare(settings: ServerSettings, config_dir: str | Path) -> tuple[list[str], dict[str, str]]:
    command = server_command(settings)  # checks the URI before anything is written
    auth_config = write_auth_config(
        Path(config_dir) / "basic_auth.ini",
        database_uri=normalise_database_uri(settings.backend_store_uri),
        default_permission=settings.default_permission,
        auth_cache_ttl_s=settings.auth_cache_ttl_s,
    )
    return command, server_environment(auth_config)


def _stop(process: subprocess.Popen) -> None:
    """The server and its workers: :func:`start_server` gives them a process group of their own."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    process.wait(timeout=30)


def _tail(log_path: str | Path | None) -> str:
    if not log_path or not Path(log_path).exists():
        return ""
    lines = Path(log_path).read_text(errors="replace").strip().splitlines()
    return ": " + " | ".join(lines[-3:]) if lines else ""
