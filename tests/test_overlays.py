"""The overlay shows the scan, the heat, the regions, the peak of a flagged scan and the truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scanml.io import Scan
from scanml.overlays import (
    _PEAK_COLOUR,
    _TRUTH_COLOUR,
    DISPLAY_MAX_ATTENUATION,
    overlay_image,
    save_overlay,
)
from scanml.predict import Prediction, Region


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


def _pixels_of(image: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    return np.all(image == np.array(colour, dtype=np.uint8), axis=-1)


def test_a_flagged_scan_without_regions_shows_its_peak() -> None:
    scan, prediction = scan_and_prediction()
    prediction.regions = []  # the peak lies below the region threshold: no region formed
    prediction.peak_xy = (300.0, 120.0)
    ringed = _pixels_of(overlay_image(scan, prediction), _PEAK_COLOUR)
    rows, cols = np.nonzero(ringed)
    assert rows.size > 50  # a ring and a label, not a stray pixel
    assert abs(np.median(cols) - 300) < 40 and abs(np.median(rows) - 120) < 40

    prediction.flagged = False  # below the scan threshold: nothing to point at
    assert not _pixels_of(overlay_image(scan, prediction), _PEAK_COLOUR).any()


def test_a_peak_inside_a_region_is_not_ringed_twice() -> None:
    scan, prediction = scan_and_prediction()
    assert not _pixels_of(overlay_image(scan, prediction), _PEAK_COLOUR).any()


def test_true_boxes_are_drawn_beside_the_prediction() -> None:
    scan, prediction = scan_and_prediction()
    image = overlay_image(scan, prediction, true_boxes=[(200.0, 120.0, 60.0, 40.0)])
    truth = _pixels_of(image, _TRUTH_COLOUR)
    assert truth[120, 200:260].all() and truth[120:160, 200].all()  # top and left edges
    assert not _pixels_of(overlay_image(scan, prediction), _TRUTH_COLOUR).any()


def test_overlays_stay_importable_from_plots() -> None:
    from scanml import overlays, plots

    assert plots.save_overlay is overlays.save_overlay
    assert plots.overlay_image is overlays.overlay_image
