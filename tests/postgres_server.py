"""A real PostgreSQL (the Debian package), started for a test in a folder of its own.

PostgreSQL refuses to run as root, and CI runs as root: there the cluster
belongs to the ``postgres`` user the package creates, and its commands run
through ``su``. It listens on 127.0.0.1 only, on a free port, and trusts
local connections (a throwaway cluster in a temporary folder).
"""

from __future__ import annotations

import glob
import os
import shlex
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path


def _bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


BIN = _bin_dir()


def missing_reason() -> str | None:
    if BIN is None:
        return "PostgreSQL is not installed (Debian package postgresql)"
    if os.geteuid() == 0 and shutil.which("su") is None:
        return "running as root without su: cannot run PostgreSQL as the postgres user"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Postgres:
    root: Path
    port: int

    def uri(self, database: str = "mlflow") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def run(self, *command: str) -> None:
        assert BIN is not None
        line = shlex.join([str(BIN / command[0]), *command[1:]])
        if os.geteuid() == 0:
            subprocess.run(["su", "postgres", "-s", "/bin/sh", "-c", line], check=True, timeout=120)
        else:
            subprocess.run(line, shell=True, check=True, timeout=120)

    def start(self) -> None:
        self.run(
            "pg_ctl", "-D", str(self.root / "data"), "-l", str(self.root / "postgres.log"),
            "-o", f"-h 127.0.0.1 -p {self.port} -k {self.root}", "-w", "start",
        )  # fmt: skip

    def stop(self) -> None:
        self.run("pg_ctl", "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop")


def start_postgres(root: Path, databases: tuple[str, ...] = ("mlflow",)) -> Postgres:
    """initdb, start on a free port, create ``databases``."""
    root.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    root.chmod(0o700)
    server = Postgres(root, free_port())
    server.run("initdb", "-D", str(root / "data"), "-U", "postgres", "--auth=trust", "-E", "UTF8")
    server.start()
    for database in databases:
        server.run(
            "createdb", "-h", "127.0.0.1", "-p", str(server.port), "-U", "postgres", database
        )
    return server
