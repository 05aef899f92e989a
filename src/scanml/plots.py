"""Metric figures for training runs and evaluation reports.

Curves (ROC, precision-recall, detection rate against false-alarm rate,
confusion matrix) are matplotlib :class:`~matplotlib.figure.Figure` objects
built without ``pyplot``: no global figure registry, no backend to choose,
nothing that could try to open a window on a server, and nothing left to
close. :func:`save_figure` writes them. The overlay analysts look at is
:mod:`scanml.overlays`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter
from sklearn.metrics import precision_recall_curve, roc_auc_score, roc_curve

from scanml.fsutil import write_atomically
from scanml.metrics import (
    ScanOutcome,
    confusion_at_threshold,
    detection_curve,
    detection_rate_at_far,
)

__all__ = [
    "plot_confusion",
    "plot_dr_far",
    "plot_pr",
    "plot_roc",
    "save_figure",
]

# The overlay moved to scanml.overlays; these names stay importable from
# here (lazily, see __getattr__) until every caller imports the new module.
_MOVED_TO_OVERLAYS = ("DISPLAY_MAX_ATTENUATION", "overlay_image", "save_overlay")

_FIGURE_SIZE = (6.0, 4.5)
_ALL_SCANS = "all"


def plot_roc(outcomes: Iterable[ScanOutcome]) -> Figure:
    """ROC curve of the scan scores, all scans and each site, AUROC in the legend."""
    figure, axes = _new_figure()
    for name, group in _groups(outcomes):
        labels, scores = _labels_and_scores(group)
        if np.unique(labels).size < 2:
            continue
        false_positive_rate, true_positive_rate, _ = roc_curve(labels, scores)
        area = roc_auc_score(labels, scores)
        axes.plot(
            false_positive_rate,
            true_positive_rate,
            **_line_style(name),
            label=f"{name} (AUROC {area:.3f}, n={len(group)})",
        )
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    axes.set(
        xlabel="false-alarm rate",
        ylabel="detection rate",
        title="ROC",
        xlim=(0, 1),
        ylim=(0, 1.01),
    )
    _finish(axes)
    return figure


def plot_pr(outcomes: Iterable[ScanOutcome]) -> Figure:
    """Precision against recall of the scan scores, all scans and each site."""
    figure, axes = _new_figure()
    for name, group in _groups(outcomes):
        labels, scores = _labels_and_scores(group)
        if np.unique(labels).size < 2:
            continue
        precision, recall, _ = precision_recall_curve(labels, scores)
        axes.step(
            recall,
            precision,
            where="post",
            **_line_style(name),
            label=f"{name} (anomalous {labels.mean():.1%}, n={len(group)})",
        )
    axes.set(
        xlabel="recall", ylabel="precision", title="Precision-recall", xlim=(0, 1), ylim=(0, 1.01)
    )
    _finish(axes)
    return figure


def plot_dr_far(
    outcomes: Iterable[ScanOutcome], *, fars: Sequence[float] = (0.005, 0.01, 0.05)
) -> Figure:
    """Detection rate against false-alarm rate on a log axis, the way customs read a detector.

    One line for all scans and one per site; markers sit at ``fars`` with
    the detection rate :func:`~scanml.metrics.compute_metrics` reports there.
    A FAR of zero cannot sit on a log axis, so each line starts at its
    first false alarm (``1 / n_clean``).
    """
    outcomes = list(outcomes)
    figure, axes = _new_figure()
    for name, group in _groups(outcomes):
        labels, scores = _labels_and_scores(group)
        clean, anomalous = scores[labels == 0], scores[labels == 1]
        if clean.size == 0 or anomalous.size == 0:
            continue
        curve = detection_curve(clean, anomalous)
        shown = curve.false_alarm_rate > 0
        style = _line_style(name)
        (line,) = axes.step(
            curve.false_alarm_rate[shown],
            curve.detection_rate[shown],
            where="post",
            **style,
            label=f"{name} (clean {clean.size}, anomalous {anomalous.size})",
        )
        rates = [detection_rate_at_far(clean, anomalous, far) for far in fars]
        axes.plot(fars, rates, marker="o", linestyle="none", color=line.get_color())
        if name == _ALL_SCANS:
            for far, rate in zip(fars, rates, strict=True):
                axes.annotate(
                    f"{rate:.0%}", (far, rate), textcoords="offset points", xytext=(4, -12)
                )
    for far in fars:
        axes.axvline(far, color="grey", linestyle=":", linewidth=1)
    axes.set_xscale("log")
    lowest = min(fars) / 5
    axes.set(
        xlabel="false-alarm rate (share of clean scans flagged)",
        ylabel="detection rate",
        title="Detection rate vs false-alarm rate",
        xlim=(lowest, 1.0),
        ylim=(0, 1.01),
    )
    axes.xaxis.set_major_locator(FixedLocator(_far_ticks(fars, lowest)))
    axes.xaxis.set_major_formatter(FuncFormatter(lambda rate, _: f"{rate * 100:g} %"))
    axes.xaxis.set_minor_formatter(NullFormatter())
    _finish(axes)
    return figure


def _far_ticks(fars: Sequence[float], lowest: float, min_gap_decades: float = 0.45) -> list[float]:
    """Labelled false-alarm rates: 1 % first, then ``fars``, then decades, none crowding another.

    On a log axis 0.5 % and 1 % (or 5 % and 10 %) sit 0.3 decades apart,
    closer than two labels fit; the rate customs quote (1 %) wins, and a
    later candidate is kept only ``min_gap_decades`` away from every kept one.
    """
    decades = [10.0**power for power in range(math.floor(math.log10(lowest)), 1)]
    kept: list[float] = []
    for rate in (0.01, *fars, *decades):
        if lowest <= rate <= 1.0 and all(
            abs(math.log10(rate / other)) >= min_gap_decades for other in kept
        ):
            kept.append(rate)
    return sorted(kept)


def plot_confusion(outcomes: Iterable[ScanOutcome], threshold: float) -> Figure:
    """Confusion matrix of the scans at ``threshold`` (flagged: ``score > threshold``)."""
    confusion = confusion_at_threshold(outcomes, threshold)
    matrix = confusion.as_matrix()
    figure, axes = _new_figure(size=(4.5, 4.0))
    axes.imshow(matrix, cmap="Blues")
    row_totals = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, row_totals, out=np.zeros(matrix.shape), where=row_totals > 0)
    for (row, column), count in np.ndenumerate(matrix):
        dark = count > matrix.max() / 2
        axes.text(
            column,
            row,
            f"{count}\n{shares[row, column]:.1%}",
            ha="center",
            va="center",
            color="white" if dark else "black",
        )
    axes.set(
        xticks=[0, 1],
        yticks=[0, 1],
        xticklabels=["not flagged", "flagged"],
        yticklabels=["clean", "anomalous"],
        xlabel="decision",
        ylabel="truth",
        title=f"Threshold {threshold:.4g}: DR {confusion.detection_rate:.1%},"
        f" FAR {confusion.false_alarm_rate:.2%}",
    )
    figure.tight_layout()
    return figure


def save_figure(figure: Figure, path: str | os.PathLike[str], *, dpi: int = 120) -> Path:
    """Write ``figure`` (format from the suffix, e.g. ``.png``) whole or not at all; returns the path."""
    path = Path(path)
    return write_atomically(
        path, lambda target: figure.savefig(target, dpi=dpi, format=path.suffix[1:])
    )


def __getattr__(name: str) -> Any:
    if name in _MOVED_TO_OVERLAYS:
        from scanml import overlays

        return getattr(overlays, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# -- curves -------------------------------------------------------------------------------


def _groups(outcomes: Iterable[ScanOutcome]) -> list[tuple[str, list[ScanOutcome]]]:
    """All scans first, then each site when there is more than one."""
    outcomes = list(outcomes)
    sites = sorted({outcome.site for outcome in outcomes})
    groups = [(_ALL_SCANS, outcomes)]
    if len(sites) > 1:
        groups += [(site, [o for o in outcomes if o.site == site]) for site in sites]
    return groups


def _labels_and_scores(group: Sequence[ScanOutcome]) -> tuple[np.ndarray, np.ndarray]:
    labels = np.array([outcome.label for outcome in group], dtype=np.int64)
    scores = np.array([outcome.score for outcome in group], dtype=np.float64)
    return labels, scores


def _line_style(name: str) -> dict[str, object]:
    """All scans as a thick black line; sites thinner, in the colour cycle."""
    if name == _ALL_SCANS:
        return {"color": "black", "linewidth": 2.0}
    return {"linewidth": 1.2, "alpha": 0.85}


def _new_figure(size: tuple[float, float] = _FIGURE_SIZE) -> tuple[Figure, Axes]:
    figure = Figure(figsize=size)
    return figure, figure.subplots()


def _finish(axes: Axes) -> None:
    axes.grid(True, which="both", alpha=0.3)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(loc="lower right", fontsize="small")
    else:
        axes.text(
            0.5,
            0.5,
            "undefined: needs clean and anomalous scans",
            ha="center",
            transform=axes.transAxes,
        )
    axes.figure.tight_layout()
