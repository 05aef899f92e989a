"""Figures render to real PNG files, with labels a reader can read."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image
from sklearn.metrics import roc_auc_score

from scanml.metrics import ScanOutcome
from scanml.plots import plot_confusion, plot_dr_far, plot_pr, plot_roc, save_figure

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def outcomes() -> list[ScanOutcome]:
    rng = np.random.default_rng(0)
    return [
        ScanOutcome(
            scan_id=f"{site}-{index}",
            site=site,
            label=label,
            score=float(rng.normal(label * 1.5, 1.0)),
        )
        for site in ("antwerp", "rotterdam")
        for index, label in enumerate([0] * 150 + [1] * 30)
    ]


@pytest.mark.parametrize(
    "draw",
    [plot_roc, plot_pr, plot_dr_far, lambda outcomes: plot_confusion(outcomes, 0.5)],
    ids=["roc", "pr", "dr_far", "confusion"],
)
def test_figures_save_as_non_empty_png(draw, outcomes: list[ScanOutcome], tmp_path: Path) -> None:
    figure = draw(outcomes)
    assert isinstance(figure, Figure)
    path = save_figure(figure, tmp_path / "figures" / "plot.png")
    assert path.read_bytes().startswith(PNG_SIGNATURE)
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("L"))
    assert pixels.std() > 10  # lines and text, not a blank canvas
    assert list(path.parent.iterdir()) == [path]  # no temporary left behind


def test_dr_far_has_a_line_per_site_on_a_log_axis(outcomes: list[ScanOutcome]) -> None:
    axes = plot_dr_far(outcomes).axes[0]
    assert axes.get_xscale() == "log"
    labels = [line.get_label() for line in axes.get_lines()]
    assert sum(label.startswith(("all", "antwerp", "rotterdam")) for label in labels) == 3


def test_curves_of_one_class_say_undefined_instead_of_crashing(tmp_path: Path) -> None:
    clean_only = [ScanOutcome(f"s{i}", "santos", 0, i / 10) for i in range(10)]
    for draw in (plot_roc, plot_pr, plot_dr_far):
        figure = draw(clean_only)
        texts = [text.get_text() for text in figure.axes[0].texts]
        assert any("undefined" in text for text in texts)
        save_figure(figure, tmp_path / "one-class.png")


def test_dr_far_axis_reads_0_1_1_and_5_percent_without_overlap(
    outcomes: list[ScanOutcome], tmp_path: Path
) -> None:
    figure = plot_dr_far(outcomes)
    save_figure(figure, tmp_path / "dr_far.png")
    canvas = FigureCanvasAgg(figure)  # the renderer that wrote the PNG
    canvas.draw()
    axes = figure.axes[0]
    labels = [t for t in axes.get_xticklabels() if t.get_visible() and t.get_text()]
    low, high = axes.get_xlim()
    shown = [t for t in labels if low <= t.get_position()[0] <= high]
    texts = [t.get_text() for t in shown]
    assert texts[:3] == ["0.1 %", "1 %", "5 %"]
    boxes = [t.get_window_extent(canvas.get_renderer()) for t in shown]
    for left, right in itertools.pairwise(boxes):
        assert left.x1 + 2 < right.x0, f"tick labels overlap: {texts}"
    assert not [t for t in axes.xaxis.get_minorticklabels() if t.get_text()]


def test_roc_legend_gives_scikit_learn_auroc(outcomes: list[ScanOutcome]) -> None:
    labels = [o.label for o in outcomes]
    scores = [o.score for o in outcomes]
    legend = [line.get_label() for line in plot_roc(outcomes).axes[0].get_lines()]
    assert legend[0].startswith(f"all (AUROC {roc_auc_score(labels, scores):.3f}")
