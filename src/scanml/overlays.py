"""The overlay: the picture an analyst opens for a flagged container.

The scoring job writes one per flagged scan, so it is drawn with numpy and
Pillow alone: about 20 ms to draw a 3-megapixel scan (matplotlib would take
seconds), plus about 150 ms to encode it as PNG. It shows the scan as
analysts see X-ray images, transmission-like grey with dense cargo dark,
through a *fixed* window on log-attenuation, so the same cargo looks the
same in every scan (a per-image min/max stretch would make an empty
container look as dense as a full one). The heat map is blended in colour
where it exceeds a floor and each region is boxed with its category and
score.

A flagged scan always shows where its score came from: when no region
holds the heat map's peak (the peak lies below the region threshold, so no
region formed there), the peak is marked with a ring and its probability.
Validation and evaluation overlays also draw the annotated boxes
(``true_boxes``), in another colour, beside the prediction.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from scanml.fsutil import write_atomically

if TYPE_CHECKING:
    from scanml.io import Scan
    from scanml.metrics import Box
    from scanml.predict import Prediction, Region

__all__ = ["DEFAULT_HEAT_FLOOR", "DISPLAY_MAX_ATTENUATION", "overlay_image", "save_overlay"]

# The display window on log-attenuation: 0 (air) is white and this value
# (transmission e^-7, about 0.1 %) and beyond is black. Most cargo lies in
# A = 1..5, which the window spreads over most of the grey range, while
# near-impenetrable cargo, the analyst's other warning sign, stays black.
DISPLAY_MAX_ATTENUATION = 7.0

# Heat below this probability is not drawn; above it the colour fades in.
DEFAULT_HEAT_FLOOR = 0.5
# Opacity of the heat colour at probability 1: the cargo must stay visible under it.
_HEAT_MAX_OPACITY = 0.6
_BOX_COLOUR = (255, 40, 40)
_PEAK_COLOUR = (255, 140, 0)
_TRUTH_COLOUR = (0, 170, 255)
_LABEL_TEXT_COLOUR = (255, 255, 255)


def overlay_image(
    scan: Scan,
    prediction: Prediction,
    *,
    title: str | None = None,
    heat_floor: float = DEFAULT_HEAT_FLOOR,
    true_boxes: Sequence[Box] = (),
) -> np.ndarray:
    """The scan as analysts see it, with the heat map and the regions drawn on: uint8 RGB [H, W, 3].

    Dual-energy scans are shown through their high-energy channel (the one
    a single-energy scanner would record). The heat map (probabilities in
    the scan's pixels) is coloured yellow to red above ``heat_floor``; pass
    the model's region threshold to colour exactly where regions can form.
    A flagged scan whose peak lies in no region gets the peak ringed and
    labelled with its probability. ``true_boxes`` (``(x, y, w, h)``, the
    annotations) are drawn in blue, labelled ``truth``.
    """
    grey = _display_grey(scan)
    heatmap = np.asarray(prediction.heatmap, dtype=np.float32)
    if heatmap.shape != grey.shape:
        raise ValueError(f"heat map {heatmap.shape} does not match the scan's {grey.shape} pixels")
    image = Image.fromarray(_blend_heat(grey, heatmap, heat_floor))
    _draw_truth(image, true_boxes)
    _draw_regions(image, prediction.regions)
    if prediction.flagged and not _peak_in_a_region(prediction):
        _draw_peak(image, prediction.peak_xy, float(prediction.score))
    if title:
        _draw_label(ImageDraw.Draw(image), (0, 0), title, _font_for(image), (0, 0, 0))
    return np.asarray(image)


def save_overlay(
    scan: Scan,
    prediction: Prediction,
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
    heat_floor: float = DEFAULT_HEAT_FLOOR,
    true_boxes: Sequence[Box] = (),
) -> Path:
    """Write :func:`overlay_image` as a PNG, whole or not at all; returns the path.

    PNG compression level 1: a third of the default's time for files about
    10 % larger, which matters when a job writes thousands.
    """
    image = Image.fromarray(
        overlay_image(scan, prediction, title=title, heat_floor=heat_floor, true_boxes=true_boxes)
    )
    return write_atomically(path, lambda target: image.save(target, format="PNG", compress_level=1))


# -- drawing ------------------------------------------------------------------------------


def _display_grey(scan: Scan) -> np.ndarray:
    """uint8 [H, W]: 255 for air, 0 at :data:`DISPLAY_MAX_ATTENUATION` and beyond."""
    channel = scan.channels.index("high") if "high" in scan.channels else 0
    attenuation = scan.attenuation[channel]
    grey = np.empty(attenuation.shape, dtype=np.float32)
    np.clip(attenuation, 0.0, DISPLAY_MAX_ATTENUATION, out=grey)
    np.multiply(grey, -255.0 / DISPLAY_MAX_ATTENUATION, out=grey)
    np.add(grey, 255.5, out=grey)  # + 0.5 rounds on the cast
    return grey.astype(np.uint8)


def _blend_heat(grey: np.ndarray, heatmap: np.ndarray, floor: float) -> np.ndarray:
    """Grey as RGB, with the heat colour blended in where ``heatmap > floor``.

    Heat strength is quantised to 256 levels, so every (strength, grey)
    pair's blended colour fits a 256 x 256 table computed once,
    and blending a whole scan is one table lookup per pixel instead of
    float arithmetic on three channels.
    """
    strength = np.subtract(heatmap, floor, dtype=np.float32)
    np.multiply(strength, 255.0 / max(1.0 - floor, 1e-6), out=strength)
    np.clip(strength, 0.0, 255.0, out=strength)
    index = strength.astype(np.int32)
    index <<= 8
    index |= grey
    return _blend_table().take(index, axis=0)


@functools.cache
def _blend_table() -> np.ndarray:
    """uint8 [256 * 256, 3]: row ``strength * 256 + grey`` holds the blended RGB.

    Strength 0 (at or below the floor) leaves the grey untouched; the colour
    runs yellow (just above the floor) to red (certain), its opacity rising
    to :data:`_HEAT_MAX_OPACITY`.
    """
    levels = np.linspace(0.0, 1.0, 256, dtype=np.float32)
    colour = matplotlib.colormaps["autumn_r"](levels)[:, :3].astype(np.float32) * 255
    opacity = (levels * _HEAT_MAX_OPACITY)[:, None, None]
    grey = np.broadcast_to(np.arange(256, dtype=np.float32)[None, :, None], (256, 256, 3))
    blended = grey + opacity * (colour[:, None, :] - grey)
    return (blended + 0.5).astype(np.uint8).reshape(256 * 256, 3)


def _draw_regions(image: Image.Image, regions: Sequence[Region]) -> None:
    """A box per region, labelled ``category score`` above it (inside when at the top edge)."""
    draw = ImageDraw.Draw(image)
    font = _font_for(image)
    line_width = max(2, round(min(image.size) / 400))
    for region in regions:
        x0, y0 = float(region.x), float(region.y)
        x1, y1 = x0 + max(float(region.w), 1.0) - 1, y0 + max(float(region.h), 1.0) - 1
        draw.rectangle((x0, y0, x1, y1), outline=_BOX_COLOUR, width=line_width)
        text = f"{region.category} {float(region.score):.2f}"
        text_height = draw.textbbox((0, 0), text, font=font)[3]
        label_y = y0 - text_height - 2 if y0 >= text_height + 2 else y0 + line_width
        _draw_label(draw, (x0, label_y), text, font, _BOX_COLOUR)


def _draw_label(
    draw: ImageDraw.ImageDraw,
    corner: tuple[float, float],
    text: str,
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
    background: tuple[int, int, int],
) -> None:
    """``text`` in white on a filled rectangle whose top-left is ``corner``."""
    left, top, right, bottom = draw.textbbox(corner, text, font=font)
    draw.rectangle((left - 2, top - 1, right + 2, bottom + 1), fill=background)
    draw.text(corner, text, fill=_LABEL_TEXT_COLOUR, font=font)


def _font_for(image: Image.Image) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's bundled font, sized to stay legible on a scan shown to fit a screen."""
    return _font(max(11, round(min(image.size) / 50)))


@functools.cache
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _peak_in_a_region(prediction: Prediction) -> bool:
    x, y = prediction.peak_xy
    return any(r.x <= x <= r.x + r.w and r.y <= y <= r.y + r.h for r in prediction.regions)


def _draw_peak(image: Image.Image, peak_xy: tuple[float, float], probability: float) -> None:
    """A ring around the heat map's peak, labelled ``peak <probability>``."""
    draw = ImageDraw.Draw(image)
    font = _font_for(image)
    radius = max(12, round(min(image.size) / 25))
    line_width = max(2, round(min(image.size) / 400))
    x, y = peak_xy
    draw.ellipse(
        (x - radius, y - radius, x + radius, y + radius), outline=_PEAK_COLOUR, width=line_width
    )
    draw.line((x - radius / 3, y, x + radius / 3, y), fill=_PEAK_COLOUR, width=line_width)
    draw.line((x, y - radius / 3, x, y + radius / 3), fill=_PEAK_COLOUR, width=line_width)
    text = f"peak {probability:.2f}"
    _, _, text_width, text_height = draw.textbbox((0, 0), text, font=font)
    top = y - radius - text_height - 2
    left = min(max(x - radius, 2.0), image.size[0] - text_width - 2)
    _draw_label(draw, (left, top if top >= 0 else y + radius + 2), text, font, _PEAK_COLOUR)


def _draw_truth(image: Image.Image, true_boxes: Sequence[Box]) -> None:
    """The annotated boxes, labelled ``truth`` below them (inside when at the bottom edge)."""
    draw = ImageDraw.Draw(image)
    font = _font_for(image)
    line_width = max(2, round(min(image.size) / 400))
    for x, y, w, h in true_boxes:
        x0, y0 = float(x), float(y)
        x1, y1 = x0 + max(float(w), 1.0) - 1, y0 + max(float(h), 1.0) - 1
        draw.rectangle((x0, y0, x1, y1), outline=_TRUTH_COLOUR, width=line_width)
        text_height = draw.textbbox((0, 0), "truth", font=font)[3]
        label_y = y1 + 2 if y1 + text_height + 4 < image.size[1] else y1 - text_height - line_width
        _draw_label(draw, (x0, label_y), "truth", font, _TRUTH_COLOUR)
