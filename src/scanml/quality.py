"""The detection-quality benchmark (``scanml bench --quality``, ``make bench-quality``).

What scanml exists for is detection on scans it has never seen, judged
the customs way: the detection rate at a fixed false-alarm rate. This
benchmark trains the default preset within its time budget on the
project's own simulated scans, then measures it on

- (a) ``in-distribution``: the held-out test split of the training data;
- (b) ``left-out site``: a simulated site (scanner profile) never trained on;
- (c) ``independent generator``: scans from a second scene and acquisition
  generator written independently of :mod:`scanml.synth`
  (``benchmarks/foreign_scans.py``), written as DICOM by another writer;

with every figure given with a 95 % bootstrap interval, beside a classical
floor (:class:`~scanml.baseline.LocalContrastDetector`) on the same scans,
and a learning curve from snapshots of the same run. The report goes to
``reports/quality.md`` (and ``.json``) and to the ``scanml-bench`` MLflow
experiment.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from scanml.baseline import LocalContrastDetector
from scanml.config import Config, load_config
from scanml.dataset import ScanDataset, ScanRecord, assign_splits, load_dataset
from scanml.fsutil import write_text_atomically
from scanml.io import Scan, ScanReadError, read_scan
from scanml.metrics import ScanOutcome, compute_metrics
from scanml.models import ModelBundle
from scanml.predict import Predictor
from scanml.visibility import VISIBILITY_BINS, scan_visibility, visibility_bin

__all__ = [
    "ModelComparison",
    "QualityReport",
    "bootstrap_metrics",
    "compare_models",
    "paired_difference",
    "run_quality_benchmark",
]

log = logging.getLogger(__name__)

# Minutes of training after which the learning curve is read.
CURVE_MINUTES = (5.0, 10.0, 20.0, 30.0)
FARS = (0.005, 0.01, 0.05)
HEADLINE = (
    ("auroc", "AUROC"),
    ("average_precision", "AP"),
    ("dr_at_0.5pct_far", "DR @ 0.5 % FAR"),
    ("dr_at_1pct_far", "DR @ 1 % FAR"),
    ("dr_at_5pct_far", "DR @ 5 % FAR"),
    ("far_at_threshold", "FAR at stored threshold"),
    ("pointing", "pointing"),
    ("region_recall", "region recall"),
)


@dataclass(frozen=True)
class Interval:
    """A point estimate with its 95 % bootstrap interval."""

    value: float
    low: float
    high: float

    def __str__(self) -> str:
        if math.isnan(self.value):
            return "n/a"
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"


@dataclass
class SetResult:
    """One detector on one test set."""

    name: str
    n_scans: int
    n_anomalous: int
    n_failed: int
    metrics: dict[str, Interval]
    # concealment -> (anomalous scans hidden that way, their metrics against every clean scan)
    by_concealment: dict[str, tuple[int, dict[str, Interval]]] = field(default_factory=dict)
    # anomalous scans paired with a clean twin; ``twin_metrics`` for them
    n_twin_pairs: int = 0
    # visibility bin (best threat CCR, :mod:`scanml.visibility`) -> (anomalous scans in it,
    # their metrics against every clean scan); only where the set pairs scans with twins
    by_visibility: dict[str, tuple[int, dict[str, Interval]]] = field(default_factory=dict)


@dataclass
class QualityReport:
    """Everything the benchmark measured, and how it was run."""

    config_path: str
    train_minutes: float
    budget_minutes: float | None
    epochs: int
    best_epoch: int
    threshold: float
    kept_epoch: int = 0
    keep: str = "best"
    bootstrap: int = 2000  # resamples behind each interval
    model: list[SetResult] = field(default_factory=list)
    baseline: list[SetResult] = field(default_factory=list)
    curve: list[tuple[float, int, list[SetResult]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    started: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        def results(items: list[SetResult]) -> list[dict[str, Any]]:
            return [
                {
                    "set": r.name,
                    "n_scans": r.n_scans,
                    "n_anomalous": r.n_anomalous,
                    "n_failed": r.n_failed,
                    "metrics": {k: vars(v) for k, v in r.metrics.items()},
                    "n_twin_pairs": r.n_twin_pairs,
                    "by_concealment": {
                        how: {"n_anomalous": n, "metrics": {k: vars(v) for k, v in m.items()}}
                        for how, (n, m) in r.by_concealment.items()
                    },
                    "by_visibility": {
                        ccr: {"n_anomalous": n, "metrics": {k: vars(v) for k, v in m.items()}}
                        for ccr, (n, m) in r.by_visibility.items()
                    },
                }
                for r in items
            ]

        return {
            "config": self.config_path,
            "started": self.started,
            "seconds": self.seconds,
            "train_minutes": self.train_minutes,
            "budget_minutes": self.budget_minutes,
            "epochs": self.epochs,
            "best_epoch": self.best_epoch,
            "kept_epoch": self.kept_epoch,
            "keep": self.keep,
            "threshold": self.threshold,
            "model": results(self.model),
            "baseline": results(self.baseline),
            "curve": [
                {"minutes": minutes, "epoch": epoch, "results": results(items)}
                for minutes, epoch, items in self.curve
            ],
            "notes": self.notes,
        }

    def to_markdown(self, command: str) -> str:
        lines = [
            "# Detection quality on scans from elsewhere",
            "",
            f"`{command}` — started {self.started}, took {self.seconds / 60:.1f} min "
            "on this machine (2 CPU cores, no GPU).",
            "",
            f"The default preset (`{self.config_path}`) trained for {self.train_minutes:.1f} min "
            f"(budget {self.budget_minutes} min for the epoch loop; {self.epochs} epochs; "
            f"`train.keep={self.keep}` kept epoch {self.kept_epoch}, the best validation was "
            f"epoch {self.best_epoch}); its stored threshold ({self.threshold:.4f}) was "
            "calibrated at 1 % FAR on the validation split. Every figure: the point estimate "
            f"and its 95 % bootstrap interval ({self.bootstrap:,} resamples of scans, clean and "
            "anomalous resampled separately). DR at a FAR uses the threshold at that FAR *on "
            "the set itself*; 'FAR at stored threshold' is what the model's own threshold gives "
            "there (target 0.01).",
            "",
        ]
        for title, items in (("Model (default preset)", self.model), ("Baseline", self.baseline)):
            lines += [f"## {title}", "", *_table(items), ""]
        if any(result.n_twin_pairs for result in self.model + self.baseline):
            lines += [
                "## Each anomalous scan against its clean twin",
                "",
                "Where a set pairs each anomalous scan with a clean twin (the same scene, load and "
                "acquisition without the threats: the independent generator's `twin` column), "
                "the share of pairs whose anomalous scan scores higher, and the share that score "
                "exactly the same (the scan's maximum lies where the threats changed nothing). "
                "A detector that sees the threats scores every anomalous scan above its twin; "
                "the scenes cannot help it here. 95 % bootstrap intervals over pairs.",
                "",
                *_twin_table([("model", self.model), ("baseline", self.baseline)]),
                "",
            ]
        if any(result.by_concealment for result in self.model):
            lines += [
                "## Where the model finds threats, by how they were hidden",
                "",
                "The anomalous scans with a threat hidden that way, against every clean scan of "
                "the set (a scan with threats hidden in two ways counts under both; the kinds are "
                "each set's own annotations).",
                "",
                *_concealment_table(self.model),
                "",
            ]
        if any(result.by_visibility for result in self.model):
            lines += [
                "## Where the model finds threats, by how visible they are",
                "",
                "Where a set pairs each anomalous scan with a clean twin, how visible its threats "
                "are, whatever the detector: a threat's contrast-to-clutter ratio (CCR) is the mean "
                "change it makes to the log attenuation over its footprint, on an 8 mm grid, over "
                "the standard deviation of the clean twin's fine structure around it (below ~0.5 "
                "a threat is fainter than the clutter around it). Each anomalous scan counts under "
                "its best threat's CCR, against every clean scan of the set; a scan whose twin is "
                "missing or has other pixels is left out.",
                "",
                *_visibility_table(self.model),
                "",
            ]
        lines += [
            "## Learning curve (same run, snapshots after N minutes of training)",
            "",
            "| minutes | epoch | set | AUROC | DR @ 1 % FAR | pointing |",
            "|---:|---:|---|---|---|---|",
        ]
        for minutes, epoch, items in self.curve:
            for result in items:
                m = result.metrics
                lines.append(
                    f"| {minutes:.1f} | {epoch} | {result.name} | {m['auroc']} | "
                    f"{m['dr_at_1pct_far']} | {m['pointing']} |"
                )
        lines += ["", "![learning curve](quality_curve.png)", ""]
        if self.notes:
            lines += ["## Notes", "", *[f"- {note}" for note in self.notes], ""]
        return "\n".join(lines)


def run_quality_benchmark(
    *,
    data_dir: str | Path,
    left_out_dir: str | Path,
    foreign_dir: str | Path,
    out_dir: str | Path = "reports",
    config_path: str | Path = "configs/default.yaml",
    overrides: Sequence[str] = (),
    curve_minutes: Sequence[float] = CURVE_MINUTES,
    bootstrap: int = 2000,
    progress: bool = True,
    command: str = "make bench-quality",
) -> QualityReport:
    """Train the preset on ``data_dir``, then measure it and the baseline on the three sets.

    ``left_out_dir`` holds a simulated site the training data lacks,
    ``foreign_dir`` the independent generator's scans (both a manifest and
    COCO annotations, every scan used as test data).
    """
    from scanml.train import train

    started = time.monotonic()
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    config = load_config(
        config_path,
        [
            "tracking.experiment=scanml-bench",
            "tracking.registered_model=null",
            f"tracking.run_name=quality-{datetime.now(UTC):%Y%m%d-%H%M%S}",
            "train.keep_epoch_models=true",
            *overrides,
        ],
    )
    result = train(config, data_dir, progress=progress)
    bundle = ModelBundle.load(result.bundle_dir)
    elapsed = _epoch_minutes(result.run_dir)

    sets = _test_sets(config, data_dir, left_out_dir, foreign_dir)
    scans = {name: _read_all(records) for name, records in sets.items()}

    report = QualityReport(
        config_path=str(config_path),
        train_minutes=elapsed[-1][1] if elapsed else math.nan,
        budget_minutes=config.train.time_budget_min,
        epochs=elapsed[-1][0] if elapsed else 0,
        best_epoch=result.best_epoch,
        kept_epoch=result.kept_epoch,
        keep=config.train.keep,
        threshold=bundle.threshold,
        started=stamp,
        bootstrap=bootstrap,
    )
    report.model = [
        _measure(name, loaded, _model_scorer(bundle), bundle.threshold, bootstrap, breakdown=True)
        for name, loaded in scans.items()
    ]

    baseline = LocalContrastDetector(spacing_mm=config.model.spacing_mm)
    calibration = _read_all([r for r in _split(config, data_dir, "val") if r.label == 0])
    baseline.calibrate([scan for _, scan in calibration.loaded], far=0.01)
    report.baseline = [
        _measure(name, loaded, baseline.outcome, baseline.threshold, bootstrap)
        for name, loaded in scans.items()
    ]

    for epoch, taken_at, folder in _curve_snapshots(elapsed, curve_minutes):
        model = ModelBundle.load(folder)
        report.curve.append(
            (
                taken_at,
                epoch,
                [
                    _measure(name, loaded, _model_scorer(model), model.threshold, bootstrap)
                    for name, loaded in scans.items()
                ],
            )
        )
    for name, loaded in scans.items():
        if loaded.failures:
            report.notes.append(
                f"{name}: {len(loaded.failures)} scans could not be read and are left out: "
                + "; ".join(loaded.failures[:3])
            )
    report.seconds = time.monotonic() - started
    _write(report, Path(out_dir), command)
    _log_to_mlflow(report, Path(out_dir), config)
    return report


# -- given models, side by side ------------------------------------------------------------

# The figures compared between models on the same scans.
PAIRED = (("auroc", "AUROC"), ("dr_at_1pct_far", "DR @ 1 % FAR"), ("pointing", "pointing"))


def paired_difference(
    outcomes: Sequence[ScanOutcome],
    reference: Sequence[ScanOutcome],
    *,
    n_resamples: int = 2000,
    seed: int = 0,
) -> dict[str, Interval]:
    """How far ``outcomes`` stand above ``reference`` on the same scans, with 95 % intervals.

    Both score the same scans in the same order. Each resample draws scans
    (clean and anomalous separately, as :func:`bootstrap_metrics` does) and
    measures both detectors on that draw, so what the scans do to both
    cancels: two models whose own intervals overlap widely can still differ
    clearly, and the difference of two runs of one recipe shows how much a
    lever must move to be seen on this set.
    """
    if [o.scan_id for o in outcomes] != [o.scan_id for o in reference]:
        raise ValueError("paired_difference: the two detectors did not score the same scans")
    labels = np.asarray([o.label for o in outcomes])
    clean, anomalous = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)

    def difference(index: np.ndarray) -> dict[str, float]:
        mine = _headline([outcomes[i] for i in index], math.inf)
        theirs = _headline([reference[i] for i in index], math.inf)
        return {key: mine[key] - theirs[key] for key, _ in PAIRED}

    point = difference(np.arange(len(outcomes)))
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {key: [] for key in point}
    for _ in range(n_resamples if len(clean) and len(anomalous) else 0):
        index = np.concatenate(
            [rng.choice(clean, size=len(clean)), rng.choice(anomalous, size=len(anomalous))]
        )
        for key, value in difference(index).items():
            samples[key].append(value)
    return {key: _percentile_interval(value, samples[key]) for key, value in point.items()}


def arm_difference(
    arms: Sequence[Sequence[Sequence[ScanOutcome]]],
    *,
    n_resamples: int = 2000,
    seed: int = 0,
) -> tuple[list[dict[str, Interval]], list[dict[str, Interval]]]:
    """Each arm's mean over its runs, and each arm after the first against the first.

    An arm is several runs of one recipe (``arms[a][r]``: run ``r`` of arm
    ``a``, every run scoring the same scans in the same order). Two runs of
    one recipe differ by more than a lever moves, so a lever is judged on
    the mean of its runs against the mean of the recipe's. Each resample
    draws the scans (clean and anomalous separately) and, within every arm,
    its runs with replacement: the intervals carry both the test set's
    sampling and the spread between runs (with three runs an arm, roughly).
    Returns ``(means, differences)``: ``means[a]`` and, for every arm after
    the first, ``differences[a - 1]``, keyed like :data:`PAIRED`.
    """
    runs = [list(arm) for arm in arms]
    if not runs or any(not arm for arm in runs):
        raise ValueError("arm_difference: every arm needs at least one run")
    order = [o.scan_id for o in runs[0][0]]
    if any([o.scan_id for o in run] != order for arm in runs for run in arm):
        raise ValueError("arm_difference: the runs did not score the same scans")
    labels = np.asarray([o.label for o in runs[0][0]])
    clean, anomalous = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)

    def arm_means(index: np.ndarray, picks: list[np.ndarray]) -> list[dict[str, float]]:
        means = []
        for arm, pick in zip(runs, picks, strict=True):
            figures = {r: _headline([arm[r][i] for i in index], math.inf) for r in set(pick)}
            means.append(
                {key: float(np.mean([figures[r][key] for r in pick])) for key, _ in PAIRED}
            )
        return means

    point = arm_means(np.arange(len(order)), [np.arange(len(arm)) for arm in runs])
    rng = np.random.default_rng(seed)
    drawn: list[list[dict[str, float]]] = []
    for _ in range(n_resamples if len(clean) and len(anomalous) else 0):
        index = np.concatenate(
            [rng.choice(clean, size=len(clean)), rng.choice(anomalous, size=len(anomalous))]
        )
        drawn.append(arm_means(index, [rng.integers(0, len(arm), len(arm)) for arm in runs]))

    means = [
        {key: _percentile_interval(point[a][key], [d[a][key] for d in drawn]) for key, _ in PAIRED}
        for a in range(len(runs))
    ]
    differences = [
        {
            key: _percentile_interval(
                point[a][key] - point[0][key], [d[a][key] - d[0][key] for d in drawn]
            )
            for key, _ in PAIRED
        }
        for a in range(1, len(runs))
    ]
    return means, differences


@dataclass
class Arm:
    """Several runs of one recipe in a :class:`ModelComparison`: its name and its models."""

    name: str
    models: list[int]  # indices into ModelComparison.models
    means: dict[str, dict[str, Interval]] = field(default_factory=dict)  # set -> figure
    against_first: dict[str, dict[str, Interval]] = field(default_factory=dict)


@dataclass
class ModelComparison:
    """Trained models measured on the same sets, and each against the first.

    ``results[i]`` holds model ``i``'s figures on every set, ``differences[i]``
    (for every model after the first) its :func:`paired_difference` against
    the first model on each set, by set name. ``arms``, when the models are
    runs of recipes, groups them (:func:`arm_difference`).
    """

    models: list[str]
    thresholds: list[float]
    bootstrap: int = 2000  # resamples behind each interval
    results: list[list[SetResult]] = field(default_factory=list)
    differences: list[dict[str, dict[str, Interval]]] = field(default_factory=list)
    arms: list[Arm] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    started: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "started": self.started,
            "seconds": self.seconds,
            "bootstrap": self.bootstrap,
            "models": [
                {
                    "model": model,
                    "threshold": threshold,
                    "results": [
                        {
                            "set": r.name,
                            "n_scans": r.n_scans,
                            "n_anomalous": r.n_anomalous,
                            "n_failed": r.n_failed,
                            "metrics": {k: vars(v) for k, v in r.metrics.items()},
                        }
                        for r in results
                    ],
                    "against_first": {
                        name: {k: vars(v) for k, v in diff.items()}
                        for name, diff in (self.differences[i - 1] if i else {}).items()
                    },
                }
                for i, (model, threshold, results) in enumerate(
                    zip(self.models, self.thresholds, self.results, strict=True)
                )
            ],
            "arms": [
                {
                    "name": arm.name,
                    "models": [i + 1 for i in arm.models],
                    "mean": {n: {k: vars(v) for k, v in d.items()} for n, d in arm.means.items()},
                    "against_first": {
                        n: {k: vars(v) for k, v in d.items()} for n, d in arm.against_first.items()
                    },
                }
                for arm in self.arms
            ],
            "notes": self.notes,
        }

    def to_markdown(self, command: str) -> str:
        labels = [f"{i + 1}" for i in range(len(self.models))]
        lines = [
            "# Detection quality of trained models, side by side",
            "",
            f"`{command}` — started {self.started}, took {self.seconds / 60:.1f} min.",
            "",
            "| model | URI | stored threshold |",
            "|---:|---|---:|",
            *[
                f"| {label} | `{model}` | {threshold:.4f} |"
                for label, model, threshold in zip(
                    labels, self.models, self.thresholds, strict=True
                )
            ],
            "",
            f"Every figure: the point estimate and its 95 % bootstrap interval ({self.bootstrap:,} "
            "resamples of scans, clean and anomalous resampled separately). DR at a FAR uses "
            "the threshold at that FAR on the set itself; 'FAR at stored threshold' is what "
            "each model's own threshold gives there.",
            "",
            "## Each model",
            "",
            *_table(
                [r for results in self.results for r in results],
                [
                    label
                    for label, results in zip(labels, self.results, strict=True)
                    for _ in results
                ],
            ),
            "",
        ]
        if len(self.models) > 1:
            lines += [
                "## Each model against model 1, on the same scans",
                "",
                "The difference (this model minus model 1) with a paired 95 % bootstrap interval: "
                "each resample scores both models on the same draw of scans, so an interval "
                "that excludes 0 is a difference this set can see.",
                "",
                "| model | set | "
                + " | ".join(f"{label} difference" for _, label in PAIRED)
                + " |",
                "|---:|---|" + "---|" * len(PAIRED),
            ]
            for label, differences in zip(labels[1:], self.differences, strict=True):
                for name, diff in differences.items():
                    cells = " | ".join(_signed(diff[key]) for key, _ in PAIRED)
                    lines.append(f"| {label} | {name} | {cells} |")
            lines.append("")
        if self.arms:
            lines += _arm_tables(self.arms, self.results)
        twins = [(f"model {label}", r) for label, r in zip(labels, self.results, strict=True)]
        if any(result.n_twin_pairs for _, results in twins for result in results):
            lines += [
                "## Each anomalous scan against its clean twin",
                "",
                *_twin_table(twins),
                "",
            ]
        flat = [r for results in self.results for r in results]
        who = [label for label, results in zip(labels, self.results, strict=True) for _ in results]
        if any(result.by_visibility for result in flat):
            lines += [
                "## By how visible the threats are (best threat CCR against the clean twin)",
                "",
                *_visibility_table(flat, who),
                "",
            ]
        if self.notes:
            lines += ["## Notes", "", *[f"- {note}" for note in self.notes], ""]
        return "\n".join(lines)


def compare_models(
    models: Sequence[str | Path],
    *,
    left_out_dir: str | Path,
    foreign_dir: str | Path,
    out_dir: str | Path = "reports",
    bootstrap: int = 2000,
    arms: Mapping[str, Sequence[int]] | None = None,
    progress: bool = True,
    command: str = "scanml bench --quality --model ...",
) -> ModelComparison:
    """Measure trained models, without training, on the sets none of them trained on.

    Each model (``runs:/``, ``models:/`` or a model folder) is scored on
    ``left_out_dir`` (b) and ``foreign_dir`` (c), read once for all, and
    measured as :func:`run_quality_benchmark` measures its own model (95 %
    intervals, twins, visibility), every model after the first also
    against the first on the same scans (:func:`paired_difference`). Written
    to ``out_dir``/``quality-models.md`` and ``.json``; nothing is trained or
    logged to MLflow. This is how a lever is judged: several runs of a recipe
    and of its change, on the same scans. ``arms`` names those groups (arm
    name -> indices into ``models``, the first arm the reference) and adds
    each arm's mean and its difference from the first (:func:`arm_difference`).
    """
    groups = {name: list(members) for name, members in (arms or {}).items()}
    for name, members in groups.items():
        if not members or any(not 0 <= i < len(models) for i in members):
            raise ValueError(f"arm {name!r}: {members} are not indices of the {len(models)} models")
    started = time.monotonic()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)  # fails now, not after the scoring
    report = ModelComparison(
        models=[str(m) for m in models],
        thresholds=[],
        bootstrap=bootstrap,
        started=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    )
    sets = {
        "(b) left-out site": _read_all(list(load_dataset(left_out_dir).records)),
        "(c) independent generator": _read_all(list(load_dataset(foreign_dir).records)),
    }
    every: list[dict[str, list[ScanOutcome]]] = []
    for i, model in enumerate(report.models):
        bundle = ModelBundle.load(model)
        report.thresholds.append(bundle.threshold)
        score = _model_scorer(bundle)
        results, differences, mine = [], {}, {}
        for name, data in sets.items():
            mine[name] = [
                score(record, scan)
                for record, scan in tqdm(
                    data.loaded, desc=f"model {i + 1} on {name}", unit="scan", disable=not progress
                )
            ]
            results.append(
                _summarise(name, data, mine[name], bundle.threshold, bootstrap, breakdown=True)
            )
            if i:
                differences[name] = paired_difference(
                    mine[name], every[0][name], n_resamples=bootstrap
                )
        every.append(mine)
        report.results.append(results)
        if i:
            report.differences.append(differences)
    for name, members in groups.items():
        report.arms.append(Arm(name, members))
    for name in sets if groups else ():
        means, against = arm_difference(
            [[every[i][name] for i in arm.models] for arm in report.arms], n_resamples=bootstrap
        )
        for arm, mean in zip(report.arms, means, strict=True):
            arm.means[name] = mean
        for arm, difference in zip(report.arms[1:], against, strict=True):
            arm.against_first[name] = difference
    for name, data in sets.items():
        if data.failures:
            report.notes.append(
                f"{name}: {len(data.failures)} scans could not be read and are left out: "
                + "; ".join(data.failures[:3])
            )
    report.seconds = time.monotonic() - started
    write_text_atomically(
        out / "quality-models.json", json.dumps(report.to_dict(), indent=2) + "\n"
    )
    write_text_atomically(out / "quality-models.md", report.to_markdown(command))
    return report


# -- test sets ---------------------------------------------------------------------------


@dataclass
class _Loaded:
    loaded: list[tuple[ScanRecord, Scan]]
    failures: list[str]
    # scan id -> best threat CCR, computed on first use (the data of a set never changes)
    _visibility: dict[str, float] | None = field(default=None, repr=False, compare=False)

    def visibility(self) -> dict[str, float]:
        """Each anomalous scan's best threat CCR against its clean twin, where it has one.

        :func:`scanml.visibility.scan_visibility`, computed once per set
        however many detectors and snapshots are measured on it; empty, and
        free, for a set without twins.
        """
        if self._visibility is None:
            clean = {record.scan_id for record, _ in self.loaded if record.label == 0}
            paired = any(
                record.label == 1 and str(record.extras.get("twin") or "") in clean
                for record, _ in self.loaded
            )
            self._visibility = scan_visibility(self.loaded) if paired else {}
        return self._visibility


def _test_sets(
    config: Config, data_dir: str | Path, left_out_dir: str | Path, foreign_dir: str | Path
) -> dict[str, list[ScanRecord]]:
    return {
        "(a) in-distribution test split": _split(config, data_dir, "test"),
        "(b) left-out site": list(load_dataset(left_out_dir).records),
        "(c) independent generator": list(load_dataset(foreign_dir).records),
    }


def _split(config: Config, data_dir: str | Path, name: str) -> list[ScanRecord]:
    """The records of one split exactly as training assigned them."""
    dataset: ScanDataset = assign_splits(
        load_dataset(data_dir),
        val_fraction=config.data.val_fraction,
        test_fraction=config.data.test_fraction,
        seed=config.seed,
    )
    return list(dataset.split(name).records)


def _read_all(records: Sequence[ScanRecord]) -> _Loaded:
    loaded, failures = [], []
    for record in records:
        try:
            loaded.append(
                (record, read_scan(record.path, spacing_mm=record.spacing_mm, site=record.site))
            )
        except ScanReadError as exc:
            failures.append(str(exc))
    return _Loaded(loaded, failures)


# -- measuring ---------------------------------------------------------------------------


def _model_scorer(bundle: ModelBundle) -> Callable[[ScanRecord, Scan], ScanOutcome]:
    predictor = Predictor(bundle)

    def outcome(record: ScanRecord, scan: Scan) -> ScanOutcome:
        return ScanOutcome.of(record, predictor.predict(scan))

    return outcome


def _measure(
    name: str,
    data: _Loaded,
    score: Callable[[ScanRecord, Scan], ScanOutcome],
    threshold: float,
    bootstrap: int,
    *,
    breakdown: bool = False,
) -> SetResult:
    """One detector on one set; with ``breakdown``, also per concealment kind and visibility."""
    outcomes = [score(record, scan) for record, scan in data.loaded]
    return _summarise(name, data, outcomes, threshold, bootstrap, breakdown=breakdown)


def _summarise(
    name: str,
    data: _Loaded,
    outcomes: Sequence[ScanOutcome],
    threshold: float,
    bootstrap: int,
    *,
    breakdown: bool = False,
) -> SetResult:
    """:func:`_measure` on outcomes already scored, one per scan of ``data`` in its order."""
    twins = twin_metrics([record for record, _ in data.loaded], outcomes, n_resamples=bootstrap)
    by_concealment: dict[str, tuple[int, dict[str, Interval]]] = {}
    by_visibility: dict[str, tuple[int, dict[str, Interval]]] = {}
    if breakdown:
        clean = [o for o in outcomes if o.label == 0]
        hidden: dict[str, list[ScanOutcome]] = {}
        for (record, _), outcome in zip(data.loaded, outcomes, strict=True):
            if outcome.label != 1:
                continue
            for kind in sorted({box.concealment for box in record.boxes if box.concealment}):
                hidden.setdefault(kind, []).append(outcome)
        for kind, found in sorted(hidden.items(), key=lambda item: (-len(item[1]), item[0])):
            by_concealment[kind] = (
                len(found),
                bootstrap_metrics(clean + found, threshold=threshold, n_resamples=bootstrap),
            )
        visibility = data.visibility()
        binned: dict[str, list[ScanOutcome]] = {}
        for outcome in outcomes:
            if outcome.label == 1 and outcome.scan_id in visibility:
                binned.setdefault(visibility_bin(visibility[outcome.scan_id]), []).append(outcome)
        for label, _, _ in VISIBILITY_BINS:
            if label in binned:
                by_visibility[label] = (
                    len(binned[label]),
                    bootstrap_metrics(
                        clean + binned[label], threshold=threshold, n_resamples=bootstrap
                    ),
                )
    return SetResult(
        name=name,
        n_scans=len(outcomes),
        n_anomalous=sum(o.label for o in outcomes),
        n_failed=len(data.failures),
        metrics={
            **bootstrap_metrics(outcomes, threshold=threshold, n_resamples=bootstrap),
            **twins.metrics,
        },
        by_concealment=by_concealment,
        n_twin_pairs=twins.n_pairs,
        by_visibility=by_visibility,
    )


def bootstrap_metrics(
    outcomes: Sequence[ScanOutcome],
    *,
    threshold: float,
    n_resamples: int = 2000,
    seed: int = 0,
) -> dict[str, Interval]:
    """The headline metrics with 95 % percentile-bootstrap intervals.

    Clean and anomalous scans are resampled separately (a stratified
    bootstrap), so every resample has the set's class balance and the DR at
    a FAR stays defined.
    """
    point = _headline(outcomes, threshold)
    clean = [o for o in outcomes if o.label == 0]
    anomalous = [o for o in outcomes if o.label == 1]
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {key: [] for key in point}
    for _ in range(n_resamples if clean and anomalous else 0):
        resample = [clean[i] for i in rng.integers(len(clean), size=len(clean))] + [
            anomalous[i] for i in rng.integers(len(anomalous), size=len(anomalous))
        ]
        for key, value in _headline(resample, threshold).items():
            samples[key].append(value)
    return {key: _percentile_interval(value, samples[key]) for key, value in point.items()}


@dataclass(frozen=True)
class TwinMetrics:
    """Anomalous scans against their clean twins: ``above_twin`` and ``equal_twin``."""

    n_pairs: int
    metrics: dict[str, Interval]


def twin_metrics(
    records: Sequence[ScanRecord],
    outcomes: Sequence[ScanOutcome],
    *,
    n_resamples: int = 2000,
    seed: int = 0,
) -> TwinMetrics:
    """Each anomalous scan against its clean twin, where the manifest pairs them.

    A record's ``twin`` (a manifest column) names a scan of the same scene
    without the threats. ``above_twin`` is the share of pairs whose
    anomalous scan scores higher, ``equal_twin`` the share that score the
    same; both with 95 % percentile-bootstrap intervals over pairs. Scenes
    cannot move either figure, only what the threats changed.
    """
    clean = {
        record.scan_id: outcome.score
        for record, outcome in zip(records, outcomes, strict=True)
        if outcome.label == 0
    }
    pairs = np.asarray(
        [
            (outcome.score, clean[twin])
            for record, outcome in zip(records, outcomes, strict=True)
            if outcome.label == 1 and (twin := str(record.extras.get("twin") or "")) in clean
        ],
        dtype=np.float64,
    ).reshape(-1, 2)
    if not len(pairs):
        return TwinMetrics(0, {})
    resamples = np.random.default_rng(seed).integers(len(pairs), size=(n_resamples, len(pairs)))
    metrics = {}
    for key, flags in (
        ("above_twin", pairs[:, 0] > pairs[:, 1]),
        ("equal_twin", pairs[:, 0] == pairs[:, 1]),
    ):
        shares = flags[resamples].mean(axis=1) if n_resamples else np.full(1, flags.mean())
        low, high = np.percentile(shares, [2.5, 97.5])
        metrics[key] = Interval(float(flags.mean()), float(low), float(high))
    return TwinMetrics(len(pairs), metrics)


def _percentile_interval(value: float, samples: Sequence[float]) -> Interval:
    """``value`` with the 95 % percentile interval of its resamples (NaN draws left out)."""
    finite = np.asarray([v for v in samples if not math.isnan(v)])
    low, high = np.percentile(finite, [2.5, 97.5]) if finite.size else (math.nan, math.nan)
    return Interval(float(value), float(low), float(high))


def _headline(outcomes: Sequence[ScanOutcome], threshold: float) -> dict[str, float]:
    # One site for all: the per-site breakdown is not what is resampled here.
    pooled = [ScanOutcome(**{**vars(o), "site": "all"}) for o in outcomes]
    metrics = compute_metrics(pooled, fars=FARS)
    clean = [o.score for o in outcomes if o.label == 0]
    return {
        "auroc": metrics.auroc,
        "average_precision": metrics.average_precision,
        "dr_at_0.5pct_far": metrics.dr_at_far[0.005],
        "dr_at_1pct_far": metrics.dr_at_far[0.01],
        "dr_at_5pct_far": metrics.dr_at_far[0.05],
        "far_at_threshold": float(np.mean(np.asarray(clean) > threshold)) if clean else math.nan,
        "pointing": metrics.pointing_hit_rate,
        "region_recall": metrics.region_recall,
    }


# -- snapshots of the run ----------------------------------------------------------------


def _epoch_minutes(run_dir: Path) -> list[tuple[int, float, Path]]:
    """(epoch, minutes of training when it ended, bundle folder) of every kept epoch."""
    found = []
    for folder in sorted((run_dir / "epochs").glob("epoch-*")):
        metadata = json.loads((folder / "model.json").read_text()).get("metadata", {})
        found.append((int(metadata["epoch"]), float(metadata["elapsed_min"]), folder))
    return found


def _curve_snapshots(
    elapsed: list[tuple[int, float, Path]], minutes: Sequence[float]
) -> list[tuple[int, float, Path]]:
    """The last snapshot taken by each of ``minutes`` within the run, and the final one."""
    picked = {}
    for limit in minutes:
        taken = [item for item in elapsed if item[1] <= limit + 1e-9]
        if taken and limit < elapsed[-1][1]:
            picked[taken[-1][0]] = taken[-1]
    if elapsed:
        picked[elapsed[-1][0]] = elapsed[-1]
    return [picked[epoch] for epoch in sorted(picked)]


# -- output ------------------------------------------------------------------------------


def _arm_tables(arms: list[Arm], results: list[list[SetResult]]) -> list[str]:
    """Each arm's mean over its runs, and each arm against the first."""
    lines = [
        "## Each arm: the mean of its runs",
        "",
        "An arm is several runs of one recipe. Each resample draws the scans (clean and "
        "anomalous separately) and, within every arm, its runs with replacement, so an "
        "interval carries both the set's sampling and the spread between runs of the recipe "
        "(roughly, with a few runs an arm).",
        "",
        "| arm | models | set | "
        + " | ".join(f"{label} (mean)" for _, label in PAIRED)
        + " | AUROC of each run |",
        "|---|---|---|" + "---|" * len(PAIRED) + "---|",
    ]
    for arm in arms:
        who = ", ".join(str(i + 1) for i in arm.models)
        for name, means in arm.means.items():
            each = ", ".join(
                f"{r.metrics['auroc'].value:.3f}"
                for i in arm.models
                for r in results[i]
                if r.name == name
            )
            cells = " | ".join(str(means[key]) for key, _ in PAIRED)
            lines.append(f"| {arm.name} | {who} | {name} | {cells} | {each} |")
    if len(arms) > 1:
        lines += [
            "",
            f"## Each arm against {arms[0].name}",
            "",
            f"The difference of the arms' means (this arm minus {arms[0].name}), with the "
            "interval of the same resamples: one that excludes 0 is a difference that neither "
            "the set's sampling nor the spread between runs explains.",
            "",
            "| arm | set | " + " | ".join(f"{label} difference" for _, label in PAIRED) + " |",
            "|---|---|" + "---|" * len(PAIRED),
        ]
        for arm in arms[1:]:
            for name, diff in arm.against_first.items():
                cells = " | ".join(_signed(diff[key]) for key, _ in PAIRED)
                lines.append(f"| {arm.name} | {name} | {cells} |")
    return [*lines, ""]


