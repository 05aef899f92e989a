"""Figures for evaluation reports and the overlay analysts look at.

Curves (ROC, precision-recall, detection rate against false-alarm rate,
confusion matrix) are matplotlib :class:`~matplotlib.figure.Figure` objects
built without ``pyplot``: no global figure registry, no backend to choose,
nothing that could try to open a window on a server, and nothing left to
close. :func:`save_figure` writes them.

The overlay is the picture an analyst opens for a flagged container, and
the scoring job writes one per flagged scan, so it is drawn with numpy and
Pillow alone: about 20 ms to draw a 3-megapixel scan (matplotlib would
take seconds), plus about 150 ms to encode it as PNG. It shows the scan as analysts see X-ray images, transmission-like
grey with dense cargo dark, through a *fixed* window on log-attenuation, so
the same cargo looks the same in every scan (a per-image min/max stretch
would make an empty container look as dense as a full one). The heat map is
blended in colour where it exceeds a floor and each region is boxed with
its category and score.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter
from PIL import Image, ImageDraw, ImageFont
from sklearn.metrics import precision_recall_curve, roc_curve

from scanml.metrics import (
    ScanOutcome,
    confusion_at_threshold,
    detection_curve,
    detection_rate_at_far,
)

if TYPE_CHECKING:
    from scanml.io import Scan
    from scanml.predict import Prediction, Region

__all__ = [
    "DISPLAY_MAX_ATTENUATION",
    "overlay_image",
    "plot_confusion",
    "plot_dr_far",
    "plot_pr",
    "plot_roc",
    "save_figure",
    "save_overlay",
]

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
_LABEL_TEXT_COLOUR = (255, 255, 255)

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
        area = np.trapezoid(true_positive_rate, false_positive_rate)
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
    axes.set(
        xlabel="false-alarm rate (share of clean scans flagged)",
        ylabel="detection rate",
        title="Detection rate vs false-alarm rate",
        xlim=(min(fars) / 5, 1.0),
        ylim=(0, 1.01),
    )
    axes.xaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=None))
    _finish(axes)
    return figure


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
    _write_atomically(path, lambda target: figure.savefig(target, dpi=dpi, format=path.suffix[1:]))
    return path


def overlay_image(
    scan: Scan,
    prediction: Prediction,
    *,
    title: str | None = None,
    heat_floor: float = DEFAULT_HEAT_FLOOR,
) -> np.ndarray:
    """The scan as analysts see it, with the heat map and the regions drawn on: uint8 RGB [H, W, 3].

    Dual-energy scans are shown through their high-energy channel (the one
    a single-energy scanner would record). The heat map (probabilities in
    the scan's pixels) is coloured yellow to red above ``heat_floor``; pass
    the model's region threshold to colour exactly where regions can form.
    """
    grey = _display_grey(scan)
    heatmap = np.asarray(prediction.heatmap, dtype=np.float32)
    if heatmap.shape != grey.shape:
        raise ValueError(f"heat map {heatmap.shape} does not match the scan's {grey.shape} pixels")
    image = Image.fromarray(_blend_heat(grey, heatmap, heat_floor))
    _draw_regions(image, prediction.regions)
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
) -> Path:
    """Write :func:`overlay_image` as a PNG, whole or not at all; returns the path.

    PNG compression level 1: a third of the default's time for files about
    10 % larger, which matters when a job writes thousands.
    """
    path = Path(path)
    image = Image.fromarray(overlay_image(scan, prediction, title=title, heat_floor=heat_floor))
    _write_atomically(path, lambda target: image.save(target, format="PNG", compress_level=1))
    return path


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


# -- overlay ------------------------------------------------------------------------------


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


# -- files ----------------------------------------------------------------------------------


def _write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary file beside ``path`` and rename it over ``path``.

    A killed job then leaves the old file or the new one, never half of one;
    the data is flushed to disk before the rename so that a power cut after
    the rename cannot leave an empty file under the final name either.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        write(partial)
        with partial.open("rb") as stream:
            os.fsync(stream.fileno())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
