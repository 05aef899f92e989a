"""Whole-scan inference: a scan in; a scan score, a heat map and regions out.

The network is fully convolutional, so a whole scan goes through it in one
pass and every pixel is computed once, instead of once per overlapping
sliding window. A scan too large for one pass is cut into blocks that
overlap by the network's receptive field; keeping only the centre of each
block's output makes the stitched dense logits equal to the single pass's
(no seams), so ``max_block_pixels`` is a memory knob that never changes a
score.

Outputs, in the scan's own pixels (the model grid exists only inside):

- ``score``: the maximum over locations of the anomaly probability. No
  smoothing first: each dense logit already pools a receptive field of
  hundreds of pixels, and smoothing would lower the peak of a small
  object's response and move it off the object;
- ``heatmap``: the dense probabilities, bilinearly interpolated with each
  output cell placed at its true centre on the input (see
  :class:`~scanml.models.OutputGrid`), not at the centre of a stride-sized
  square;
- ``regions``: the connected components of the dense probability map at
  the bundle's ``region_threshold``, as boxes.

:func:`scanml.bench_inference.inference_benchmark` measures the point of it
all: whole-scan inference against the naive sliding window (``scanml bench``
and ``benchmarks/bench_inference.py`` report it).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from scanml.device import resolve_device
from scanml.io import Scan
from scanml.models import ModelBundle, OutputGrid
from scanml.preprocess import PreparedScan, prepare_scan, scale_box

__all__ = ["Prediction", "Predictor", "Region", "eval_mode"]


@dataclass(frozen=True)
class Region:
    """A suspicious region: a COCO ``[x, y, w, h]`` box in the scan's pixels.

    ``score`` is the highest anomaly probability inside; ``category`` the
    class whose mean logit over the region is highest.
    """

    x: float
    y: float
    w: float
    h: float
    score: float
    category: str


@dataclass
class Prediction:
    """One scan's result; every coordinate is in the scan's pixels (x = column, y = row)."""

    score: float  # max anomaly probability over the scan
    flagged: bool  # score > the bundle's threshold (strictly, as scanml.metrics counts)
    heatmap: np.ndarray  # float32 [H, W] anomaly probabilities
    regions: list[Region]  # by decreasing score
    dense_logits: np.ndarray  # float32 [1 + K, h, w] on the model's output grid
    peak_xy: tuple[float, float]  # the heat map's maximum: the pointing metric's guess


class Predictor:
    """Scores scans with a model bundle: ``Predictor(bundle).predict(scan)``.

    ``device`` is ``"cpu"``, ``"cuda"``, ``"cuda:1"``... or ``"auto"`` (CUDA
    when there is one). ``max_block_pixels`` bounds the model-grid pixels of
    one forward pass (memory); larger images go blockwise with the same
    result. ``block_overlap`` (model-grid pixels shared by neighbouring
    blocks) defaults to the receptive field, which is what makes blockwise
    exact; a smaller value is faster but leaves seams. ``batch_size`` stacks
    that many equal-sized blocks (of one scan or of several scans in
    :meth:`predict_batch`) into one forward pass. ``amp`` runs the network
    under bfloat16 autocast: off by default because the calibrated
    threshold must see the numbers it was calibrated on (bf16 moves logits
    by about a per cent), and on this CPU it saves only ~15 %.

    The bundle's network is moved to ``device`` and put in eval mode only
    while predicting (its training flag is restored), so the training loop
    can validate with its live network.
    """

    def __init__(
        self,
        bundle: ModelBundle,
        *,
        device: str | torch.device = "cpu",
        max_block_pixels: int = 4_000_000,
        block_overlap: int | None = None,
        batch_size: int = 1,
        amp: bool = False,
    ) -> None:
        if batch_size < 1 or max_block_pixels < 1:
            raise ValueError("batch_size and max_block_pixels must be positive")
        self.bundle = bundle
        self.device = resolve_device(device)
        self.network = bundle.network.to(self.device)
        self.max_block_pixels = max_block_pixels
        self.batch_size = batch_size
        self.amp = amp
        grid = self.network.grid
        # Half the overlap on each side of a block's kept centre: the
        # receptive field's half-width plus where the cell sits in it,
        # rounded up to whole cells so blocks stay on the output grid.
        half_overlap = (
            grid.receptive_field / 2 + grid.offset if block_overlap is None else block_overlap / 2
        )
        self.block_margin = math.ceil(half_overlap / grid.stride) * grid.stride

    def predict(self, scan: Scan) -> Prediction:
        """Score one scan."""
        return self.predict_batch([scan])[0]

    def predict_batch(self, scans: Sequence[Scan]) -> list[Prediction]:
        """Score several scans; equal-sized blocks share forward passes (``batch_size``)."""
        return self._predict_prepared([self.prepare(scan) for scan in scans])

    def prepare(self, scan: Scan) -> PreparedScan:
        """The scan on this model's grid: what :meth:`predict_prepared` takes.

        For a scan scored more than once (validation every epoch) or
        decoded elsewhere (the scoring job's worker processes, which call
        :func:`~scanml.preprocess.prepare_scan` with the bundle's preprocessing).
        """
        return prepare_scan(scan, self.bundle.preprocessing)

    def predict_prepared(self, scan: PreparedScan) -> Prediction:
        """Score a prepared scan, reporting in its own pixels (``shape_hw``, ``spacing_mm``)."""
        return self._predict_prepared([scan])[0]

    def _predict_prepared(self, scans: Sequence[PreparedScan]) -> list[Prediction]:
        denses = self._dense_logits([np.asarray(s.image, dtype=np.float32) for s in scans])
        return [
            self._interpret(dense, *self._scan_grid(prepared))
            for dense, prepared in zip(denses, scans, strict=True)
        ]

    def predict_array(
        self,
        prepared: np.ndarray,
        *,
        scan_shape_hw: Sequence[int] | None = None,
        scan_spacing_mm: Sequence[float] | None = None,
    ) -> Prediction:
        """Score an image already on the model grid (float32 [C, H', W'], from ``prepare``).

        :meth:`predict_prepared` takes the same with its scan's grid attached.

        Outputs are on the model grid, or in the pixels of the scan it was
        prepared from when that scan's shape and (row, column) spacing are given.
        """
        if (scan_shape_hw is None) != (scan_spacing_mm is None):
            raise ValueError("give both scan_shape_hw and scan_spacing_mm, or neither")
        return self.predict_prepared(
            PreparedScan("", prepared, shape_hw=scan_shape_hw, spacing_mm=scan_spacing_mm)
        )

    def _scan_grid(self, prepared: PreparedScan) -> tuple[Sequence[int], Sequence[float]]:
        """The pixels a prepared scan's outputs are reported in: the scan's, else the model grid's."""
        if prepared.shape_hw is None or prepared.spacing_mm is None:
            model_spacing = self.bundle.preprocessing.spacing_mm
            return prepared.image.shape[-2:], (model_spacing, model_spacing)
        return prepared.shape_hw, prepared.spacing_mm

    # -- the network ----------------------------------------------------------------------

    def _dense_logits(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Dense logits [1 + K, h, w] per image, each the same as one whole-image pass."""
        plans = [self._plan(image.shape[-2:]) for image in images]
        by_shape: dict[tuple[int, int], list[_Block]] = {}
        for index, (row_spans, col_spans) in enumerate(plans):
            for rows in row_spans:
                for cols in col_spans:
                    block = _Block(index, rows, cols)
                    by_shape.setdefault(block.shape, []).append(block)
        tensors = [torch.from_numpy(image) for image in images]
        kept: dict[_Block, torch.Tensor] = {}
        with eval_mode(self.network), torch.inference_mode():
            for same_shape in by_shape.values():
                for first in range(0, len(same_shape), self.batch_size):
                    batch = same_shape[first : first + self.batch_size]
                    dense = self._forward(torch.stack([b.cut(tensors[b.image]) for b in batch]))
                    kept.update((b, b.keep(d)) for b, d in zip(batch, dense, strict=True))
        return [
            torch.cat(
                [
                    torch.cat([kept[_Block(index, rows, cols)] for cols in col_spans], dim=-1)
                    for rows in row_spans
                ],
                dim=-2,
            ).numpy()
            for index, (row_spans, col_spans) in enumerate(plans)
        ]

    def _forward(self, blocks: torch.Tensor) -> torch.Tensor:
        """Dense logits of a batch of blocks, back on the CPU in float32.

        Channels-last input lets oneDNN and cuDNN pick their fastest
        convolutions (~25 % faster on CPU) without touching the network.
        """
        blocks = blocks.to(self.device, memory_format=torch.channels_last, non_blocking=True)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            dense = self.network(blocks)
        return dense.float().cpu()

    def _plan(self, shape_hw: Sequence[int]) -> tuple[list[_Span], list[_Span]]:
        """Row and column spans of the blocks for an image of ``shape_hw`` model-grid pixels."""
        height, width = (int(n) for n in shape_hw)
        if height * width <= self.max_block_pixels:
            return [_Span(0, height)], [_Span(0, width)]
        # Split only the axes that must be: a long, low container scan is cut
        # along its length into full-height blocks.
        side = math.isqrt(self.max_block_pixels)
        if height <= side:
            block_h, block_w = height, self.max_block_pixels // height
        elif width <= side:
            block_h, block_w = self.max_block_pixels // width, width
        else:
            block_h = block_w = side
        return self._spans(height, block_h), self._spans(width, block_w)

    def _spans(self, length: int, block: int) -> list[_Span]:
        """Blocks along one axis: inputs overlapping by two margins, kept centres tiling the axis.

        Block starts are multiples of the stride so every block's cells are
        cells of the whole image's grid. A block is never shorter than four
        margins: below that the overlap would cost more than it saves, so
        exactness wins over the memory budget.
        """
        if length <= block:
            return [_Span(0, length)]
        stride, margin = self.network.grid.stride, self.block_margin
        core = max(block // stride * stride - 2 * margin, 2 * margin, stride)
        spans = []
        for begin in range(0, length, core):
            start = max(0, begin - margin)
            first_cell = (begin - start) // stride
            if begin + core + margin >= length:  # this block reaches the end: it keeps the rest
                spans.append(_Span(start, length, first_cell))
                break
            spans.append(
                _Span(start, begin + core + margin, first_cell, first_cell + core // stride)
            )
        return spans

    # -- from dense logits to the scan's pixels -------------------------------------------

    def _interpret(
        self, dense: np.ndarray, scan_shape_hw: Sequence[int], scan_spacing_rc: Sequence[float]
    ) -> Prediction:
        grid = self.network.grid
        model_spacing = self.bundle.preprocessing.spacing_mm
        # Model-grid pixels per scan pixel, per axis (x_model = x_scan * scale).
        scale_rc = (scan_spacing_rc[0] / model_spacing, scan_spacing_rc[1] / model_spacing)
        probability = _sigmoid(dense[0])
        heatmap = _heatmap(probability, grid, scan_shape_hw, scale_rc)
        peak_row, peak_col = np.unravel_index(int(np.argmax(dense[0])), dense[0].shape)
        peak_xy = (
            (grid.offset + grid.stride * peak_col) / scale_rc[1],
            (grid.offset + grid.stride * peak_row) / scale_rc[0],
        )
        # The score in float64 from the peak logit: float32 probabilities
        # saturate at 1.0 from a logit of ~17, which would tie the scans an
        # analyst most needs ranked.
        score = 0.5 * (1.0 + math.tanh(0.5 * float(dense[0].max())))
        # A flagged scan always shows where its score came from: when its
        # peak stays under the region level, regions are cut at the peak's.
        region_level = self.bundle.region_threshold
        if score > self.bundle.threshold:
            region_level = min(region_level, float(probability.max()))
        regions = _regions(
            probability,
            dense[1:],
            threshold=region_level,
            class_names=self.bundle.class_names,
            grid=grid,
            model_spacing=model_spacing,
            scan_shape_hw=scan_shape_hw,
            scan_spacing_rc=scan_spacing_rc,
        )
        return Prediction(
            score=score,
            flagged=score > self.bundle.threshold,
            heatmap=heatmap,
            regions=regions,
            dense_logits=dense,
            peak_xy=(float(peak_xy[0]), float(peak_xy[1])),
        )


# -- helpers ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Span:
    """A block along one axis: input pixels [start, stop) and the output cells kept from it.

    ``keep_stop`` None keeps the cells to the end of the block's output.
    """

    start: int
    stop: int
    keep_start: int = 0
    keep_stop: int | None = None


@dataclass(frozen=True)
class _Block:
    """One forward pass's share of image ``image``: its input and the cells kept from its output."""

    image: int
    rows: _Span
    cols: _Span

    @property
    def shape(self) -> tuple[int, int]:
        return (self.rows.stop - self.rows.start, self.cols.stop - self.cols.start)

    def cut(self, image: torch.Tensor) -> torch.Tensor:
        return image[:, self.rows.start : self.rows.stop, self.cols.start : self.cols.stop]

    def keep(self, dense: torch.Tensor) -> torch.Tensor:
        rows, cols = self.rows, self.cols
        return dense[:, rows.keep_start : rows.keep_stop, cols.keep_start : cols.keep_stop]


@contextlib.contextmanager
def eval_mode(network: torch.nn.Module) -> Iterator[None]:
    """Eval mode (batch-norm statistics frozen, no dropout) for the block, then back."""
    was_training = network.training
    network.eval()
    try:
        yield
    finally:
        network.train(was_training)


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    return (0.5 * (1.0 + np.tanh(0.5 * logits))).astype(np.float32)


def _heatmap(
    probability: np.ndarray,
    grid: OutputGrid,
    scan_shape_hw: Sequence[int],
    scale_rc: tuple[float, float],
) -> np.ndarray:
    """Bilinear interpolation of the dense map at the centre of every scan pixel: [H, W].

    Separable, as two small matrix products (each row of an interpolation
    matrix holds two weights), which costs less than one pass of
    ``grid_sample`` over a many-megapixel scan.
    """
    rows = _interpolation_matrix(int(scan_shape_hw[0]), probability.shape[0], scale_rc[0], grid)
    cols = _interpolation_matrix(int(scan_shape_hw[1]), probability.shape[1], scale_rc[1], grid)
    return rows @ (probability @ cols.T)


def _interpolation_matrix(
    n_pixels: int, n_cells: int, scale: float, grid: OutputGrid
) -> np.ndarray:
    """[n_pixels, n_cells] linear-interpolation weights along one axis.

    Scan pixel ``p`` (centre ``p + 0.5``) lies at model coordinate
    ``(p + 0.5) * scale``, i.e. at fractional cell ``(that - offset) /
    stride``; beyond the first and last cell centres the edge value holds.
    """
    position = ((np.arange(n_pixels) + 0.5) * scale - grid.offset) / grid.stride
    position = np.clip(position, 0, n_cells - 1)
    lower = np.floor(position).astype(np.int64)
    upper = np.minimum(lower + 1, n_cells - 1)
    fraction = (position - lower).astype(np.float32)
    matrix = np.zeros((n_pixels, n_cells), dtype=np.float32)
    pixels = np.arange(n_pixels)
    matrix[pixels, lower] = 1.0 - fraction
    matrix[pixels, upper] += fraction
    return matrix


def _regions(
    probability: np.ndarray,
    category_logits: np.ndarray,
    *,
    threshold: float,
    class_names: Sequence[str],
    grid: OutputGrid,
    model_spacing: float,
    scan_shape_hw: Sequence[int],
    scan_spacing_rc: Sequence[float],
) -> list[Region]:
    """Connected components (8-neighbour) of the cells at or above ``threshold``, as boxes.

    A component's box covers its cells (each ``stride`` wide around its
    centre), moved to the scan's pixels and clipped to the scan.
    """
    labels, count = ndimage.label(probability >= threshold, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return []
    index = np.arange(1, count + 1)
    scores = ndimage.maximum(probability, labels, index)
    mean_category_logits = np.stack([ndimage.mean(c, labels, index) for c in category_logits])
    categories = mean_category_logits.argmax(axis=0)
    height, width = (float(n) for n in scan_shape_hw)
    regions = []
    for (rows, cols), score, category in zip(
        ndimage.find_objects(labels), scores, categories, strict=True
    ):
        x0, x1 = (grid.offset + grid.stride * (cell - 0.5) for cell in (cols.start, cols.stop))
        y0, y1 = (grid.offset + grid.stride * (cell - 0.5) for cell in (rows.start, rows.stop))
        x, y, w, h = scale_box(
            (x0, y0, x1 - x0, y1 - y0), (model_spacing, model_spacing), scan_spacing_rc
        )
        left, top = max(x, 0.0), max(y, 0.0)
        right, bottom = min(x + w, width), min(y + h, height)
        regions.append(
            Region(
                x=left,
                y=top,
                w=right - left,
                h=bottom - top,
                score=float(score),
                category=class_names[int(category)],
            )
        )
    return sorted(regions, key=lambda region: region.score, reverse=True)


def __getattr__(name: str) -> Any:
    # The benchmark moved to scanml.bench_inference; still importable from here.
    if name in ("inference_benchmark", "CONTAINER_SCANS_M"):
        from scanml import bench_inference

        return getattr(bench_inference, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
