"""Evaluate a model on whole scans, compare runs, and promote a model to service.

- :func:`evaluate` scores a dataset split through the same Predictor as
  scoring, computes the customs metrics (DR at fixed false-alarm rates,
  pointing, region recall, per site), and logs them with plots and a
  Markdown/JSON report to MLflow;
- :func:`compare_runs` lists the runs of an experiment side by side, best first;
- :func:`promote` moves the ``champion`` alias and says what it replaces.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from tqdm.auto import tqdm

from scanml.cross_site import CrossSiteTable, cross_site_table
from scanml.data import ScanRecord, assign_splits, load_dataset
from scanml.io import ScanReadError, read_scan
from scanml.metrics import ScanMetrics, ScanOutcome, compute_metrics, threshold_at_far
from scanml.models import ModelBundle
from scanml.predict import Predictor
from scanml.tracking import Tracker, log_model, resolve_tracking_uri, run_tags

__all__ = ["EvaluationReport", "PromotionChange", "compare_runs", "evaluate", "promote"]

log = logging.getLogger(__name__)

#: The columns `scanml compare` shows, in order: (MLflow column, header).
_COMPARE_COLUMNS = (
    ("tags.mlflow.runName", "run"),
    ("params.model.architecture", "backbone"),
    ("params.model.channels", "channels"),
    ("params.model.spacing_mm", "mm/px"),
    ("metrics.best/auroc", "auroc"),
    ("metrics.best/average_precision", "ap"),
    ("metrics.best/dr_at_far_1pct", "dr@1%far"),
    ("metrics.best/pointing_hit_rate", "pointing"),
    ("metrics.best/threshold", "threshold"),
    ("params.data.path", "data"),
    ("params.data.n_train", "n_train"),
)


@dataclass
class EvaluationReport:
    """The metrics of one model on one dataset split, and where they were logged."""

    model_uri: str
    data_dir: str
    split: str
    threshold: float
    metrics: ScanMetrics
    n_failed: int
    run_id: str | None
    seconds: float
    calibrated: bool = False
    files: dict[str, str] = field(default_factory=dict)
    cross_site: CrossSiteTable | None = None  # with calibrate_on

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_uri": self.model_uri,
            "data_dir": self.data_dir,
            "split": self.split,
            "threshold": self.threshold,
            "calibrated": self.calibrated,
            "n_failed": self.n_failed,
            "run_id": self.run_id,
            "seconds": round(self.seconds, 2),
            "metrics": self.metrics.to_flat_dict(),
            **({"cross_site": self.cross_site.to_dict()} if self.cross_site else {}),
        }

    def to_markdown(self) -> str:
        flat = self.metrics.to_flat_dict()
        overall = {key: value for key, value in flat.items() if not key.startswith("site/")}
        sites = sorted({key.split("/")[1] for key in flat if key.startswith("site/")})
        lines = [
            f"# Evaluation of `{self.model_uri}`",
            "",
            f"Data `{self.data_dir}`, split `{self.split}`; threshold {self.threshold:.4f}"
            f"{' (recalibrated)' if self.calibrated else ''}; {self.n_failed} unreadable scans; "
            f"MLflow run `{self.run_id}`.",
            "",
            "| metric | all | " + " | ".join(sites) + " |",
            "|---|---:|" + "---:|" * len(sites),
        ]
        for key, value in overall.items():
            per_site = [flat.get(f"site/{site}/{key}", float("nan")) for site in sites]
            lines.append(
                f"| {key} | {_fmt(value)} | " + " | ".join(_fmt(v) for v in per_site) + " |"
            )
        if self.cross_site is not None:
            lines += ["", self.cross_site.to_markdown().rstrip("\n")]
        return "\n".join(lines) + "\n"


def evaluate(
    model_uri: str,
    data_dir: str | Path,
    *,
    split: str = "test",
    out_dir: str | Path | None = None,
    calibrate_far: float | None = None,
    calibrate_on: str | None = None,
    experiment: str = "scanml-evaluation",
    device: str = "auto",
    progress: bool = True,
) -> EvaluationReport:
    """Score ``split`` of ``data_dir`` with the model, compute the metrics and log them.

    With ``calibrate_far`` the threshold is first recalibrated on the clean
    scans of the ``val`` split at that false-alarm rate and stored with the
    model (a local folder is rewritten; an MLflow model gets a new registered
    version carrying the new threshold).

    With ``calibrate_on`` (a site) the report adds, for every site, the
    false-alarm and detection rates of the stored threshold and of a
    threshold set at the model's target false-alarm rate (``calibrate_far``
    when given) on that site's clean scans: see :mod:`scanml.cross_site`.
    Nothing is stored for it.
    """
    started = time.perf_counter()
    bundle = ModelBundle.load(model_uri)
    stored_threshold = bundle.threshold
    predictor = Predictor(bundle, device=device)
    dataset = load_dataset(data_dir)
    if calibrate_on is not None and calibrate_on not in dataset.sites:
        raise ValueError(
            f"--calibrate-on {calibrate_on!r}: no such site in {data_dir} "
            f"(sites: {', '.join(dataset.sites)})"
        )
    if split != "all":
        dataset = assign_splits(dataset, val_fraction=0.2, test_fraction=0.1, seed=0)

    calibrated = False
    if calibrate_far is not None:
        val_outcomes, _ = _score_records(
            predictor, dataset.split("val").records, "calibration", progress
        )
        clean = [o.score for o in val_outcomes if o.label == 0]
        if not clean:
            raise ValueError(
                f"{data_dir}: no clean scans in the val split to calibrate the threshold on"
            )
        bundle.threshold = threshold_at_far(clean, calibrate_far)
        bundle.metadata.update(target_far=calibrate_far, calibration_scans=len(clean))
        calibrated = True

    records = dataset.records if split == "all" else dataset.split(split).records
    if not records:
        raise ValueError(f"{data_dir}: the {split!r} split holds no scans")
    outcomes, n_failed = _score_records(predictor, records, f"evaluating {split}", progress)
    metrics = compute_metrics(outcomes)
    cross_site = None
    if calibrate_on is not None:
        cross_site = cross_site_table(
            outcomes,
            calibrate_on,
            target_far=calibrate_far or float(bundle.metadata.get("target_far") or 0.01),
            stored_threshold=stored_threshold,
        )

    tracker = Tracker(resolve_tracking_uri(), experiment)
    run_id = tracker.start(
        run_name=f"evaluate {split}",
        tags=run_tags(
            {
                "scanml.model_uri": model_uri,
                "scanml.source_run_id": str(bundle.metadata.get("run_id")),
            }
        ),
    )
    tracker.log_params(
        {
            "model_uri": model_uri,
            "data.path": str(Path(data_dir).resolve()),
            "split": split,
            "threshold": bundle.threshold,
            "n_scans": len(records),
        }
    )
    tracker.log_metrics(
        {f"{split}/{key}": value for key, value in metrics.to_flat_dict().items()}, step=0
    )
    report = EvaluationReport(
        model_uri,
        str(data_dir),
        split,
        bundle.threshold,
        metrics,
        n_failed,
        run_id,
        time.perf_counter() - started,
        calibrated,
        cross_site=cross_site,
    )
    out = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="scanml-eval-"))
    report.files = _write_report(report, outcomes, out)
    for path in report.files.values():
        tracker.log_artifact(path, "evaluation")
    if calibrated:
        _store_threshold(bundle, model_uri, run_id, tracker, [str(r.path) for r in records[:1]])
    tracker.end()
    return report


def compare_runs(
    experiment: str = "scanml", *, metric: str = "val/auroc", limit: int = 20
) -> pd.DataFrame:
    """The finished runs of ``experiment`` side by side, best ``metric`` first."""
    mlflow.set_tracking_uri(resolve_tracking_uri())
    if MlflowClient().get_experiment_by_name(experiment) is None:
        return pd.DataFrame()
    runs = mlflow.search_runs(experiment_names=[experiment], max_results=max(limit * 5, 100))
    if runs.empty:
        return runs
    key = f"metrics.{metric}"
    if key not in runs:
        key = f"metrics.best/{metric.split('/', 1)[-1]}"
    table = pd.DataFrame({"run_id": runs["run_id"].str.slice(0, 12), "status": runs["status"]})
    for column, header in _COMPARE_COLUMNS:
        table[header] = runs.get(column, None)
    duration = (runs["end_time"] - runs["start_time"]).dt.total_seconds() / 60
    table["minutes"] = duration.round(1)
    table[metric] = runs[key] if key in runs else float("nan")
    table = table.loc[:, ~table.columns.duplicated()]
    return (
        table.sort_values(metric, ascending=False, na_position="last")
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
    target: str, *, name: str = "scanml-anomaly", alias: str = "champion"
) -> PromotionChange:
    """Point ``alias`` at a registered version, given as a version number or the run that logged it."""
    mlflow.set_tracking_uri(resolve_tracking_uri())
    client = MlflowClient()
    if target.isdigit():
        version = client.get_model_version(name, target)
    else:
        found = client.search_model_versions(f"name='{name}' and run_id='{target}'")
        if not found:
            raise ValueError(
                f"no version of registered model {name!r} was logged by run {target!r}"
            )
        version = max(found, key=lambda v: int(v.version))
    try:
        previous = client.get_model_version_by_alias(name, alias).version
    except MlflowException:
        previous = None
    client.set_registered_model_alias(name, alias, version.version)
    return PromotionChange(name, alias, str(version.version), previous, version.run_id)


# -- helpers ----------------------------------------------------------------------------


def _score_records(
    predictor: Predictor, records: Sequence[ScanRecord], description: str, progress: bool
) -> tuple[list[ScanOutcome], int]:
    outcomes, failed = [], 0
    for record in tqdm(records, desc=description, unit="scan", disable=not progress):
        try:
            scan = read_scan(record.path, spacing_mm=record.spacing_mm, site=record.site)
        except ScanReadError as exc:
            log.warning("skipping %s", exc)
            failed += 1
            continue
        outcomes.append(ScanOutcome.of(record, predictor.predict(scan)))
    return outcomes, failed


def _write_report(
    report: EvaluationReport, outcomes: Sequence[ScanOutcome], out: Path
) -> dict[str, str]:
    import matplotlib.pyplot as plt

    from scanml import plots

    out.mkdir(parents=True, exist_ok=True)
    files = {
        "markdown": out / "report.md",
        "json": out / "report.json",
        "scores": out / "scan_scores.csv",
    }
    files["markdown"].write_text(report.to_markdown())
    files["json"].write_text(json.dumps(report.to_dict(), indent=2, default=float))
    pd.DataFrame(
        [
            {"scan_id": o.scan_id, "site": o.site, "label": o.label, "score": o.score}
            for o in outcomes
        ]
    ).to_csv(files["scores"], index=False)
    for name, figure in (
        ("roc.png", plots.plot_roc(outcomes)),
        ("detection_rate_vs_false_alarms.png", plots.plot_dr_far(outcomes)),
    ):
        files[name] = out / name
        plots.save_figure(figure, files[name])
        plt.close(figure)
    return {key: str(path) for key, path in files.items()}


def _store_threshold(
    bundle: ModelBundle,
    model_uri: str,
    run_id: str | None,
    tracker: Tracker,
    example_paths: list[str],
) -> None:
    folder = Path(model_uri)
    if folder.is_dir():
        bundle.save(folder)
        log.info("stored threshold %.4f in %s", bundle.threshold, folder)
        return
    if run_id is None:
        log.warning(
            "MLflow is unreachable: the recalibrated threshold %.4f was not stored",
            bundle.threshold,
        )
        return
    name = (
        model_uri.removeprefix("models:/").split("/")[0].split("@")[0]
        if model_uri.startswith("models:/")
        else None
    )
    with tempfile.TemporaryDirectory(prefix="scanml-bundle-") as tmp:
        bundle.save(tmp)
        logged = log_model(
            tmp,
            run_id=run_id,
            tracking_uri=tracker.tracking_uri,
            registered_model=name,
            example_paths=example_paths,
        )
    log.info("recalibrated model logged as %s", logged.registry_uri)


def _fmt(value: float) -> str:
    return "n/a" if value != value else f"{value:.4f}" if isinstance(value, float) else str(value)
