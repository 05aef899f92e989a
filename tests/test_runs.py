"""compare and promote against a real MLflow store: the metric named is the metric shown.

The runs here are created through MlflowClient with chosen metric values,
so that the ranking and the join of evaluation metrics can be checked
exactly; the end-to-end path (train, evaluate, compare) is in
test_mlflow_tools.py.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from mlflow import MlflowClient

from scanml.registry import RegistryLookupError
from scanml.runs import compare_runs, promote


def _run(client: MlflowClient, experiment: str, name: str, metrics: dict, tags=None) -> str:
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    run = client.create_run(experiment_id, run_name=name, tags=tags or {})
    for key, value in metrics.items():
        client.log_metric(run.info.run_id, key, value, step=1)
    client.set_terminated(run.info.run_id)
    return run.info.run_id


@pytest.fixture(scope="module")
def filled_store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Two training runs: A has the better best epoch, B the better last epoch; B was evaluated.

    One store for the module: creating an MLflow database takes seconds.
    """
    mlflow_uri = f"sqlite:///{tmp_path_factory.mktemp('runs-store') / 'mlflow.db'}"
    client = MlflowClient(mlflow_uri)
    a = _run(client, "scanml", "a", {"best/auroc": 0.90, "val/auroc": 0.50})
    b = _run(client, "scanml", "b", {"best/auroc": 0.70, "val/auroc": 0.80})
    _run(
        client,
        "scanml-evaluation",
        "evaluate test",
        {"test/auroc": 0.60},
        tags={"scanml.source_run_id": b},
    )
    _run(  # a newer evaluation of B replaces the older figure
        client,
        "scanml-evaluation",
        "evaluate test",
        {"test/auroc": 0.65},
        tags={"scanml.source_run_id": b},
    )
    return {"a": a, "b": b, "uri": mlflow_uri}


@pytest.fixture
def store(filled_store: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", filled_store["uri"])
    return filled_store


def test_default_ranks_on_the_best_epoch(store: dict[str, str]) -> None:
    table = compare_runs("scanml")
    assert list(table["run"]) == ["a", "b"]
    assert list(table["best/auroc"]) == [0.90, 0.70]


def test_the_metric_named_is_the_metric_shown(store: dict[str, str]) -> None:
    last = compare_runs("scanml", metric="val/auroc")
    assert list(last["run"]) == ["b", "a"] and list(last["val/auroc"]) == [0.80, 0.50]
    test = compare_runs("scanml", metric="test/auroc")
    assert list(test["run"]) == ["b", "a"]
    assert test["test/auroc"][0] == 0.65 and math.isnan(test["test/auroc"][1])
    assert "evaluate test" not in set(test["run"])  # evaluation runs are not training runs


def test_unknown_metric_or_experiment_is_refused_with_what_exists(store: dict[str, str]) -> None:
    with pytest.raises(
        RegistryLookupError, match=r"did you mean best/auroc.*known metrics: best/auroc"
    ):
        compare_runs("scanml", metric="best/aurco")
    with pytest.raises(RegistryLookupError, match=r"no experiment 'scanmll'.*scanml"):
        compare_runs("scanmll")


def test_promote_takes_the_name_from_the_run(store: dict[str, str], tmp_path: Path) -> None:
    client = MlflowClient(store["uri"])
    client.create_registered_model("scanml-anomaly")
    for run in ("a", "b"):
        client.create_model_version("scanml-anomaly", str(tmp_path), run_id=store[run])
    change = promote(store["b"])
    assert (change.name, change.version, change.previous) == ("scanml-anomaly", "2", None)
    change = promote("1", default_name="scanml-anomaly")
    assert (change.version, change.previous) == ("1", "2")
    assert promote(store["a"][:12]).version == "1"  # the prefix compare used to show
    # A run id whose prefix happens to be all decimal digits is still a run.
    digits = "735516538688"
    assert digits.isdigit()
    with pytest.raises(RegistryLookupError, match=digits):
        promote(digits)
    with pytest.raises(RegistryLookupError, match=r"has no version '7'.*versions 1, 2"):
        promote("7", default_name="scanml-anomaly")
    with pytest.raises(RegistryLookupError, match=r"no run 'deadbeef'.*experiments: "):
        promote("deadbeef")
