"""Evaluate a model on whole scans, on the split it was trained without.

:func:`evaluate` scores a dataset split through the same Predictor as
scoring, computes the customs metrics (DR at fixed false-alarm rates,
pointing, region recall, per site), and logs them with plots, overlays and
a Markdown/JSON report to MLflow; the headline figures also go on the
registered model version. Comparing runs and promoting a model are
:mod:`scanml.runs`.

The split is the model's own: the fractions and seed it was trained with
(``ModelBundle.metadata["split"]``, or else its training run's parameters),
so a "test" scan is never one it learnt from. A model that records neither
is evaluated on a split drawn with the default fractions, with a warning.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from tqdm.auto import tqdm

from scanml.config import Config, DataConfig
from scanml.cross_site import CrossSiteTable, cross_site_table
from scanml.dataset import ScanDataset, ScanRecord, assign_splits, load_dataset
from scanml.fsutil import write_atomically, write_text_atomically
from scanml.io import ScanReadError, read_scan
from scanml.metrics import (
    ScanMetrics,
    ScanOutcome,
    ThresholdCalibration,
    calibrate_threshold,
    compute_metrics,
    variants_phrase,
)
from scanml.models import ModelBundle
from scanml.predict import Predictor
from scanml.pyfunc import log_model
from scanml.registry import ResolvedModel, resolve_model
from scanml.tracking import Tracker, resolve_tracking_uri, run_tags
from scanml.validation import chain_config, load_validation_scans, variant_scores

__all__ = ["EvaluationReport", "SplitSource", "evaluate", "model_split"]

log = logging.getLogger(__name__)

#: The figures copied onto the registered model version as tags ``<split>/<key>``.
_VERSION_TAG_METRICS = (
    "auroc",
    "average_precision",
    "dr_at_far_1pct",
    "far_at_dr_90pct",
    "pointing_hit_rate",
    "region_recall",
    "n_scans",
)


@dataclass(frozen=True)
class SplitSource:
    """The split fractions and seed a model was trained with, and where they were found."""

    val_fraction: float
    test_fraction: float
    seed: int
    source: str  # "model", "training run <id>" or "defaults"
    digest: str | None = None  # the training data's digest after splitting, when known

    def describe(self) -> str:
        return (
            f"val {self.val_fraction:g}, test {self.test_fraction:g}, seed {self.seed} "
            f"(from the {self.source})"
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
    split_source: SplitSource | None = None
    calibration: ThresholdCalibration | None = None
    model_version: str | None = None  # models:/NAME/VERSION the URI pointed at

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_uri": self.model_uri,
            "model_version": self.model_version,
            "data_dir": self.data_dir,
            "split": self.split,
            "split_source": self.split_source.__dict__ if self.split_source else None,
            "threshold": self.threshold,
            "calibrated": self.calibrated,
            "calibration": self.calibration.to_metadata() if self.calibration else None,
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
        version = f" ({self.model_version})" if self.model_version else ""
        split_line = f"; split {self.split_source.describe()}" if self.split_source else ""
        lines = [
            f"# Evaluation of `{self.model_uri}`{version}",
            "",
            f"Data `{self.data_dir}`, split `{self.split}`{split_line}; threshold "
            f"{self.threshold:.4f}{' (recalibrated)' if self.calibrated else ''}; "
            f"{self.n_failed} unreadable scans; MLflow run `{self.run_id}`.",
        ]
        if self.calibration is not None:
            lines += ["", f"Calibration: {self.calibration.describe()}."]
        lines += [
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
    calibration_variants: int | None = None,
    experiment: str = "scanml-evaluation",
    device: str = "auto",
    progress: bool = True,
    overlays: int = 4,
) -> EvaluationReport:
    """Score ``split`` of ``data_dir`` with the model, compute the metrics and log them.

    The split is drawn as the model's training drew it (:func:`model_split`).
    With ``calibrate_far`` the threshold is first recalibrated on the clean
    scans of the ``val`` split at that false-alarm rate and stored with the
    model (a local folder is rewritten; an MLflow model gets a new registered
    version carrying the new threshold). As in training, the clean scans are
    also redrawn through the model's acquisition chain
    (``validation.calibration_variants``, recorded in its bundle);
    ``calibration_variants`` overrides their count (0: none). ``overlays``: how many overlays
    (highest scores first, then missed anomalous scans) to draw with the
    annotated boxes beside the prediction.

    With ``calibrate_on`` (a site) the report adds, for every site, the
    false-alarm and detection rates of the stored threshold and of a
    threshold set at the model's target false-alarm rate (``calibrate_far``
    when given) on that site's clean scans: see :mod:`scanml.cross_site`.
    Nothing is stored for it.
    """
    started = time.perf_counter()
    resolved = resolve_model(model_uri)
    bundle = ModelBundle.load(model_uri)
    stored_threshold = bundle.threshold
    predictor = Predictor(bundle, device=device)
    dataset = load_dataset(data_dir)
    if calibrate_on is not None and calibrate_on not in dataset.sites:
        raise ValueError(
            f"--calibrate-on {calibrate_on!r}: no such site in {data_dir} "
            f"(sites: {', '.join(dataset.sites)})"
        )
    split_source = model_split(bundle, resolved)
    dataset = assign_splits(
        dataset,
        val_fraction=split_source.val_fraction,
        test_fraction=split_source.test_fraction,
        seed=split_source.seed,
    )
    if split_source.digest and split_source.digest != dataset.digest:
        warnings.warn(
            f"{data_dir} is not the data {model_uri} was trained on (digest "
            f"{dataset.digest[:12]} vs {split_source.digest[:12]}): its {split!r} split may "
            "hold scans like those it learnt from",
            UserWarning,
            stacklevel=2,
        )

    calibration = None
    if calibrate_far is not None:
        calibration = _calibrate(
            bundle, dataset, predictor, calibrate_far, calibration_variants, progress
        )
        if calibration is None:
            raise ValueError(
                f"{data_dir}: no clean scans in the val split to calibrate the threshold on"
            )
        bundle.threshold = calibration.threshold
        bundle.metadata.update(calibration.to_metadata())

    evaluated = dataset if split == "all" else dataset.split(split)
    records = evaluated.records
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
                "scanml.source_run_id": str(bundle.metadata.get("run_id") or resolved.run_id),
                **(
                    {"scanml.model_version": resolved.registry_uri} if resolved.registry_uri else {}
                ),
            }
        ),
        description=_run_description(resolved, data_dir, split, split_source, metrics),
    )
    tracker.log_params(
        {
            "model_uri": model_uri,
            "model_version": resolved.registry_uri,
            "data.path": str(Path(data_dir).resolve()),
            "split": split,
            "split.val_fraction": split_source.val_fraction,
            "split.test_fraction": split_source.test_fraction,
            "split.seed": split_source.seed,
            "split.source": split_source.source,
            "threshold": bundle.threshold,
            "n_scans": len(records),
            **(
                {f"calibration.{k}": v for k, v in calibration.to_metadata().items()}
                if calibration
                else {}
            ),
        }
    )
    tracker.log_dataset(evaluated, name=Path(data_dir).name, context="evaluation")
    flat = {f"{split}/{key}": value for key, value in metrics.to_flat_dict().items()}
    tracker.log_metrics(flat, step=0)
    report = EvaluationReport(
        model_uri,
        str(data_dir),
        split,
        bundle.threshold,
        metrics,
        n_failed,
        run_id,
        time.perf_counter() - started,
        calibration is not None,
        cross_site=cross_site,
        split_source=split_source,
        calibration=calibration,
        model_version=resolved.registry_uri,
    )
    out = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="scanml-eval-"))
    report.files = _write_report(report, outcomes, out)
    report.files.update(
        _write_overlays(predictor, records, outcomes, bundle, out / "overlays", overlays)
    )
    for key, path in report.files.items():
        tracker.log_artifact(
            path, "evaluation/overlays" if key.startswith("overlay:") else "evaluation"
        )
    if run_id is not None:
        _attach_to_version(resolved, flat, run_id, split, tracker.tracking_uri)
    if calibration is not None:
        _store_threshold(bundle, model_uri, run_id, tracker, [str(r.path) for r in records[:1]])
    tracker.end()
    return report


def model_split(bundle: ModelBundle, resolved: ResolvedModel | None = None) -> SplitSource:
    """The split fractions and seed the model was trained with.

    Looked up, in order, in the bundle (``metadata["split"]``, a mapping
    with ``val_fraction``, ``test_fraction``, ``seed`` and optionally
    ``digest``), then in the parameters of its training run
    (``data.val_fraction``, ``data.test_fraction``, ``seed``,
    ``data.digest``). A model with neither (logged by an older scanml, its
    run out of reach) gets the default fractions and seed, with a warning
    that its "test" scans may include training scans.
    """
    recorded = bundle.metadata.get("split")
    if isinstance(recorded, dict):
        try:
            return SplitSource(
                float(recorded["val_fraction"]),
                float(recorded["test_fraction"]),
                int(recorded["seed"]),
                "model",
                recorded.get("digest"),
            )
        except (KeyError, TypeError, ValueError):
            log.warning("the model's split record %r is incomplete; ignoring it", recorded)
    run_id = bundle.metadata.get("run_id") or (resolved.run_id if resolved else None)
    if run_id:
        try:
            params = MlflowClient(resolve_tracking_uri()).get_run(run_id).data.params
            return SplitSource(
                float(params["data.val_fraction"]),
                float(params["data.test_fraction"]),
                int(params["seed"]),
                f"training run {run_id}",
                params.get("data.digest"),
            )
        except (MlflowException, KeyError, ValueError, OSError) as exc:
            log.debug("no split parameters from run %s: %s", run_id, exc)
    defaults = DataConfig()
    warnings.warn(
        "the model records no split parameters and its training run is out of reach: "
        f"evaluating on a split drawn with the defaults (val {defaults.val_fraction}, test "
        f"{defaults.test_fraction}, seed 0), which may include scans it was trained on",
        UserWarning,
        stacklevel=2,
    )
    return SplitSource(defaults.val_fraction, defaults.test_fraction, 0, "defaults")


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


def _calibrate(
    bundle: ModelBundle,
    dataset: ScanDataset,
    predictor: Predictor,
    far: float,
    variants: int | None,
    progress: bool,
) -> ThresholdCalibration | None:
    """The threshold at ``far`` on the val split's clean scans, as training calibrates it.

    Each clean scan is read and prepared once: scored as it is, and (when
    the model records an acquisition chain and ``variants`` is not 0)
    redrawn through that chain. None when the split has no readable clean scan.
    """
    config = chain_config(bundle, variants)
    val = dataset.split("val")
    clean_set = replace(val, records=[r for r in val.records if r.label == 0])
    # No chain: the defaults only say "every scan" (data.max_val_scans is None).
    scans = load_validation_scans(clean_set, config or Config(), bundle.preprocessing)
    if not scans:
        return None
    clean = [
        predictor.predict_prepared(item.prepared).score
        for item in tqdm(scans, desc="calibration", unit="scan", disable=not progress)
    ]
    redrawn = (
        variant_scores(bundle, scans, device=predictor.device, config=config, progress=progress)
        if config is not None
        else []
    )
    return calibrate_threshold(clean, far, variant_scores=redrawn)


def _write_report(
    report: EvaluationReport, outcomes: Sequence[ScanOutcome], out: Path
) -> dict[str, str]:
    from scanml import plots

    files = {
        "markdown": out / "report.md",
        "json": out / "report.json",
        "scores": out / "scan_scores.csv",
    }
    write_text_atomically(files["markdown"], report.to_markdown())
    write_text_atomically(files["json"], json.dumps(report.to_dict(), indent=2, default=float))
    table = pd.DataFrame(
        [
            {"scan_id": o.scan_id, "site": o.site, "label": o.label, "score": o.score}
            for o in outcomes
        ]
    )
    write_atomically(files["scores"], lambda target: table.to_csv(target, index=False))
    for name, draw in (
        ("roc.png", plots.plot_roc),
        ("detection_rate_vs_false_alarms.png", plots.plot_dr_far),
    ):
        files[name] = plots.save_figure(draw(outcomes), out / name)
    return {key: str(path) for key, path in files.items()}


def _write_overlays(
    predictor: Predictor,
    records: Sequence[ScanRecord],
    outcomes: Sequence[ScanOutcome],
    bundle: ModelBundle,
    folder: Path,
    count: int,
) -> dict[str, str]:
    """Overlays with the annotated boxes: the highest scores, then missed anomalous scans.

    Scans are scored again here rather than keeping every heat map (a
    many-megapixel array per scan) for the few that are drawn.
    """
    from scanml.overlays import save_overlay

    if count <= 0:
        return {}
    by_id = {record.scan_id: record for record in records}
    ranked = sorted(outcomes, key=lambda o: o.score, reverse=True)
    missed = [o for o in reversed(ranked) if o.label == 1 and o.score <= bundle.threshold]
    chosen = list(
        dict.fromkeys(
            [o.scan_id for o in ranked[: max(1, count // 2)]] + [o.scan_id for o in missed]
        )
    )
    chosen = list(dict.fromkeys(chosen + [o.scan_id for o in ranked]))[:count]
    files = {}
    for scan_id in chosen:
        record = by_id[scan_id]
        scan = read_scan(record.path, spacing_mm=record.spacing_mm, site=record.site)
        prediction = predictor.predict(scan)
        path = save_overlay(
            scan,
            prediction,
            folder / f"{scan_id}.png",
            title=f"{scan_id} label={record.label} score={prediction.score:.3f}",
            heat_floor=bundle.region_threshold,
            true_boxes=[(b.x, b.y, b.w, b.h) for b in record.boxes],
        )
        files[f"overlay:{scan_id}"] = str(path)
    return files


def _attach_to_version(
    resolved: ResolvedModel,
    flat: dict[str, float],
    run_id: str,
    split: str,
    tracking_uri: str,
) -> None:
    """Copy the headline figures onto the registered version (tags and, in MLflow 3, metrics)."""
    if not resolved.registry_uri:
        return
    client = MlflowClient(tracking_uri)
    try:
        for key in _VERSION_TAG_METRICS:
            value = flat.get(f"{split}/{key}", math.nan)
            client.set_model_version_tag(
                resolved.name, resolved.version, f"{split}/{key}", _fmt(value)
            )
        client.set_model_version_tag(
            resolved.name, resolved.version, f"{split}/evaluation_run", run_id
        )
        model_id = getattr(
            client.get_model_version(resolved.name, resolved.version), "model_id", None
        )
        if model_id:
            now = int(time.time() * 1000)
            client.log_batch(
                run_id,
                metrics=[
                    Metric(key, float(value), now, 0, model_id=model_id)
                    for key, value in flat.items()
                    if not key.startswith(f"{split}/site/")
                ],
            )
    except MlflowException as exc:
        log.warning("could not attach the evaluation to %s: %s", resolved.registry_uri, exc)


def _run_description(
    resolved: ResolvedModel,
    data_dir: str | Path,
    split: str,
    split_source: SplitSource,
    metrics: ScanMetrics,
) -> str:
    return (
        f"Evaluation of {resolved} on the {split!r} split of {Path(data_dir).resolve()} "
        f"({metrics.n_scans} scans: {metrics.n_anomalous} anomalous, {metrics.n_clean} clean); "
        f"split {split_source.describe()}. AUROC {_fmt(metrics.auroc)}, "
        f"DR at 1 % FAR {_fmt(metrics.dr_at_far.get(0.01, math.nan))}."
    )


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
            description=f"{model_uri} with its threshold recalibrated by evaluation run {run_id}: "
            + _describe_calibration(bundle),
        )
    log.info("recalibrated model logged as %s", logged.registry_uri)


def _describe_calibration(bundle: ModelBundle) -> str:
    meta = bundle.metadata
    return (
        f"threshold {bundle.threshold:.4f} at {meta.get('target_far', math.nan):.2%} FAR on "
        f"{meta.get('calibration_scans', '?')} clean scans"
        + variants_phrase(meta.get("calibration_variant_scores", 0))
    )


def _fmt(value: float) -> str:
    return "n/a" if value != value else f"{value:.4f}" if isinstance(value, float) else str(value)
