"""Comparing training runs and putting a model into service.

- :func:`compare_runs` lists the training runs of an experiment side by
  side, best first, on the metric asked for. Metrics logged by
  ``scanml evaluate`` (``test/auroc``...) are joined onto the run that
  trained the evaluated model, so they compare like the run's own.
- :func:`promote` moves the ``champion`` alias and says what it replaces;
  given a run, it finds the registered name and version that run logged.

Both default to the experiment and registered name of a configuration
preset (``configs/default.yaml`` unless told otherwise), the same names
``scanml train`` used, and every mistake is a :class:`~scanml.registry.RegistryLookupError`
naming what exists.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from scanml.registry import RegistryLookupError, find_experiment, resolve_model, versions_of_run
from scanml.tracking import resolve_tracking_uri, using_tracking_uri

__all__ = ["DEFAULT_COMPARE_METRIC", "PromotionChange", "compare_runs", "promote"]

#: Ranking on the best epoch's validation AUROC: the weights a run kept, not its last epoch.
DEFAULT_COMPARE_METRIC = "best/auroc"

#: The columns `scanml compare` shows besides the metric asked for: (MLflow column, header).
_COMPARE_COLUMNS = (
    ("tags.mlflow.runName", "run"),
    ("params.model.architecture", "backbone"),
    ("params.model.channels", "channels"),
    ("params.model.spacing_mm", "mm/px"),
    ("metrics.best/auroc", "best/auroc"),
    ("metrics.best/average_precision", "best/ap"),
    ("metrics.best/dr_at_far_1pct", "best/dr@1%far"),
    ("metrics.best/pointing_hit_rate", "best/pointing"),
    ("metrics.best/threshold", "threshold"),
    ("params.data.n_train", "n_train"),
)
_SOURCE_RUN_TAG = "scanml.source_run_id"
# Metric families that are better when lower.
_LOWER_IS_BETTER = ("loss", "far_at_dr", "seconds")


def compare_runs(
    experiment: str = "scanml", *, metric: str = DEFAULT_COMPARE_METRIC, limit: int = 20
) -> pd.DataFrame:
    """The runs of ``experiment`` side by side, best ``metric`` first, the metric as a column.

    ``metric`` is a key as the run logged it (``best/auroc``, ``val/auroc``
    for the last epoch) or as ``scanml evaluate`` logged it for the run's
    model (``test/auroc``; the newest evaluation wins). Raises
    :class:`~scanml.registry.RegistryLookupError` for an unknown experiment, or a
    metric no run has, listing the ones known.
    """
    tracking_uri = resolve_tracking_uri()
    experiment_id = find_experiment(experiment, tracking_uri=tracking_uri)
    with using_tracking_uri(tracking_uri):
        runs = mlflow.search_runs(experiment_ids=[experiment_id], max_results=max(limit * 5, 100))
        if runs.empty:
            return runs
        if f"tags.{_SOURCE_RUN_TAG}" in runs:  # evaluation runs logged into this experiment
            runs = runs[runs[f"tags.{_SOURCE_RUN_TAG}"].isna()].reset_index(drop=True)
        runs = _with_evaluations(runs)
    known = sorted(
        column.removeprefix("metrics.")
        for column in runs.columns
        if column.startswith("metrics.") and runs[column].notna().any()
    )
    if metric not in known:
        raise RegistryLookupError(_unknown_metric(metric, known, experiment))

    table = pd.DataFrame({"run_id": runs["run_id"], "status": runs["status"]})
    for column, header in _COMPARE_COLUMNS:
        if column != f"metrics.{metric}":
            table[header] = runs.get(column)
    table["minutes"] = ((runs["end_time"] - runs["start_time"]).dt.total_seconds() / 60).round(1)
    table[metric] = runs[f"metrics.{metric}"]
    return (
        table.sort_values(metric, ascending=_lower_is_better(metric), na_position="last")
        .head(limit)
        .reset_index(drop=True)
    )


@dataclass(frozen=True)
class PromotionChange:
    """Which version an alias moved from and to."""

    name: str
    alias: str
    version: str
    previous: str | None
    run_id: str | None

    def __str__(self) -> str:
        was = f"replacing version {self.previous}" if self.previous else "no previous holder"
        return (
            f"models:/{self.name}@{self.alias} -> version {self.version} (run {self.run_id}); {was}"
        )


def promote(
    target: str,
    *,
    name: str | None = None,
    alias: str = "champion",
    default_name: str | None = None,
) -> PromotionChange:
    """Point ``alias`` at a registered version, given as a version number or the run that logged it.

    A run id (or a unique prefix of it, as ``scanml compare`` shows) needs
    no ``name``: the registered name is the one the run logged under. A
    version number belongs to ``name``, else ``default_name`` (the
    preset's). Raises :class:`~scanml.registry.RegistryLookupError` naming the
    registered models, versions and aliases that do exist.
    """
    tracking_uri = resolve_tracking_uri()
    client = MlflowClient(tracking_uri)
    # A version number is short; a run id prefix (12 hex digits as compare
    # shows it) can be all decimal digits too, about once in 280 runs.
    if target.isdigit() and len(target) < 8:
        name = name or default_name
        if not name:
            raise RegistryLookupError(f"version {target}: which registered model? pass --name")
        version = _version(client, name, target)
    else:
        versions = versions_of_run(target, name=name, tracking_uri=tracking_uri)
        names = sorted({v.name for v in versions})
        if len(names) > 1:
            raise RegistryLookupError(
                f"run {target} registered versions under {', '.join(names)}: pass --name"
            )
        version = versions[0]  # newest first
        name = version.name
    try:
        previous = str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        previous = None
    try:
        client.set_registered_model_alias(name, alias, version.version)
    except MlflowException as exc:  # a shared server refuses a user without EDIT on the model
        if exc.error_code != "PERMISSION_DENIED":
            raise
        raise RegistryLookupError(
            f"{name} version {version.version}: {tracking_uri} refuses to move alias {alias!r} "
            "(permission denied: promoting needs EDIT on the registered model)"
        ) from None
    return PromotionChange(name, alias, str(version.version), previous, version.run_id)


# -- helpers ----------------------------------------------------------------------------


def _with_evaluations(runs: pd.DataFrame) -> pd.DataFrame:
    """Add the metrics of evaluation runs (any experiment) to the training run they evaluated."""
    try:
        evaluations = mlflow.search_runs(
            search_all_experiments=True,
            filter_string=f"tags.`{_SOURCE_RUN_TAG}` LIKE '%'",
            order_by=["attributes.start_time DESC"],
            max_results=5000,
        )
    except MlflowException:
        return runs
    if evaluations.empty:
        return runs
    evaluations = evaluations[evaluations[f"tags.{_SOURCE_RUN_TAG}"].isin(runs["run_id"])]
    runs = runs.copy()
    for column in (c for c in evaluations.columns if c.startswith("metrics.")):
        # Newest first: the first value per source run is the latest evaluation's.
        latest = (
            evaluations[[f"tags.{_SOURCE_RUN_TAG}", column]]
            .dropna()
            .drop_duplicates(f"tags.{_SOURCE_RUN_TAG}")
            .set_index(f"tags.{_SOURCE_RUN_TAG}")[column]
        )
        joined = runs["run_id"].map(latest)
        runs[column] = runs[column].fillna(joined) if column in runs else joined
    return runs


def _unknown_metric(metric: str, known: list[str], experiment: str) -> str:
    headline = [
        k
        for k in known
        if not k.startswith(("system/", "train/"))
        and not any(part in k for part in ("/site/", "/n_", "threshold_at_far"))
    ]
    near = difflib.get_close_matches(metric, known, n=3)
    hint = f" (did you mean {', '.join(near)}?)" if near else ""
    listed = ", ".join(headline[:40]) + (" ..." if len(headline) > 40 else "")
    evaluated = (
        " (test/... metrics appear once 'scanml evaluate' has scored a run's model)"
        if metric.startswith("test/")
        else ""
    )
    return (
        f"no run in experiment {experiment!r} has the metric {metric!r}{hint}{evaluated}; "
        f"known metrics: {listed or 'none'}"
    )


def _lower_is_better(metric: str) -> bool:
    return any(part in metric for part in _LOWER_IS_BETTER)


def _version(client: MlflowClient, name: str, number: str) -> ModelVersion:
    resolved = resolve_model(f"models:/{name}/{number}", tracking_uri=client.tracking_uri)
    return client.get_model_version(resolved.name, resolved.version)
