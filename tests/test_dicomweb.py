"""Scans in and reports out through a real Orthanc with its DICOMweb plugin."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pydicom
import pytest

from orthanc_server import (
    OrthancServer,
    missing_reason,
    referenced_scan,
    scans_with_a_dual_energy_one,
)
from scanml.cli import main
from scanml.dicomweb import RemoteInstance, pair_energies, parse_dicomweb_url, score_dicomweb
from scanml.tdr import TDR_SOP_CLASS_UID


@pytest.fixture
def orthanc(tmp_path: Path):
    reason = missing_reason()
    if reason:
        pytest.skip(reason)
    with OrthancServer(tmp_path / "orthanc") as server:
        yield server


def test_dicomweb_urls_parse_into_root_and_query() -> None:
    location = parse_dicomweb_url("dicomweb://user:p%40ss@store.port:8042/dicom-web/?Modality=DX")
    assert location.url == "http://store.port:8042/dicom-web"
    assert location.filters == {"Modality": "DX"}
    assert (location.username, location.password) == ("user", "p@ss")
    assert "p@ss" not in repr(location) and "p@ss" not in str(location)
    assert parse_dicomweb_url("dicomwebs://store/dw").url == "https://store/dw"


def test_a_low_energy_instance_goes_with_the_one_other_instance_of_its_series() -> None:
    def instance(series: str, uid: str, energy: str | None) -> RemoteInstance:
        return RemoteInstance("1.2", series, uid, "1.2.840.10008.5.1.4.1.1.501.2.1", energy)

    listed = pair_energies(
        [
            instance("1.2.3", "1.2.3.1", "HIGH ENERGY"),
            instance("1.2.3", "1.2.3.2", "LOW ENERGY"),
            instance("1.2.4", "1.2.4.1", None),
            instance("1.2.5", "1.2.5.2", "LOW ENERGY"),  # its high-energy image is not there
            instance("1.2.6", "1.2.6.1", None),  # two candidates: no guess
            instance("1.2.6", "1.2.6.2", None),
            instance("1.2.6", "1.2.6.3", "LOW ENERGY"),
        ]
    )
    assert [(i.sop_instance_uid, i.partner_of) for i in listed if i.partner_of] == [
        ("1.2.3.2", "1.2.3.1")
    ]
    assert listed[1].spool_name == "1.2.3.1.low.dcm" and listed[1].scan_uid == "1.2.3.1"
    assert listed[3].spool_name == "1.2.5.2.dcm"


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("dicomweb://store:port/dicom-web", "port is not a number"),
        ("dicomweb:///dicom-web", "no host"),
        ("dicomweb://store/dicom-web?Modality", "needs a key and a value"),
    ],
)
def test_a_bad_store_url_is_one_line_and_exit_2(
    url: str, reason: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["score", "--model", str(tmp_path), "--input", url, "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and url in err and reason in err
    assert "Traceback" not in err


@pytest.mark.slow
def test_scans_in_reports_back_and_a_rerun_scores_nothing_twice(
    orthanc: OrthancServer, trained_model, tmp_path: Path
) -> None:
    # Four scans, one of them dual energy: its low-energy instance is in the store too,
    # and is fetched with it, never scored as a scan of its own.
    scans, partners = scans_with_a_dual_energy_one(trained_model.data_dir / "scans", 4)
    uploaded = orthanc.upload([*scans, _broken_scan(scans[0], tmp_path / "broken.dcm")])
    orthanc.upload(partners)
    out = tmp_path / "scores.parquet"
    command = [
        sys.executable,
        "-m",
        "scanml",
        "score",
        "--model",
        str(trained_model.bundle_dir),
        "--input",
        f"{orthanc.url}?Modality=DX",
        "--tdr-to",
        orthanc.url,
        "--out",
        str(out),
        "--workers",
        "0",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, env=_env())
    assert done.returncode == 0, done.stderr

    table = pd.read_parquet(out)
    assert sorted(table["scan_id"]) == sorted(uploaded)
    broken = table.set_index("scan_id").loc[uploaded[-1]]
    assert broken["error"] and pd.isna(broken["score"])
    scored = table[table["error"].isna()]
    assert len(scored) == 4

    # Each scored scan has exactly one report in the store, about it, saying what the table says.
    reports = orthanc.reports()
    assert len(reports) == 4
    about = {referenced_scan(r, tmp_path): r for r in reports}
    assert set(about) == set(scored["scan_id"])
    for row in scored.itertuples():
        report = about[row.scan_id]
        assert report.SOPClassUID == TDR_SOP_CLASS_UID
        assert report.AlarmDecision == ("ALARM" if row.flagged else "CLEAR")
        assert (
            report.StudyInstanceUID
            == pydicom.dcmread(
                next(s for s in scans if pydicom.dcmread(s).SOPInstanceUID == row.scan_id),
                stop_before_pixels=True,
            ).StudyInstanceUID
        )
    assert not list((tmp_path / "scores.parquet.spool").glob("*.dcm")), "spooled scans are removed"

    # Our reports in the store are not scans; a rerun finds nothing new and stores nothing.
    before = out.read_bytes()
    again = score_dicomweb(
        str(trained_model.bundle_dir),
        orthanc.url,
        out,
        tdr_to=orthanc.url,
        workers=0,
        progress=False,
    )
    assert (again.fetched, again.scoring.scanned, again.reports_stored) == (0, 0, 0)
    assert out.read_bytes() == before
    assert len(orthanc.instances(TDR_SOP_CLASS_UID)) == 4


def test_a_store_that_is_down_is_one_line(
    trained_model, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from orthanc_server import free_port

    url = f"dicomweb://127.0.0.1:{free_port()}/dicom-web"
    code = main(
        [
            "score",
            "--model",
            str(trained_model.bundle_dir),
            "--input",
            url,
            "--out",
            str(tmp_path / "scores.parquet"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert err.startswith("scanml score: error: cannot reach http://127.0.0.1:")
    assert "Traceback" not in err


def _broken_scan(template: Path, path: Path) -> Path:
    """A DX scan whose pixel data is cut short: the store takes it, scanml cannot read it."""
    dataset = pydicom.dcmread(template)
    dataset.PixelData = dataset.PixelData[:1000]
    dataset.SOPInstanceUID = pydicom.uid.generate_uid()
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    dataset.save_as(path, enforce_file_format=True)
    return path


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).resolve().parents[1] / "src"), env.get("PYTHONPATH", "")]
    )
    return env


def test_a_store_that_goes_away_mid_answer_is_unavailable_not_unfetchable(
    tmp_path: Path,
) -> None:
    """A body cut short is the store going away (try again), not a bad instance (skip it)."""
    import http.server
    import threading

    from orthanc_server import free_port
    from scanml.dicomweb import DicomwebStore, StoreUnavailableError

    class CutShort(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", 'multipart/related; type="application/dicom"')
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"--x\r\nContent-Type: application/dicom\r\n\r\n" + b"\0" * 4000)
            self.wfile.flush()
            self.close_connection = True

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), CutShort)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        store = DicomwebStore(f"dicomweb://127.0.0.1:{server.server_port}/dicom-web")
        instance = RemoteInstance("1.2", "1.2.3", "1.2.3.4", "1.2.840.10008.5.1.4.1.1.1.1", None)
        with pytest.raises(StoreUnavailableError, match=r"cannot reach http://127\.0\.0\.1:"):
            store.fetch(instance, tmp_path)
    finally:
        server.shutdown()
    assert not list(tmp_path.iterdir()), "nothing half-written is left in the spool"
