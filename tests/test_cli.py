"""Every user mistake is one line naming what was wrong and what exists, and exit status 2.

The commands run in this process through ``scanml.cli.main``, against a real
(empty or freshly filled) MLflow store; a traceback would fail the test by
propagating.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import CONFIGS
from scanml.cli import main


def _error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One empty MLflow store for the module (creating one takes seconds)."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path_factory.mktemp('cli-store') / 'mlflow.db'}"
    MlflowClient(uri).search_experiments()  # creates the tables
    return uri


@pytest.fixture
def mlflow_uri(empty_store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", empty_store)
    monkeypatch.chdir(tmp_path)
    return empty_store


@pytest.fixture
def scans(tmp_path: Path) -> Path:
    folder = tmp_path / "scans"
    folder.mkdir()
    (folder / "a.npy").write_bytes(b"")
    return folder


def test_wrong_model_uris(
    mlflow_uri: str, scans: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = str(tmp_path / "scores.parquet")
    base = ["score", "--input", str(scans), "--out", out, "--model"]
    assert "no registered model 'x'" in _error(capsys, *base, "models:/x@champoin")
    assert "holds no registered model" in _error(capsys, *base, "models:/x@champoin")
    assert "no run 'deadbeef'" in _error(capsys, *base, "runs:/deadbeef/model")
    missing = _error(capsys, *base, str(tmp_path / "modle"))
    assert "no such model folder" in missing and "scans" in missing  # lists what is there
    # A failed start leaves no lock or parts folder behind.
    assert not (tmp_path / "scores.parquet.parts").exists()


def test_missing_inputs_and_unwritable_outputs(
    mlflow_uri: str, scans: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = ["--model", "models:/x/1"]
    err = _error(capsys, "score", *model, "--input", str(tmp_path / "scnas"), "--out", "s.parquet")
    assert "--input" in err and "did you mean" in err and "scans" in err
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    err = _error(capsys, "score", *model, "--input", str(scans), "--out", f"{blocker}/s.parquet")
    assert "--out" in err and "is a file" in err
    err = _error(capsys, "evaluate", *model, "--data", str(tmp_path / "nodata"))
    assert "--data" in err and "no such folder" in err
    err = _error(capsys, "evaluate", *model, "--data", str(scans))
    assert "no manifest.csv" in err and "a.npy" in err


def test_set_blames_set_and_suggests_the_key(
    mlflow_uri: str, scans: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = _error(capsys, "train", "--data", str(scans), "--set", "train.epoch=3")
    assert err.endswith(
        "--set train.epoch=...: no such configuration key; did you mean train.epochs?"
    )
    err = _error(capsys, "train", "--data", str(scans), "--set", "train.epochs=-1")
    assert err.startswith("scanml train: error: --set:") and "train.epochs" in err
    err = _error(capsys, "train", "--data", str(scans))  # a folder without manifest.csv
    assert "no manifest.csv" in err
    # A start that fails its checks leaves no run folder behind.
    assert not (tmp_path / "runs").exists()


def test_promote_and_compare_default_to_the_preset(
    mlflow_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert "no experiment 'scanml'" in _error(capsys, "compare")
    smoke = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"
    assert "no experiment 'scanml-smoke'" in _error(capsys, "compare", "--config", str(smoke))
    err = _error(capsys, "promote", "3", "--config", str(smoke))
    assert "models:/scanml-smoke/3" in err and "no registered model" in err
    assert "no run 'deadbeef'" in _error(capsys, "promote", "deadbeef")


def test_every_subcommand_has_help_with_defaults() -> None:
    for command in ("synth", "train", "evaluate", "score", "compare", "promote", "demo"):
        completed = subprocess.run(
            [sys.executable, "-m", "scanml", command, "--help"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert completed.returncode == 0, completed.stderr
        assert "(default:" in completed.stdout, command


def test_bench_quality_model_mistakes(
    mlflow_uri: str, scans: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sets = tmp_path / "set"
    sets.mkdir()
    (sets / "manifest.csv").write_text("scan_id,path,label\n")
    base = ["bench", "--quality", "--model", str(tmp_path / "modle")]
    err = _error(capsys, *base, "--foreign", str(sets))
    assert "--left-out None" in err and "--foreign" not in err.split("(")[1]
    both = ["--left-out", str(sets), "--foreign", str(sets)]
    assert "trains none" in _error(capsys, *base, *both, "--data", str(scans))
    missing = _error(capsys, *base, *both)
    assert "no such model folder" in missing and "scans" in missing
    assert "--bootstrap 0: must be 1 to 100000" in _error(capsys, *base, *both, "--bootstrap", "0")
    arm = ["bench", "--quality", *both, "--arm"]
    assert "--arm recipe: give a name, then its models" in _error(capsys, *arm, "recipe")
    twice = _error(capsys, *arm, "a", str(scans), "--arm", "a", str(scans))
    assert "--arm a: two arms have that name" in twice
    assert "either with --model or with --arm" in _error(capsys, *base, *both, "--arm", "a", "m")
    assert "--arm needs --left-out" in _error(capsys, "bench", "--quality", "--arm", "a", "m")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    out = ["--out", str(blocker / "reports")]
    assert "is a file" in _error(capsys, *base, *both, *out)
    # The benchmark that trains finds it before training, not 80 minutes later.
    config = ["--config", str(CONFIGS / "smoke.yaml")]
    err = _error(capsys, "bench", "--quality", "--data", str(sets), *both, *out, *config)
    assert err.startswith("scanml bench: error: --out") and "is a file" in err
    assert not (tmp_path / "reports").exists()
