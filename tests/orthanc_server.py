"""A real Orthanc with its DICOMweb plugin, started for a test in a folder of its own.

Orthanc 1.10 has no option to choose the address it listens on; with
``RemoteAccessAllowed`` false it refuses every client but 127.0.0.1, and
its DICOM (C-STORE) port is disabled: the tests talk DICOMweb only. The
benchmark (benchmarks/bench_watch.py) uses the same helper.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

import pydicom
import requests

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
_PLUGIN_FOLDERS = (
    "/usr/share/orthanc/plugins",
    "/usr/lib/orthanc/plugins",
    "/usr/local/share/orthanc/plugins",
)
DICOMWEB_PLUGIN = next(
    (
        str(Path(folder) / "libOrthancDicomWeb.so")
        for folder in _PLUGIN_FOLDERS
        if (Path(folder) / "libOrthancDicomWeb.so").exists()
    ),
    None,
)
TDR_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.501.3"


def missing_reason() -> str | None:
    """Why Orthanc cannot be started here, or None when it can."""
    if not os.access(ORTHANC, os.X_OK):
        return "Orthanc is not installed (Debian: apt-get install -y orthanc orthanc-dicomweb)"
    if DICOMWEB_PLUGIN is None:
        return "the Orthanc DICOMweb plugin is not installed (apt-get install -y orthanc-dicomweb)"
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class OrthancServer:
    """``start()`` / ``stop()`` a private Orthanc; storage survives a stop, like a real restart."""

    def __init__(self, folder: Path, port: int | None = None) -> None:
        self.folder = folder
        self.port = port or free_port()
        self.process: subprocess.Popen | None = None
        self.config = folder / "orthanc.json"
        self.log = folder / "orthanc.log"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The store as scanml names it."""
        return f"dicomweb://127.0.0.1:{self.port}/dicom-web"

    def start(self, timeout_s: float = 60.0) -> OrthancServer:
        (self.folder / "storage").mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            json.dumps(
                {
                    "Name": "scanml-test",
                    "StorageDirectory": str(self.folder / "storage"),
                    "IndexDirectory": str(self.folder / "storage"),
                    "HttpPort": self.port,
                    "DicomServerEnabled": False,
                    "RemoteAccessAllowed": False,
                    "AuthenticationEnabled": False,
                    "HttpCompressionEnabled": False,
                    "Plugins": [DICOMWEB_PLUGIN],
                    "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
                },
                indent=1,
            )
        )
        with self.log.open("a") as log:
            self.process = subprocess.Popen(
                [ORTHANC, str(self.config)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.process.returncode}:\n{self.tail()}")
            try:
                if requests.get(f"{self.http}/dicom-web/studies", timeout=2).ok:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer within {timeout_s:.0f} s:\n{self.tail()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def tail(self, lines: int = 20) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def upload(self, paths: Iterable[Path]) -> list[str]:
        """STOW-RS the files; their SOP Instance UIDs."""
        from dicomweb_client import DICOMwebClient

        client = DICOMwebClient(f"{self.http}/dicom-web")
        datasets = [pydicom.dcmread(path) for path in paths]
        client.store_instances(datasets)
        return [str(dataset.SOPInstanceUID) for dataset in datasets]

    def instances(self, sop_class_uid: str | None = None) -> list[dict]:
        from dicomweb_client import DICOMwebClient

        client = DICOMwebClient(f"{self.http}/dicom-web")
        filters = {"SOPClassUID": sop_class_uid} if sop_class_uid else None
        return client.search_for_instances(search_filters=filters, get_remaining=True)

    def reports(self) -> list[pydicom.Dataset]:
        """Every Threat Detection Report in the store, fetched."""
        from dicomweb_client import DICOMwebClient

        client = DICOMwebClient(f"{self.http}/dicom-web")
        return [
            client.retrieve_instance(
                item["0020000D"]["Value"][0],
                item["0020000E"]["Value"][0],
                item["00080018"]["Value"][0],
            )
            for item in self.instances(TDR_SOP_CLASS_UID)
        ]

    def __enter__(self) -> OrthancServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def referenced_scan(report: pydicom.Dataset, folder: Path) -> str:
    """The SOP Instance UID of the scan a fetched report is about, read by scanml.tdr.read_tdr."""
    from scanml.tdr import read_tdr

    path = folder / f"{report.SOPInstanceUID}.dcm"
    report.save_as(path, enforce_file_format=True)
    return read_tdr(path).referenced_sop_instance_uid


def scans_with_a_dual_energy_one(folder: Path, count: int) -> tuple[list[Path], list[Path]]:
    """``count`` scans of ``folder`` (their x.dcm), the last dual energy; and its x.low.dcm."""
    from scanml.io import is_energy_partner

    scans = sorted(p for p in folder.glob("*.dcm") if not is_energy_partner(p))
    partners = [p.with_name(f"{p.stem}.low.dcm") for p in scans]
    dual = next(s for s, p in zip(scans, partners, strict=True) if p.is_file())
    others = [s for s in scans if s != dual]
    return [*others[: count - 1], dual], [dual.with_name(f"{dual.stem}.low.dcm")]
