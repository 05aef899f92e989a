"""Model packages: exported at site A, imported at site B, scoring bit-identically."""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from conftest import TrainedModel
from scanml.cli import main
from scanml.exchange import ExchangeError
from scanml.model_package import export_model, import_model
from scanml.scoring import score

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _restore_tracking_uri() -> Iterator[None]:
    """These tests switch mlflow's process-wide store between sites; later tests rely on the env."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    mlflow.set_tracking_uri(None)  # back to the environment variable
    if before is not None:
        os.environ["MLFLOW_TRACKING_URI"] = before


@pytest.fixture(scope="module")
def model_file(trained_model: TrainedModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared smoke model, exported from its own MLflow store (site A)."""
    out = tmp_path_factory.mktemp("site-a") / "detector.zip"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", trained_model.tracking_uri)
        # No mlflow.set_tracking_uri here: set in a module fixture, before each test's guard
        # snapshot, it would stay for every later test (test_models' runs:/ test failed so).
        card = export_model(trained_model.model_uri, out)
    assert card.source_uri == trained_model.model_uri
    return out


def test_the_card_says_what_the_model_was_trained_on_and_how_it_did(model_file: Path) -> None:
    with zipfile.ZipFile(model_file) as archive:
        names = set(archive.namelist())
        card = json.loads(archive.read("data/model_card.json"))
        markdown = archive.read("data/MODEL_CARD.md").decode()
    assert {"bagit.txt", "manifest-sha256.txt", "data/model/model.safetensors"} <= names
    assert set(card["training_sites"]) == {"antwerp", "rotterdam"}
    assert all(site["scans"] > 0 for site in card["training_sites"].values())
    assert {"all", "antwerp", "rotterdam"} <= set(card["validation_metrics"])
    assert "auroc" in card["validation_metrics"]["all"]
    assert card["scanml_version"] and card["class_names"] and card["limits"]
    assert "## Known limits" in markdown and "| antwerp |" in markdown
    assert "/tmp" not in json.dumps(card)  # no path from the sender's machine


def test_imported_model_scores_bit_identically_at_site_b(
    model_file: Path,
    trained_model: TrainedModel,
    mlflow_uri: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    scans = sorted(  # x.dcm, not a dual-energy scan's x.low.dcm (read together with x.dcm)
        str(p) for p in (trained_model.data_dir / "scans").glob("*.dcm") if p.suffixes == [".dcm"]
    )[:3]
    # site B: its own, empty MLflow store (mlflow_uri), the CLI as an analyst runs it
    mlflow.set_tracking_uri(mlflow_uri)
    assert main(["import-model", str(model_file), "--name", "from-antwerp"]) == 0
    imported_uri = capsys.readouterr().out.split("model: ")[1].split()[0]
    assert imported_uri == "models:/from-antwerp/1"
    version = MlflowClient(mlflow_uri).get_model_version("from-antwerp", "1")
    assert version.tags["scanml.lineage.origin_uri"] == trained_model.model_uri
    assert version.tags["scanml.lineage.training_sites"] == "antwerp,rotterdam"
    assert len(version.tags["scanml.lineage.package_sha256"]) == 64
    score(imported_uri, scans, tmp_path / "b.parquet", workers=0, progress=False)

    mlflow.set_tracking_uri(trained_model.tracking_uri)  # site A, the original
    score(trained_model.model_uri, scans, tmp_path / "a.parquet", workers=0, progress=False)
    mlflow.set_tracking_uri(mlflow_uri)

    at_a, at_b = pd.read_parquet(tmp_path / "a.parquet"), pd.read_parquet(tmp_path / "b.parquet")
    assert len(at_a) == 3 and at_a["error"].isna().all()
    assert at_a["score"].tolist() == at_b["score"].tolist()  # bit-identical, not approximately
    assert at_a["threshold"].tolist() == at_b["threshold"].tolist()
    assert at_a["regions"].map(list).tolist() == at_b["regions"].map(list).tolist()


def test_a_tampered_model_package_is_refused(
    model_file: Path, mlflow_uri: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mlflow.set_tracking_uri(mlflow_uri)
    damaged = tmp_path / "damaged.zip"
    with zipfile.ZipFile(model_file) as source, zipfile.ZipFile(damaged, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            if item.filename == "data/model/model.json":
                data = data.replace(b'"threshold": ', b'"threshold": 0.0001 + ')
            target.writestr(item, data)
    with pytest.raises(ExchangeError, match=r"data/model/model\.json: content changed"):
        import_model(damaged, name="tampered")
    assert main(["import-model", str(tmp_path / "nothing.zip")]) == 2
    assert "no such model package file" in capsys.readouterr().err
    assert MlflowClient(mlflow_uri).search_registered_models() == []