def _signed(interval: Interval) -> str:
    if math.isnan(interval.value):
        return "n/a"
    return f"{interval.value:+.3f} [{interval.low:+.3f}, {interval.high:+.3f}]"


def _table(items: list[SetResult], who: Sequence[str] = ()) -> list[str]:
    """The headline figures, one row per result; ``who`` (one per result) adds a model column."""
    first = "| model " if who else ""
    labels = " | ".join(label for _, label in HEADLINE)
    header = f"{first}| set | scans (anomalous) | {labels} |"
    rows = [header, ("|---" if who else "") + "|---|---:|" + "---|" * len(HEADLINE)]
    for i, result in enumerate(items):
        failed = f", {result.n_failed} unreadable" if result.n_failed else ""
        cells = " | ".join(str(result.metrics[key]) for key, _ in HEADLINE)
        lead = f"| {who[i]} " if who else ""
        rows.append(
            f"{lead}| {result.name} | {result.n_scans} ({result.n_anomalous}{failed}) | {cells} |"
        )
    return rows


def _concealment_table(items: list[SetResult]) -> list[str]:
    return _breakdown_table(items, "hidden", lambda result: result.by_concealment)


def _visibility_table(items: list[SetResult], who: Sequence[str] = ()) -> list[str]:
    return _breakdown_table(items, "best threat CCR", lambda result: result.by_visibility, who)


