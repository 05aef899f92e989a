"""Figures render to real PNG files; the overlay shows the scan, the heat and the regions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from scanml.io import Scan
from scanml.metrics import ScanOutcome
from scanml.plots import (
    DISPLAY_MAX_ATTENUATION,
    overlay_image,
    plot_confusion,
    plot_dr_far,
    plot_pr,
    plot_roc,
    save_figure,
    save_overlay,
)
from scanml.predict import Prediction, Region

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


def scan_and_prediction(height: int = 200, width: int = 400) -> tuple[Scan, Prediction]:
    attenuation = np.zeros((2, height, width), dtype=np.float32)
    attenuation[0, :, width // 2 :] = DISPLAY_MAX_ATTENUATION + 1  # dense right half, high channel
    attenuation[1] = 1.0  # the low channel must not be what is shown
    heatmap = np.zeros((height, width), dtype=np.float32)
    heatmap[50:100, 50:150] = 0.95
    prediction = Prediction(
        score=0.95,
        flagged=True,
        heatmap=heatmap,
        regions=[Region(x=50.0, y=50.0, w=100.0, h=50.0, score=0.95, category="drugs")],
        dense_logits=np.zeros((5, height // 16, width // 16), dtype=np.float32),
        peak_xy=(60.0, 60.0),
    )
    return Scan(attenuation, (5.0, 5.0), ["high", "low"], {"scan_id": "s1"}), prediction


def test_overlay_shows_the_high_channel_through_a_fixed_window_with_heat_and_boxes() -> None:
    scan, prediction = scan_and_prediction()
    image = overlay_image(scan, prediction, title="s1 score 0.95")
    assert image.shape == (200, 400, 3) and image.dtype == np.uint8
    assert (image[180, 100] == 255).all()  # air is white
    assert (image[180, 300] == 0).all()  # beyond the window is black
    red, _, blue = image[75, 100].astype(int)  # inside the hot region: coloured
    assert red > 200 and blue < 120 and red - blue > 100
    assert (image[150, 100] == 255).all()  # no heat: untouched
    assert image[75, 50, 0] > 200 and image[75, 50, 1] < 100  # the box's left edge is red


def test_overlay_rejects_a_heat_map_of_another_size() -> None:
    scan, prediction = scan_and_prediction()
    prediction.heatmap = prediction.heatmap[:100]
    with pytest.raises(ValueError, match="heat map"):
        overlay_image(scan, prediction)


def test_save_overlay_writes_a_png(tmp_path: Path) -> None:
    scan, prediction = scan_and_prediction()
    path = save_overlay(scan, prediction, tmp_path / "overlays" / "s1.png", title="s1")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (400, 200) and image.mode == "RGB"
    assert list(path.parent.iterdir()) == [path]
