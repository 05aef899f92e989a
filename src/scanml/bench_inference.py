"""Whole-scan inference against the naive sliding window: the point of a dense model, measured.

``scanml bench`` (its inference section) and ``benchmarks/bench_inference.py``
report :func:`inference_benchmark`; :class:`~scanml.predict.Predictor` is what
it measures.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from scanml.io import Scan
from scanml.models import ModelBundle, create_model
from scanml.predict import Predictor, eval_mode
from scanml.preprocess import Preprocessing, prepare

__all__ = ["CONTAINER_SCANS_M", "inference_benchmark"]

# Scan extents (length, height) in metres: the container plus 0.5 m at each
# end and 0.3 m above and below (the truck's chassis and the scan's margins).
CONTAINER_SCANS_M: dict[str, tuple[float, float]] = {"20 ft": (7.1, 3.5), "40 ft": (13.2, 3.5)}


def inference_benchmark(
    architecture: str = "resnet18",
    *,
    device: str | torch.device = "cpu",
    spacing_mm: float = 8.0,
    window: int = 128,
    quick: bool = False,
    scans_m: Mapping[str, tuple[float, float]] = CONTAINER_SCANS_M,
) -> list[dict[str, Any]]:
    """Whole-scan inference against the naive sliding window, per scan size (``scans_m``).

    The whole-scan figure is :meth:`Predictor.predict` end to end (prepare,
    network, heat map, regions) on a scan already at the model's spacing.
    The sliding window computes the same dense anomaly logits the way a
    tile classifier would: one ``window``-pixel tile centred on every output
    cell, keeping only the centre cell's logit. ``flops_per_s`` is the
    network's forward FLOPs (``torch.utils.flop_counter``) over the
    whole-scan time. Random weights: the cost does not depend on them.
    """
    torch.manual_seed(0)
    preprocessing = Preprocessing(channels=("high",), spacing_mm=spacing_mm)
    network = create_model(architecture, 1, num_categories=1)
    predictor = Predictor(
        ModelBundle(network, architecture, preprocessing, ["anomaly"]), device=device
    )
    rng = np.random.default_rng(0)
    rows = []
    for label, (length_m, height_m) in scans_m.items():
        shape = (round(height_m * 1000 / spacing_mm), round(length_m * 1000 / spacing_mm))
        attenuation = rng.uniform(0.0, 6.0, size=(1, *shape)).astype(np.float32)
        scan = Scan(attenuation, (spacing_mm, spacing_mm), ["high"])
        image = prepare(scan, preprocessing)
        whole = predictor.predict(scan)  # also the warm-up: oneDNN/cuDNN plan for this shape
        whole_seconds = _best_seconds(partial(predictor.predict, scan), 1 if quick else 3)
        cells = whole.dense_logits.shape[-2:]
        _sliding_window_logits(predictor, image[:, :, : 4 * window], window)  # warm-up
        started = time.perf_counter()
        _sliding_window_logits(predictor, image, window)
        window_seconds = time.perf_counter() - started
        megapixels = shape[0] * shape[1] / 1e6
        flops = _forward_flops(predictor, image)
        rows.append(
            {
                "scan": label,
                "pixels": f"{shape[1]} x {shape[0]}",
                "megapixels": megapixels,
                "whole_seconds": whole_seconds,
                "whole_scans_per_s": 1.0 / whole_seconds,
                "whole_megapixels_per_s": megapixels / whole_seconds,
                "windows": cells[0] * cells[1],
                "window_seconds": window_seconds,
                "window_scans_per_s": 1.0 / window_seconds,
                "speedup": window_seconds / whole_seconds,
                "gflop_per_scan": flops / 1e9,
                "flops_per_s": flops / whole_seconds,
            }
        )
    return rows


def _best_seconds(run: Callable[[], object], repeats: int) -> float:
    """The fastest of ``repeats`` runs: the least disturbed by other work on the machine."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def _sliding_window_logits(
    predictor: Predictor, image: np.ndarray, window: int, batch_size: int = 64
) -> torch.Tensor:
    """Anomaly logits [h, w], one ``window``-pixel tile per output cell (the naive way)."""
    stride = predictor.network.grid.stride
    half = window // 2
    height, width = image.shape[-2:]
    cells = (math.ceil(height / stride), math.ceil(width / stride))
    # Tile (i, j) starts at stride * (i, j) - half, so its centre cell is cell (i, j).
    padded = torch.nn.functional.pad(
        torch.from_numpy(image)[None],
        (half, half + stride * cells[1] - width, half, half + stride * cells[0] - height),
    )
    tiles = padded.unfold(2, window, stride).unfold(3, window, stride)[:, :, : cells[0], : cells[1]]
    tiles = tiles.permute(0, 2, 3, 1, 4, 5).reshape(-1, image.shape[0], window, window)
    centre = half // stride
    with eval_mode(predictor.network), torch.inference_mode():
        logits = [
            predictor._forward(tiles[first : first + batch_size])[:, 0, centre, centre]
            for first in range(0, len(tiles), batch_size)
        ]
    return torch.cat(logits).reshape(cells)


def _forward_flops(predictor: Predictor, image: np.ndarray) -> int:
    with (
        eval_mode(predictor.network),
        torch.inference_mode(),
        FlopCounterMode(display=False) as counter,
    ):
        predictor._forward(torch.from_numpy(image)[None])
    return counter.get_total_flops()