def _breakdown_table(
    items: list[SetResult],
    column: str,
    groups: Callable[[SetResult], dict[str, tuple[int, dict[str, Interval]]]],
    who: Sequence[str] = (),
) -> list[str]:
    """Each set's anomalous scans by group (``column``), against every clean scan.

    ``who`` (one per result) adds a model column.
    """
    first = "| model " if who else ""
    rows = [
        f"{first}| set | {column} | anomalous scans | AUROC | DR @ 1 % FAR | pointing |",
        ("|---" if who else "") + "|---|---|---:|---|---|---|",
    ]
    for i, result in enumerate(items):
        lead = f"| {who[i]} " if who else ""
        for group, (n, m) in groups(result).items():
            rows.append(
                f"{lead}| {result.name} | {group} | {n} | {m['auroc']} | "
                f"{m['dr_at_1pct_far']} | {m['pointing']} |"
            )
    return rows


def _twin_table(detectors: Sequence[tuple[str, list[SetResult]]]) -> list[str]:
    rows = [
        "| detector | set | pairs | anomalous scan above its twin | equal to its twin |",
        "|---|---|---:|---|---|",
    ]
    for who, items in detectors:
        for result in items:
            if result.n_twin_pairs:
                m = result.metrics
                rows.append(
                    f"| {who} | {result.name} | {result.n_twin_pairs} | {m['above_twin']} | "
                    f"{m['equal_twin']} |"
                )
    return rows


