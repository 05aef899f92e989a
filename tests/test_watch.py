"""``scanml watch`` as a real process: killed, restarted, its store stopped, it scores each scan once."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from orthanc_server import (
    OrthancServer,
    free_port,
    missing_reason,
    referenced_scan,
    scans_with_a_dual_energy_one,
)
from scanml.cli import main
from scanml.dicomweb import committed_rows
from scanml.io import Scan, is_energy_partner, write_scan
from scanml.models import ModelBundle, create_model
from scanml.preprocess import Preprocessing
from scanml.tdr import TDR_SOP_CLASS_UID, read_tdr
from scanml.watch import watch

# Generous: on a saturated 2-core machine (nice 19 under training) one scan took 25-60 s.
_TIMEOUT_S = 900.0


def test_watch_refuses_a_missing_folder_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "watch",
            "--model",
            str(tmp_path),
            "--input",
            str(tmp_path / "nope"),
            "--out",
            str(tmp_path / "scores.parquet"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert (
        err
        == f"scanml watch: error: --input {tmp_path / 'nope'}: not a folder and not a dicomweb:// URL"
    )


def _untrained_model(folder: Path) -> Path:
    """An untrained resnet18 bundle at 16 mm per pixel: real weights files, real loading."""
    return ModelBundle(
        network=create_model("resnet18", 1, None),
        architecture="resnet18",
        preprocessing=Preprocessing(channels=("high",), spacing_mm=16.0),
        class_names=["drugs", "weapon", "cigarettes", "other"],
        threshold=0.5,
        region_threshold=0.5,
    ).save(folder)


def test_a_dual_energy_scans_partner_file_gets_no_row_of_its_own(tmp_path: Path) -> None:
    """x.low.dcm is read with x.dcm: the scan gets one row, as `scanml score` gives it."""
    model = _untrained_model(tmp_path / "model")
    inbox, out = tmp_path / "inbox", tmp_path / "scores.parquet"
    inbox.mkdir()
    attenuation = np.random.default_rng(0).gamma(2.0, 1.0, size=(2, 200, 400)).astype(np.float32)
    write_scan(Scan(attenuation, (4.0, 4.0), ["high", "low"], {"scan_id": "d"}), inbox / "d.dcm")
    write_scan(Scan(attenuation[:1], (4.0, 4.0), ["high"], {"scan_id": "s"}), inbox / "s.dcm")
    assert is_energy_partner(inbox / "d.low.dcm")
    stop = threading.Event()
    service = threading.Thread(
        target=watch,
        args=(str(model), inbox, out),
        kwargs={"poll_s": 0.05, "settle_s": 0, "status_port": None, "device": "cpu", "stop": stop},
    )
    service.start()
    try:  # d.dcm, d.low.dcm, s.dcm in one listing: s.dcm's row comes after any partner's
        deadline = time.monotonic() + _TIMEOUT_S
        while str(inbox / "s.dcm") not in {row.path for row in committed_rows(out)}:
            assert service.is_alive() and time.monotonic() < deadline, "watch scored nothing"
            time.sleep(0.05)
    finally:
        stop.set()
        service.join()
    table = pd.read_parquet(out)
    assert sorted(table["path"]) == [str(inbox / "d.dcm"), str(inbox / "s.dcm")]
    assert table["error"].isna().all()


def test_a_low_energy_file_that_arrives_first_waits_for_its_high_energy_file(
    tmp_path: Path,
) -> None:
    """A scanner may write x.low.dcm before x.dcm: it is not a scan of its own, unless x.dcm
    never comes (then it is scored alone after --partner-wait)."""
    model = _untrained_model(tmp_path / "model")
    staging = tmp_path / "staging"
    staging.mkdir()
    attenuation = np.random.default_rng(0).gamma(2.0, 1.0, size=(2, 200, 400)).astype(np.float32)
    for name in ("d", "e"):
        scan = Scan(attenuation, (4.0, 4.0), ["high", "low"], {"scan_id": name})
        write_scan(scan, staging / f"{name}.dcm")

    def serve(inbox: Path, out: Path, partner_wait_s: float, steps: Callable[[], None]) -> None:
        stop = threading.Event()
        kwargs = {"poll_s": 0.05, "settle_s": 0, "status_port": None, "device": "cpu"}
        service = threading.Thread(
            target=watch,
            args=(str(model), inbox, out),
            kwargs={**kwargs, "partner_wait_s": partner_wait_s, "stop": stop},
        )
        service.start()
        try:
            steps()
        finally:
            stop.set()
            service.join()

    def until(out: Path, path: Path) -> None:
        deadline = time.monotonic() + _TIMEOUT_S
        while str(path) not in {row.path for row in committed_rows(out)}:
            assert time.monotonic() < deadline, f"watch did not score {path.name}"
            time.sleep(0.05)

    inbox, out = tmp_path / "inbox", tmp_path / "scores.parquet"
    inbox.mkdir()
    (staging / "d.low.dcm").rename(inbox / "d.low.dcm")  # the low-energy file first
    write_scan(Scan(attenuation[:1], (4.0, 4.0), ["high"], {"scan_id": "s"}), inbox / "s.dcm")

    def high_energy_file_later() -> None:
        until(out, inbox / "s.dcm")  # listed after d.low.dcm, which waits
        (staging / "d.dcm").rename(inbox / "d.dcm")
        until(out, inbox / "d.dcm")

    serve(inbox, out, _TIMEOUT_S, high_energy_file_later)
    table = pd.read_parquet(out)
    assert sorted(table["path"]) == [str(inbox / "d.dcm"), str(inbox / "s.dcm")]
    assert table["error"].isna().all()

    alone, out = tmp_path / "alone", tmp_path / "alone.parquet"
    alone.mkdir()
    (staging / "e.low.dcm").rename(alone / "e.low.dcm")  # its x.dcm never comes
    serve(alone, out, 0.5, lambda: until(out, alone / "e.low.dcm"))
    assert list(pd.read_parquet(out)["path"]) == [str(alone / "e.low.dcm")]


@pytest.mark.slow
def test_sigkilled_three_times_while_scans_arrive_every_scan_is_scored_once(
    trained_model, tmp_path: Path
) -> None:
    every = sorted((trained_model.data_dir / "scans").glob("*.dcm"))
    scans = [path for path in every if not is_energy_partner(path)][:7]
    # A dual-energy scan's x.low.dcm arrives right after x.dcm; read with it, it gets no row.
    names = {path.name for path in scans}
    files = [p for p in every if p.name in names or p.name.replace(".low.", ".") in names]
    inbox, out, reports = tmp_path / "inbox", tmp_path / "scores.parquet", tmp_path / "tdr"
    inbox.mkdir()
    # Scans keep arriving (renamed into place, as a transfer job does) while the service dies.
    garbage = _garbage(tmp_path / "garbage.dcm")
    # The last scan and the bad file arrive only after the last restart, so that
    # the last run has work of its own to report on its status endpoint (on a
    # fast machine the killed runs could otherwise have scored everything).
    last = [p for p in files if p.name.replace(".low.", ".") == scans[-1].name]
    early = [p for p in files if p not in last]
    feeder = _Feeder(inbox, early, every_s=0.4)
    feeder.start()
    port = free_port()
    command = [*_watch_command(trained_model, inbox, out, port), "--tdr", str(reports)]
    service = None
    try:
        for pause in (0.0, 0.25, 0.5):
            service = _start(command, tmp_path / "watch.log")
            rows_before = len(committed_rows(out))
            _wait_for(lambda: len(committed_rows(out)) > rows_before, "a row", service)  # noqa: B023
            time.sleep(pause)
            service.kill()  # SIGKILL: no handler runs, nothing is flushed
            service.wait()
        service = _start(command, tmp_path / "watch.log")
        feeder.join()
        late = _Feeder(inbox, [*last, garbage], every_s=0.4)
        late.start()
        late.join()
        assert feeder.delivered + late.delivered == [*early, *last, garbage]
        expected = {str(inbox / path.name) for path in [*scans, garbage]}
        _wait_for(lambda: {r.path for r in committed_rows(out)} >= expected, "every scan", service)
        _wait_for(lambda: _status(port)["queue"] == 0, "the last run's status", service)
        status = _status(port)
        service.send_signal(signal.SIGTERM)
        assert service.wait(timeout=_TIMEOUT_S) == 0, _tail(tmp_path / "watch.log")
    finally:
        feeder.stop()
        _kill(service)

    table = pd.read_parquet(out)
    assert len(table) == len(scans) + 1 == table["path"].nunique()
    assert set(table["path"]) == expected
    assert table["error"].notna().sum() == 1
    assert "garbage.dcm" in table.dropna(subset=["error"])["path"].iloc[0]
    # One report per scored scan, each about its own scan, and no half-written leftovers.
    assert sorted(p.name for p in reports.iterdir()) == sorted(f"{s.stem}.dcm" for s in scans)
    for scan in scans:
        uid = pydicom.dcmread(scan, stop_before_pixels=True).SOPInstanceUID
        assert read_tdr(reports / f"{scan.stem}.dcm").referenced_sop_instance_uid == uid
    assert not list(out.parent.glob(f"{out.name}.parts/*.parquet"))
    # The status endpoint of the last run: its own counts, the queue drained, the bad file named.
    assert status["queue"] == 0 and status["latency_count"] >= 1
    assert status["scored"] + status["failed"] >= 1
    assert (
        status["latency_p50_s"] is not None and status["latency_p95_s"] >= status["latency_p50_s"]
    )
    log = (tmp_path / "watch.log").read_text()
    assert "SIGTERM, finishing the scan in hand" in log
    assert log.rstrip().splitlines()[-1].startswith("watch: scored ")


@pytest.mark.slow
def test_orthanc_stopped_and_restarted_under_watch_loses_nothing(
    trained_model, tmp_path: Path
) -> None:
    reason = missing_reason()
    if reason:
        pytest.skip(reason)
    # The last scan is dual energy, its x.low.dcm in the store beside it: fetched with it.
    scans, partners = scans_with_a_dual_energy_one(trained_model.data_dir / "scans", 4)
    orthanc = OrthancServer(tmp_path / "orthanc").start()
    out, port = tmp_path / "scores.parquet", free_port()
    command = [*_watch_command(trained_model, orthanc.url, out, port), "--tdr-to", orthanc.url]
    service = _start(command, tmp_path / "watch.log")
    try:
        orthanc.upload(scans[:2])
        _wait_for(lambda: len(orthanc.instances(TDR_SOP_CLASS_UID)) == 2, "2 reports", service)

        # A scan arrives and the store goes away at once: in hand, or not yet seen.
        orthanc.upload(scans[2:3])
        orthanc.stop()
        _wait_for(lambda: not _status(port)["store_ok"], "the outage reported", service)
        assert "cannot reach http://127.0.0.1:" in _status(port)["last_error"]
        assert service.poll() is None, "a store that goes away is not fatal"

        orthanc.start()
        orthanc.upload([*scans[3:], *partners])
        _wait_for(lambda: len(orthanc.instances(TDR_SOP_CLASS_UID)) == 4, "4 reports", service)
        _wait_for(lambda: _status(port)["store_ok"], "the store back", service)
        service.send_signal(signal.SIGTERM)
        assert service.wait(timeout=_TIMEOUT_S) == 0, _tail(tmp_path / "watch.log")
    finally:
        _kill(service)
        orthanc.stop()

    orthanc.start()
    try:
        reports = orthanc.reports()
    finally:
        orthanc.stop()
    uids = {str(pydicom.dcmread(s, stop_before_pixels=True).SOPInstanceUID) for s in scans}
    about = [referenced_scan(r, tmp_path) for r in reports]
    assert sorted(about) == sorted(uids), "exactly one report per scan in the store"
    table = pd.read_parquet(out)
    assert set(table["scan_id"]) == uids and len(table) == 4
    assert table["error"].isna().all()


# -- helpers ------------------------------------------------------------------------------


class _Feeder(threading.Thread):
    """Copies files into a folder one after the other, each written beside and renamed."""

    def __init__(self, inbox: Path, files: list[Path], every_s: float) -> None:
        super().__init__(daemon=True)
        self.inbox, self.files, self.every_s = inbox, files, every_s
        self.delivered: list[Path] = []
        self._halt = threading.Event()

    def run(self) -> None:
        for source in self.files:
            if self._halt.wait(self.every_s):
                return
            partial = self.inbox / f".{source.name}.partial"
            shutil.copyfile(source, partial)
            os.replace(partial, self.inbox / source.name)
            self.delivered.append(source)

    def stop(self) -> None:
        self._halt.set()


def _watch_command(trained_model, source: Path | str, out: Path, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "scanml",
        "watch",
        "--model",
        str(trained_model.bundle_dir),
        "--input",
        str(source),
        "--out",
        str(out),
        "--poll",
        "0.1",
        "--settle",
        "0",
        "--status-port",
        str(port),
        "--device",
        "cpu",
    ]


def _start(command: list[str], log: Path) -> subprocess.Popen:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).resolve().parents[1] / "src"), env.get("PYTHONPATH", "")]
    )
    with log.open("a") as stream:
        return subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT, env=env)


def _wait_for(condition: Callable[[], bool], what: str, service: subprocess.Popen) -> None:
    deadline = time.monotonic() + _TIMEOUT_S
    while time.monotonic() < deadline:
        if service.poll() is not None:
            raise AssertionError(f"watch exited ({service.returncode}) waiting for {what}")
        try:
            if condition():
                return
        except (OSError, ValueError):  # the endpoint not up yet, the store down
            pass
        time.sleep(0.1)
    raise AssertionError(f"no {what} within {_TIMEOUT_S:.0f} s")


def _status(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as answer:
        return json.load(answer)


def _garbage(path: Path) -> Path:
    path.write_bytes(b"not a scan at all" * 10)
    return path


def _kill(service: subprocess.Popen | None) -> None:
    if service is not None and service.poll() is None:
        service.kill()
        service.wait()


def _tail(log: Path) -> str:
    return "\n".join(log.read_text().splitlines()[-20:])
