"""The scoring job on real files: an untrained model, small DICOS scans, corrupt files among them."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from scanml.io import Scan, read_scan, write_scan
from scanml.models import ModelBundle, create_model
from scanml.predict import Predictor
from scanml.preprocess import Preprocessing
from scanml.scoring import SCORE_COLUMNS, SCORES_SCHEMA, resolve_inputs, score, score_paths
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