def _write(report: QualityReport, out_dir: Path, command: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "quality.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    _plot_curve(report, out_dir / "quality_curve.png")
    (out_dir / "quality.md").write_text(report.to_markdown(command))


def _plot_curve(report: QualityReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 3.8), constrained_layout=True)
    names = [r.name for r in report.model]
    for axis, key, label in (
        (axes[0], "auroc", "scan AUROC"),
        (axes[1], "dr_at_1pct_far", "detection rate at 1 % FAR"),
    ):
        for index, name in enumerate(names):
            points = [
                (minutes, next(r for r in items if r.name == name).metrics[key])
                for minutes, _, items in report.curve
            ]
            if not points:
                continue
            x = [p[0] for p in points]
            value = [p[1].value for p in points]
            low = [p[1].low for p in points]
            high = [p[1].high for p in points]
            color = f"C{index}"
            axis.plot(x, value, "o-", color=color, label=name)
            axis.fill_between(x, low, high, color=color, alpha=0.15)
            floor = next(r for r in report.baseline if r.name == name).metrics[key].value
            axis.axhline(floor, color=color, linestyle=":", linewidth=1)
        axis.set_xlabel("minutes of training")
        axis.set_ylabel(label)
        axis.set_ylim(0, 1.02)
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    axes[1].set_title("dotted: local-contrast baseline", fontsize=9)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _log_to_mlflow(report: QualityReport, out_dir: Path, config: Config) -> None:
    """One run in ``scanml-bench`` with every figure (interval bounds too) and the report."""
    from scanml.metrics import _UNSAFE_KEY_CHARS  # one definition of a safe metric key
    from scanml.tracking import Tracker, resolve_tracking_uri

    tracker = Tracker(
        resolve_tracking_uri(config.tracking.tracking_uri),
        "scanml-bench",
        max_retries=config.tracking.max_retries,
        timeout_s=config.tracking.timeout_s,
    )
    tracker.start(run_name=f"quality-{report.started}")
    status = "FAILED"
    try:
        metrics: dict[str, float] = {"quality/train_minutes": report.train_minutes}
        for who, items in (("model", report.model), ("baseline", report.baseline)):
            for result in items:
                set_key = _UNSAFE_KEY_CHARS.sub("", result.name.split(")")[0].strip("("))
                for key, interval in result.metrics.items():
                    base = f"quality/{who}/{set_key}/{key}"
                    if not math.isnan(interval.value):
                        metrics[base] = interval.value
                        metrics[f"{base}_low"] = interval.low
                        metrics[f"{base}_high"] = interval.high
        tracker.log_metrics(metrics, step=0)
        for name in ("quality.md", "quality.json", "quality_curve.png"):
            tracker.log_artifact(out_dir / name)
        status = "FINISHED"
    finally:
        tracker.end(status=status)
