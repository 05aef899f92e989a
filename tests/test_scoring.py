"""The scoring job on real files: an untrained model, small DICOS scans, corrupt files among them."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pydicom
import pytest
from mlflow import MlflowClient

from hostile_files import rle_panic, spacing_edit
from scanml.cli import main
from scanml.decode_pool import guarded_map
from scanml.io import Scan, read_scan, write_scan
from scanml.models import ModelBundle, create_model
from scanml.predict import Predictor
from scanml.preprocess import Preprocessing
from scanml.score_rows import ScanTooLargeError, check_model_grid
from scanml.scores_table import ScoresTable, read_table
from scanml.scoring import (
    SCORE_COLUMNS,
    SCORES_SCHEMA,
    ScoringError,
    resolve_inputs,
    score,
    score_paths,
)
from scanml.tdr import read_tdr

GOOD = ["a-01", "a-02", "b-01", "b-02", "b-03"]
CORRUPT = ["empty", "text", "truncated"]
# Compared between score() and score_paths(): all but the timing and the files score() writes.
SAME_COLUMNS = [c for c in SCORE_COLUMNS if c not in ("seconds", "overlay", "tdr")]


def write_scans(folder: Path, names: list[str], shape: tuple[int, int] = (200, 400)) -> None:
    """Small DICOS DX scans with random cargo, plus nothing else."""
    rng = np.random.default_rng(len(names))
    for name in names:
        attenuation = rng.gamma(2.0, 1.0, size=(1, *shape)).astype(np.float32)
        write_scan(
            Scan(attenuation, (4.0, 4.0), ["high"], {"scan_id": name, "site": "antwerp"}),
            folder / f"{name}.dcm",
        )


def write_corrupt_files(folder: Path, intact: Path) -> None:
    (folder / "empty.dcm").write_bytes(b"")
    (folder / "text.dcm").write_text("not a scan, whatever the suffix says\n")
    (folder / "truncated.dcm").write_bytes(intact.read_bytes()[:2000])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained resnet18 bundle at 16 mm per pixel: real weights files, real loading."""
    bundle = ModelBundle(
        network=create_model("resnet18", 1, None),
        architecture="resnet18",
        preprocessing=Preprocessing(channels=("high",), spacing_mm=16.0),
        class_names=["drugs", "weapon", "cigarettes", "other"],
        threshold=0.5,
        region_threshold=0.5,
    )
    return bundle.save(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def scan_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("scans")
    (folder / "b").mkdir()
    write_scans(folder, GOOD[:2])
    write_scans(folder / "b", GOOD[2:])
    write_corrupt_files(folder, folder / "a-01.dcm")
    return folder


@pytest.fixture(scope="module")
def reference_scores(model_dir: Path, scan_dir: Path) -> pd.DataFrame:
    """score_paths over every file: the pyfunc's view, and the scores to pick thresholds from."""
    paths = [item.path for item in resolve_inputs(scan_dir)]
    return score_paths(
        Predictor(ModelBundle.load(model_dir)), paths, model_uri=str(model_dir), threshold=0.5
    )


def test_one_row_per_file_and_corrupt_files_become_error_rows(
    model_dir: Path, scan_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "scores.parquet"
    summary = score(
        str(model_dir),
        scan_dir,
        out,
        overlays=tmp_path / "overlays",
        tdr=tmp_path / "tdr",
        workers=1,
        threshold=0.0,
        progress=False,
    )
    assert (summary.scanned, summary.flagged, summary.failed, summary.skipped) == (5, 5, 3, 0)
    assert set(summary.timings) >= {"decode", "model", "write"}
    assert not out.with_name("scores.parquet.parts").exists()

    table = pq.read_table(out)
    assert table.schema.equals(SCORES_SCHEMA)
    rows = table.to_pandas()
    assert rows["path"].tolist() == sorted(str(p) for p in scan_dir.rglob("*.dcm"))  # input order
    assert rows["path"].is_unique

    failed = rows[rows["error"].notna()]
    assert sorted(failed["scan_id"]) == CORRUPT
    assert failed["error"].str.startswith("ScanReadError: ").all()
    assert failed["score"].isna().all() and failed["flagged"].isna().all()
    assert (failed["regions"].map(len) == 0).all()

    scored = rows[rows["error"].isna()]
    assert sorted(scored["scan_id"]) == GOOD
    assert scored["score"].between(0, 1).all() and scored["flagged"].all()
    assert (scored["threshold"] == 0.0).all() and (rows["model_uri"] == str(model_dir)).all()
    assert (scored["height"] == 200).all() and (scored["width"] == 400).all()
    assert (scored["site"] == "antwerp").all()
    for row in scored.itertuples():
        assert Path(row.overlay).read_bytes().startswith(b"\x89PNG")
        report = read_tdr(row.tdr)
        assert report.alarm_decision == "ALARM"
        assert report.referenced_sop_instance_uid == read_scan(row.path).meta["sop_instance_uid"]
        # A flagged scan without regions reports its heat map's peak: never ALARM with no object.
        assert len(report.objects) == max(len(row.regions), 1)


def test_overlays_for_flagged_scans_only_and_a_report_for_every_scored_scan(
    model_dir: Path, scan_dir: Path, reference_scores: pd.DataFrame, tmp_path: Path
) -> None:
    scores = reference_scores["score"].dropna().sort_values()
    threshold = float(scores.iloc[2])  # the two highest of five are strictly above
    score(
        str(model_dir),
        scan_dir,
        tmp_path / "scores.parquet",
        overlays=tmp_path / "overlays",
        tdr=tmp_path / "tdr",
        workers=0,
        threshold=threshold,
        progress=False,
    )
    rows = pd.read_parquet(tmp_path / "scores.parquet")
    flagged = rows[rows["flagged"].eq(True)]
    assert len(flagged) == 2
    assert sorted(p.name for p in (tmp_path / "overlays").iterdir()) == sorted(
        f"{scan_id}.png" for scan_id in flagged["scan_id"]
    )
    assert rows.loc[rows["flagged"].eq(False), "overlay"].isna().all()
    assert sorted(p.name for p in (tmp_path / "tdr").iterdir()) == sorted(f"{s}.dcm" for s in GOOD)
    decisions = {read_tdr(path).alarm_decision for path in rows["tdr"].dropna()}
    assert decisions == {"ALARM", "CLEAR"}


def test_score_paths_gives_the_rows_score_writes(
    model_dir: Path, scan_dir: Path, reference_scores: pd.DataFrame, tmp_path: Path
) -> None:
    score(str(model_dir), scan_dir, tmp_path / "scores.parquet", workers=1, progress=False)
    written = pd.read_parquet(tmp_path / "scores.parquet")
    assert list(reference_scores.columns) == list(SCORE_COLUMNS)
    pd.testing.assert_frame_equal(written[SAME_COLUMNS], reference_scores[SAME_COLUMNS])


def test_a_rerun_of_a_finished_job_leaves_the_table_untouched(
    model_dir: Path, scan_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "scores.parquet"
    score(str(model_dir), scan_dir, out, tdr=tmp_path / "tdr", workers=0, progress=False)
    before, stat = out.read_bytes(), out.stat()
    summary = score(str(model_dir), scan_dir, out, tdr=tmp_path / "tdr", workers=0, progress=False)
    assert (summary.scanned, summary.failed, summary.skipped) == (0, 0, 8)
    assert out.read_bytes() == before and out.stat().st_mtime_ns == stat.st_mtime_ns
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.parquet", "tdr"]


def test_new_files_are_added_to_an_existing_table_in_input_order(
    model_dir: Path, tmp_path: Path
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    write_scans(inbox, ["c-02"])
    out = tmp_path / "scores.parquet"
    score(str(model_dir), inbox, out, workers=0, progress=False)
    write_scans(inbox, ["c-01", "c-03"])
    summary = score(str(model_dir), inbox, out, workers=0, progress=False)
    assert (summary.scanned, summary.skipped) == (2, 1)
    assert pd.read_parquet(out)["scan_id"].tolist() == ["c-01", "c-02", "c-03"]


def test_an_empty_inbox_still_writes_an_empty_table(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "scores.parquet"
    summary = score(str(model_dir), str(tmp_path / "inbox-*" / "*.dcm"), out, progress=False)
    assert summary.scanned == summary.skipped == 0
    table = pq.read_table(out)
    assert table.num_rows == 0 and table.schema.equals(SCORES_SCHEMA)


def test_resolve_inputs_from_a_manifest_a_folder_and_a_glob(scan_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "npy").mkdir()
    np.save(tmp_path / "npy" / "raw.npy", np.ones((1, 64, 64), dtype=np.float32))
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(
        "scan_id,path,site,row_spacing_mm,col_spacing_mm\n"
        "raw-1,npy/raw.npy,santos,5.0,6.5\n"
        f"c,{scan_dir / 'b' / 'b-01.dcm'},,,\n"
    )
    first, second = resolve_inputs(manifest)
    assert (first.path, first.scan_id, first.site, first.spacing_mm) == (
        tmp_path / "npy" / "raw.npy",
        "raw-1",
        "santos",
        (5.0, 6.5),
    )
    assert (second.scan_id, second.site, second.spacing_mm) == ("c", None, None)

    from_folder = [item.path.name for item in resolve_inputs(scan_dir)]
    assert from_folder == [
        "a-01.dcm",
        "a-02.dcm",
        "b-01.dcm",
        "b-02.dcm",
        "b-03.dcm",
        "empty.dcm",
        "text.dcm",
        "truncated.dcm",
    ]
    from_glob = resolve_inputs(str(scan_dir / "**" / "b-0*.dcm"))
    assert [item.scan_id for item in from_glob] == ["b-01", "b-02", "b-03"]
    both = resolve_inputs([str(scan_dir / "b"), str(scan_dir / "b" / "b-01.dcm")])
    assert len(both) == 3  # each file once
    with pytest.raises(FileNotFoundError):
        resolve_inputs(tmp_path / "missing")


def test_a_manifest_supplies_the_spacing_a_raw_array_lacks(model_dir: Path, tmp_path: Path) -> None:
    np.save(tmp_path / "raw.npy", np.full((1, 120, 240), 2.0, dtype=np.float32))
    np.save(tmp_path / "no-spacing.npy", np.full((1, 120, 240), 2.0, dtype=np.float32))
    (tmp_path / "manifest.csv").write_text(
        "scan_id,path,site,row_spacing_mm,col_spacing_mm\nraw-1,raw.npy,santos,5.0,5.0\n"
        "raw-2,no-spacing.npy,santos,,\n"
    )
    score(
        str(model_dir),
        tmp_path / "manifest.csv",
        tmp_path / "scores.parquet",
        workers=0,
        progress=False,
    )
    rows = pd.read_parquet(tmp_path / "scores.parquet").set_index("scan_id")
    assert pd.isna(rows.loc["raw-1", "error"]) and rows.loc["raw-1", "site"] == "santos"
    assert "pixel spacing" in rows.loc["raw-2", "error"]


@pytest.mark.slow
def test_a_killed_job_rerun_scores_every_file_exactly_once(model_dir: Path, tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    names = [f"k-{index:02d}" for index in range(16)]
    write_scans(inbox, names, shape=(320, 640))
    write_corrupt_files(inbox, inbox / "k-00.dcm")
    out, parts = tmp_path / "scores.parquet", tmp_path / "scores.parquet.parts"
    arguments = dict(overlays=str(tmp_path / "overlays"), tdr=str(tmp_path / "tdr"), threshold=0.0)
    job = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from scanml.scoring import score; "
            "score(sys.argv[1], sys.argv[2], sys.argv[3], workers=1, batch_size=1, progress=False, "
            f"**{arguments!r})",
            str(model_dir),
            str(inbox),
            str(out),
        ],
        start_new_session=True,  # its own process group, to clean up its decoding worker at the end
    )
    try:
        deadline = time.monotonic() + 300
        while len(list(parts.glob("part-*.parquet"))) < 3 and job.poll() is None:
            assert time.monotonic() < deadline, "the job committed no rows in time"
            time.sleep(0.005)
        with pytest.raises(RuntimeError, match="another scoring job"):
            score(str(model_dir), inbox, out, progress=False, **arguments)
        # Kill the main process only, as the OOM killer would: its decoding
        # worker outlives it for a moment and must not keep the table locked.
        os.kill(job.pid, signal.SIGKILL)
        assert job.wait() == -signal.SIGKILL, "the job finished before it could be killed"
        assert not out.exists()
        committed = sum(len(pq.read_table(part)) for part in parts.glob("part-*.parquet"))
        summary = score(str(model_dir), inbox, out, workers=1, progress=False, **arguments)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(job.pid, signal.SIGKILL)
        job.wait()

    rows = pd.read_parquet(out)
    expected = sorted(str(path) for path in inbox.iterdir())
    assert rows["path"].tolist() == expected  # each file exactly once, in input order
    assert summary.skipped == committed >= 3
    assert summary.scanned + summary.failed == len(expected) - committed
    assert sorted(rows.loc[rows["error"].notna(), "scan_id"]) == CORRUPT
    assert rows.loc[rows["error"].isna(), "overlay"].map(lambda p: Path(p).is_file()).all()
    assert not parts.exists()


# -- hostile input and bad days (issue 9; issue 10 bugs 2 and 3) ---------------------------


def scan_count_rows(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out).set_index("scan_id")


def test_a_panicking_decoder_costs_one_row_among_30_good_scans(
    model_dir: Path, tmp_path: Path
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    write_scans(inbox, [f"g-{index:02d}" for index in range(30)], shape=(64, 128))
    rle_panic(inbox)
    out = tmp_path / "scores.parquet"
    summary = score(str(model_dir), inbox, out, workers=1, progress=False)
    rows = pd.read_parquet(out)
    assert len(rows) == 31 and rows["error"].isna().sum() == 30
    assert (summary.scanned, summary.failed) == (30, 1)
    failed = rows.loc[rows["error"].notna()].iloc[0]
    assert failed["scan_id"] == "rle-panic" and "panicked" in failed["error"]
    # A rerun does not retry it (it would panic again) unless asked.
    again = score(str(model_dir), inbox, out, workers=1, progress=False)
    assert (again.scanned, again.failed, again.skipped) == (0, 0, 31)
    retried = score(str(model_dir), inbox, out, workers=1, progress=False, retry_failed=True)
    assert (retried.failed, retried.skipped) == (1, 30)


def _decode_or_die(task: str) -> str:
    """A task function for the pool: some tasks kill, hang or panic their own process."""
    if task == "killed":
        os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer would
    if task == "hangs":
        time.sleep(60)
    if task == "exits":
        os._exit(3)
    if task == "raises":
        raise ValueError("bad bytes")
    return f"decoded {task}"


def test_a_worker_that_dies_hangs_or_raises_costs_only_its_own_task() -> None:
    tasks = ["a", "killed", "b", "hangs", "c", "exits", "raises", "d"]
    started = time.monotonic()
    results = dict(
        guarded_map(
            lambda task: (task, _decode_or_die(task)),
            tasks,
            workers=2,
            on_failure=lambda task, reason: (task, f"failed: {reason}"),
            timeout_s=3.0,
        )
    )
    assert time.monotonic() - started < 30
    assert {task: results[task] for task in "abcd"} == {t: f"decoded {t}" for t in "abcd"}
    assert "SIGKILL" in results["killed"] and "out-of-memory" in results["killed"]
    assert "longer than 3 s" in results["hangs"]
    assert "exited with status 3" in results["exits"]
    assert results["raises"] == "failed: ValueError: bad bytes"


def test_a_forged_spacing_is_refused_before_resampling(model_dir: Path, tmp_path: Path) -> None:
    spacing_edit(tmp_path, "64", "coarse.dcm", (1000, 1600))
    spacing_edit(tmp_path, "1e-300", "fine.dcm", (64, 64))
    started = time.monotonic()
    score(str(model_dir), tmp_path, tmp_path / "scores.parquet", workers=0, progress=False)
    assert time.monotonic() - started < 30
    rows = scan_count_rows(tmp_path / "scores.parquet")
    assert "64 x 64 mm is outside the plausible range" in rows.loc["coarse", "error"]
    assert "1e-300 x 1e-300 mm is outside" in rows.loc["fine", "error"]
    # Within the plausible range, the size on the model's grid is bounded too.
    scan = Scan(np.zeros((1, 2000, 3000), np.float32), (40.0, 40.0), ["high"], {})
    with pytest.raises(ScanTooLargeError, match="over the budget of 40000000 pixels"):
        check_model_grid(scan, Preprocessing(channels=("high",), spacing_mm=8.0))


@contextlib.contextmanager
def read_only_folder(path: Path):
    """A real read-only file system (tmpfs mounted ro): root ignores folder permissions."""
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def test_a_read_only_overlay_folder_keeps_the_scores_and_lists_the_overlays_as_failed(
    model_dir: Path, scan_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "scores.parquet"
    with read_only_folder(tmp_path / "read-only") as overlays:
        summary = score(str(model_dir), scan_dir, out, overlays=overlays, threshold=0.0, workers=1)
    assert "--overlays" in capsys.readouterr().err
    rows = pd.read_parquet(out)
    scored = rows[rows["error"].isna()]
    assert len(scored) == 5 and scored["score"].notna().all() and scored["flagged"].all()
    assert scored["output_error"].str.contains("overlay: OSError: .*Read-only file system").all()
    assert scored["overlay"].isna().all()
    assert (summary.scanned, summary.flagged, summary.outputs_failed) == (5, 5, 5)
    assert "outputs failed 5" in str(summary)
    # A rerun with a writable folder writes what was missing, and only that.
    again = score(
        str(model_dir), scan_dir, out, overlays=tmp_path / "ok", threshold=0.0, progress=False
    )
    assert (again.scanned, again.skipped, again.outputs_failed) == (5, 3, 0)
    rows = pd.read_parquet(out)
    assert rows["output_error"].isna().all() and rows["overlay"].notna().sum() == 5


def test_an_overlay_that_cannot_be_written_never_costs_its_score(
    model_dir: Path, scan_dir: Path, tmp_path: Path
) -> None:
    (tmp_path / "overlays" / "a-01.png").mkdir(parents=True)  # a folder where the PNG goes
    score(
        str(model_dir),
        scan_dir,
        tmp_path / "scores.parquet",
        overlays=tmp_path / "overlays",
        tdr=tmp_path / "tdr",
        threshold=0.0,
        workers=0,
        progress=False,
    )
    rows = scan_count_rows(tmp_path / "scores.parquet")
    assert pd.notna(rows.loc["a-01", "score"]) and pd.isna(rows.loc["a-01", "error"])
    assert rows.loc["a-01", "output_error"].startswith("overlay: IsADirectoryError")
    assert Path(rows.loc["a-01", "tdr"]).is_file()
    assert rows.drop(index="a-01")["output_error"].isna().all()


def test_an_unwritable_out_is_refused_before_any_scan_is_read(
    model_dir: Path, scan_dir: Path, tmp_path: Path
) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(ScoringError, match=r"--out .*cannot write into"):
        score(str(model_dir), scan_dir, tmp_path / "file" / "scores.parquet", progress=False)


def test_a_replaced_file_is_rescored_and_a_restored_one_retried(
    model_dir: Path, tmp_path: Path
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    write_scans(inbox, ["r-01", "r-02"])
    (tmp_path / "manifest.csv").write_text("path\ninbox/r-01.dcm\ninbox/r-02.dcm\ninbox/r-03.dcm\n")
    out = tmp_path / "scores.parquet"
    score(str(model_dir), tmp_path / "manifest.csv", out, workers=0, progress=False)
    before = scan_count_rows(out)
    assert "no such file" in before.loc["r-03", "error"]

    other = Scan(np.full((1, 120, 90), 3.0, np.float32), (4.0, 4.0), ["high"], {"scan_id": "x"})
    write_scan(other, inbox / "r-01.dcm")  # replaced by a different scan
    write_scans(inbox, ["r-03"])  # restored
    summary = score(str(model_dir), tmp_path / "manifest.csv", out, workers=0, progress=False)
    assert (summary.scanned, summary.skipped) == (2, 1)
    after = scan_count_rows(out)
    assert len(after) == 3
    assert after.loc["r-01", "height"] == 120 and after.loc["r-01", "score"] != pytest.approx(
        before.loc["r-01", "score"]
    )
    assert after.loc["r-01", "fingerprint"] != before.loc["r-01", "fingerprint"]
    assert pd.isna(after.loc["r-03", "error"]) and pd.notna(after.loc["r-03", "score"])
    assert after.loc["r-02", "seconds"] == before.loc["r-02", "seconds"]  # kept, not rescored


def test_a_second_job_on_the_same_table_is_refused_in_one_line(
    model_dir: Path, scan_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "scores.parquet"
    with ScoresTable.open(out):  # a job holds the table (a separate open file: flock conflicts)
        status = main(
            ["score", "--model", str(model_dir), "--input", str(scan_dir), "--out", str(out)]
        )
    assert status == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"scanml score: error: another scoring job is writing {out} (it holds"
        f" {tmp_path / '.scores.parquet.lock'}); wait for it to finish, or write to another --out"
    ]
    assert not out.exists() and not (tmp_path / ".scores.parquet.lock").exists()


_HOLD_THE_LOCK = """
import os, sys, time
from pathlib import Path
from scanml.scores_table import ScoresTable, TableLockedError
out, inside = Path(sys.argv[1]), Path(sys.argv[2])
entered = refused = overlaps = 0
deadline = time.monotonic() + float(sys.argv[3])
while time.monotonic() < deadline:
    try:
        with ScoresTable.open(out):
            try:
                os.close(os.open(inside, os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                overlaps += 1
                continue
            entered += 1
            time.sleep(0.0005)
            os.unlink(inside)
    except TableLockedError:
        refused += 1
print(entered, refused, overlaps)
"""


@pytest.mark.slow
def test_two_processes_racing_for_one_table_are_never_both_inside(tmp_path: Path) -> None:
    out, inside = tmp_path / "scores.parquet", tmp_path / "inside"
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", _HOLD_THE_LOCK, str(out), str(inside), "4"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    reports = [racer.communicate(timeout=120) for racer in racers]
    assert all(racer.returncode == 0 for racer in racers), [err for _, err in reports]
    counts = [tuple(int(n) for n in stdout.split()) for stdout, _ in reports]
    assert all(overlaps == 0 for _, _, overlaps in counts), counts
    assert all(entered > 10 for entered, _, _ in counts), counts  # both got in, in turns
    assert sum(refused for _, refused, _ in counts) > 0, counts  # and they did contend


def test_a_reader_never_sees_a_torn_table_while_a_job_replaces_it(tmp_path: Path) -> None:
    """A status reader polling a live table (``scanml watch`` merges and replaces it after
    every batch) reads one whole version each time. Reading by path let pyarrow open the
    file twice, and a replace in between failed with "Unexpected end of stream"."""
    out = tmp_path / "scores.parquet"
    table = ScoresTable(out)
    rows = [
        {
            "scan_id": f"s{i}",
            "path": f"/inbox/s{i}.dcm",
            "threshold": 0.5,
            "regions": [],
            "model_uri": "models:/m/1",
            "seconds": 0.1,
        }
        for i in range(400)
    ]
    table.append(rows[:1])
    table.merge([])
    stop = threading.Event()
    replaced = [0]

    def job() -> None:  # tables of 1 to 400 rows, each replacing the last
        size = 1
        while not stop.is_set():
            table.append(rows[:size])
            table.merge([])
            replaced[0] += 1
            size = size % len(rows) + 1

    writer = threading.Thread(target=job, daemon=True)
    writer.start()
    reads, deadline = 0, time.monotonic() + 120
    try:
        while reads < 300 or replaced[0] < 300:
            paths = read_table(out, columns=["path"])["path"].to_pylist()
            assert paths == [row["path"] for row in rows[: len(paths)]]
            reads += 1
            assert time.monotonic() < deadline, f"{reads} reads, {replaced[0]} replaces"
    finally:
        stop.set()
        writer.join()


def test_manifest_paths_stay_inside_the_manifest_folder_and_duplicates_are_reported(
    model_dir: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    write_scans(data, ["m-01"])
    write_scans(tmp_path, ["outside"])
    (data / "manifest.csv").write_text(
        "scan_id,path\nm-01,m-01.dcm\nclimb,../outside.dcm\nshadow,/etc/shadow\n"
        "nothing,/etc/no-such-file\nagain,./m-01.dcm\n"
    )
    out = tmp_path / "scores.parquet"
    summary = score(str(model_dir), data / "manifest.csv", out, workers=0, progress=False)
    assert summary.duplicates == 1 and "duplicate rows 1" in str(summary)
    rows = scan_count_rows(out)
    assert list(rows.index) == ["m-01", "climb", "shadow", "nothing"]
    assert pd.notna(rows.loc["m-01", "score"])
    for scan_id in ("climb", "shadow", "nothing"):
        assert rows.loc[scan_id, "error"].startswith("InputRefused: manifest.csv row")
        assert "lies outside the manifest's folder" in rows.loc[scan_id, "error"]
        assert pd.isna(rows.loc[scan_id, "fingerprint"])  # never even looked at
    # An existing and a missing file outside are refused in the same words.
    assert rows.loc["shadow", "error"].split("'")[2] == rows.loc["nothing", "error"].split("'")[2]

    allowed = score(
        str(model_dir), data / "manifest.csv", out, workers=0, progress=False, allow_outside=True
    )
    assert allowed.scanned == 1  # ../outside.dcm; /etc/shadow is no scan
    assert pd.notna(scan_count_rows(out).loc["climb", "score"])


def test_a_threshold_that_is_no_number_and_a_file_that_is_no_model_are_refused(
    model_dir: Path, scan_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "scores.parquet"
    with pytest.raises(ScoringError, match=r"--threshold nan: not a finite number"):
        score(str(model_dir), scan_dir, out, threshold=float("nan"), progress=False)
    (model_dir.parent / "notes.txt").write_text("not a model")
    with pytest.raises(ScoringError, match=r"notes\.txt: a file, but not a model's model\.json"):
        score(str(model_dir.parent / "notes.txt"), scan_dir, out, progress=False)
    broken = tmp_path / "nan-model"
    shutil.copytree(model_dir, broken)
    config = json.loads((broken / "model.json").read_text())
    (broken / "model.json").write_text(json.dumps({**config, "threshold": float("nan")}))
    with pytest.raises(ScoringError, match=r"its threshold nan is not a finite number"):
        score(str(broken), scan_dir, out, progress=False)
    assert not out.exists()


def test_a_table_records_its_model_version_and_never_mixes_two(
    model_dir: Path, scan_dir: Path, mlflow_uri: str, tmp_path: Path
) -> None:
    client = MlflowClient(mlflow_uri)
    client.create_registered_model("scanml-test")
    for _ in range(2):
        client.create_model_version("scanml-test", source=str(model_dir))
    client.set_registered_model_alias("scanml-test", "champion", "1")
    out = tmp_path / "scores.parquet"
    uri = "models:/scanml-test@champion"
    score(uri, scan_dir, out, tdr=tmp_path / "tdr", workers=0, progress=False)
    rows = pd.read_parquet(out)
    assert (rows["model_name"] == "scanml-test").all() and (rows["model_version"] == "1").all()
    assert (rows["model_uri"] == uri).all()
    report = pydicom.dcmread(rows["tdr"].dropna().iloc[0])
    assert "models:/scanml-test@champion = scanml-test version 1" in str(report)

    client.set_registered_model_alias("scanml-test", "champion", "2")  # a promote
    before = out.read_bytes()
    with pytest.raises(ScoringError) as refused:
        score(uri, scan_dir, out, workers=0, progress=False)
    message = str(refused.value)
    assert "holds scores of scanml-test version 1" in message
    assert "is now scanml-test version 2" in message and "new --out" in message
    assert out.read_bytes() == before
    score(uri, scan_dir, tmp_path / "v2.parquet", workers=0, progress=False)
    assert (pd.read_parquet(tmp_path / "v2.parquet")["model_version"] == "2").all()


class _SilentServer:
    """Accepts connections and never answers: a hung tracking server."""

    def __init__(self) -> None:
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        self.connections: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                self.connections.append(self.socket.accept()[0])

    def close(self) -> None:
        self.socket.close()
        for connection in self.connections:
            connection.close()


@pytest.fixture
def restored_environment():
    """Scoring bounds MLflow's HTTP calls through environment variables: undo that after."""
    saved = dict(os.environ)
    for name in ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES"):
        os.environ.pop(name, None)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.mark.slow
@pytest.mark.parametrize("server", ["refused", "hung"])
def test_a_tracking_server_that_is_down_fails_scoring_in_under_30_s(
    server: str,
    scan_dir: Path,
    tmp_path: Path,
    restored_environment: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    silent = _SilentServer() if server == "hung" else None
    if silent is None:
        with socket.create_server(("127.0.0.1", 0)) as closed:
            port = closed.getsockname()[1]  # free, and nobody listens once closed
    else:
        port = silent.port
    os.environ["MLFLOW_TRACKING_URI"] = f"http://127.0.0.1:{port}"
    out = tmp_path / "scores.parquet"
    started = time.monotonic()
    try:
        status = main(
            [
                "score",
                "--model",
                "models:/scanml-anomaly@champion",
                "--input",
                str(scan_dir),
                "--out",
                str(out),
            ]
        )
    finally:
        if silent is not None:
            silent.close()
    elapsed = time.monotonic() - started
    assert elapsed < 30, f"took {elapsed:.0f} s"
    assert status == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"scanml score: error: the tracking server http://127.0.0.1:{port} is unreachable"
        f" ({'connection refused' if server == 'refused' else 'no answer in time'}):"
        " is it running?"
    ]
    assert not out.exists()


_ORPHANED_WORKERS = """
import os, sys, time
from scanml.decode_pool import guarded_map

def slow(task):
    # One write, atomic on a pipe: print() writes the number and the newline
    # apart, so two workers' lines could interleave ("12341235" then "").
    os.write(1, f"{os.getpid()}\\n".encode())
    time.sleep(task)
    return task

for _ in guarded_map(slow, [2.0, 2.0, 60.0], workers=2, on_failure=lambda task, why: why):
    pass
"""


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in state  # a zombie has exited; nobody may reap it in a container


def test_decoding_workers_exit_when_the_job_is_killed() -> None:
    job = subprocess.Popen(
        [sys.executable, "-c", _ORPHANED_WORKERS], stdout=subprocess.PIPE, text=True
    )
    workers = {int(job.stdout.readline()) for _ in range(2)}
    job.kill()  # as the OOM killer would kill the job itself
    job.wait()
    deadline = time.monotonic() + 60
    while any(_running(pid) for pid in workers):
        assert time.monotonic() < deadline, "a decoding worker outlived its job by a minute"
        time.sleep(0.2)
