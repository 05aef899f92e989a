"""One scan in, one scores-table row out: decoding, the model, the overlay and the report.

:class:`ScanScorer` is shared by the batch job (:func:`scanml.scoring.score`)
and the MLflow pyfunc model (:func:`scanml.scoring.score_paths`), so both
write the same rows. Decoding (:func:`decode`) runs in the job's worker
processes; any failure becomes the error text of the file's row, and an
overlay or report that cannot be written is recorded beside a kept score.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scanml.io import Scan, read_scan
from scanml.mlflow_client import ResolvedModel
from scanml.overlays import save_overlay
from scanml.predict import Prediction, Predictor, Region
from scanml.preprocess import PreparedScan, Preprocessing, model_grid_shape, prepare_scan
from scanml.score_inputs import InputItem
from scanml.scores_table import ScoresTable
from scanml.tdr import write_tdr

__all__ = [
    "MAX_MODEL_PIXELS",
    "Decoded",
    "ScanScorer",
    "ScanTooLargeError",
    "check_model_grid",
    "decode",
    "decode_in_worker",
    "failed_decode",
    "file_stems",
]

# The largest scan on the model's grid, pixels per channel: a 40 ft container
# at 1 mm per pixel is about 30 million. A forged spacing (64 mm instead of
# 4) asks for hundreds of millions; refused before resampling.
MAX_MODEL_PIXELS = 40_000_000


@dataclass
class Decoded:
    """A scan read and prepared for the model, or why that failed.

    ``prepared`` is the model's input (its image float32 [C, H', W'] on the
    model grid); the scan itself is kept for its overlay, report and size.
    Between a worker and the main process both pixel arrays can travel as
    torch tensors, which move through shared memory; numpy arrays are
    pickled through a pipe (100 MB for a large dual-energy scan).
    """

    item: InputItem
    scan: Scan | None
    prepared: PreparedScan | None  # its image a torch tensor between processes
    error: str | None
    seconds: float

    def to_tensors(self) -> Decoded:
        """Pixels as tensors, for the trip to the main process."""
        if self.scan is not None:  # from_numpy refuses negative strides: make them contiguous
            self.scan.attenuation = torch.from_numpy(np.ascontiguousarray(self.scan.attenuation))
            image = torch.from_numpy(np.ascontiguousarray(self.prepared.image))
            self.prepared = replace(self.prepared, image=image)
        return self

    def to_arrays(self) -> Decoded:
        """Pixels back as numpy arrays (no copy), as the rest of scanml expects them."""
        if self.scan is not None and isinstance(self.prepared.image, torch.Tensor):
            self.scan.attenuation = self.scan.attenuation.numpy()
            self.prepared = replace(self.prepared, image=self.prepared.image.numpy())
        return self


def decode_in_worker(
    item: InputItem, *, preprocessing: Preprocessing, share_memory: bool
) -> Decoded:
    decoded = decode(item, preprocessing)
    return decoded.to_tensors() if share_memory else decoded


def failed_decode(item: InputItem, reason: str) -> Decoded:
    """The row of a file whose decoding process died or hung."""
    return Decoded(item, None, None, f"DecoderCrash: {reason}", 0.0)


def decode(item: InputItem, preprocessing: Preprocessing) -> Decoded:
    """Read one scan and prepare it; a failure of any kind becomes the error text of its row.

    Besides unreadable files (ScanReadError), ``prepare`` refuses for
    instance a single-energy scan given to a dual-energy model, and a scan
    whose spacing would make it larger than :data:`MAX_MODEL_PIXELS` on
    the model's grid is refused before resampling.
    """
    started = time.perf_counter()
    if item.refusal is not None:
        return Decoded(item, None, None, item.refusal, 0.0)
    try:
        scan = read_scan(item.path, spacing_mm=item.spacing_mm, site=item.site)
        check_model_grid(scan, preprocessing)
        prepared = prepare_scan(scan, preprocessing, scan_id=item.scan_id)
    except Exception as exc:  # the file's row says why; the job carries on
        return Decoded(item, None, None, _error_text(exc), time.perf_counter() - started)
    return Decoded(item, scan, prepared, None, time.perf_counter() - started)


class ScanTooLargeError(ValueError):
    """A scan that the model's grid would make larger than :data:`MAX_MODEL_PIXELS`."""


def check_model_grid(scan: Scan, preprocessing: Preprocessing) -> None:
    height, width = model_grid_shape((scan.height, scan.width), scan.spacing_mm, preprocessing)
    if height * width > MAX_MODEL_PIXELS:
        raise ScanTooLargeError(
            f"{scan.height} x {scan.width} pixels at {scan.spacing_mm[0]:g} x"
            f" {scan.spacing_mm[1]:g} mm become {height} x {width} on the model's"
            f" {preprocessing.spacing_mm:g} mm grid, over the budget of {MAX_MODEL_PIXELS} pixels"
        )


@dataclass
class ScanScorer:
    """Turns a decoded scan into its table row, writing its overlay and report on the way."""

    predictor: Predictor
    model_uri: str
    model: ResolvedModel
    threshold: float
    overlays: Path | None
    tdr: Path | None
    file_stems: dict[Path, str]
    fingerprints: dict[Path, str | None]
    timings: dict[str, float]

    def row_for(self, decoded: Decoded) -> dict[str, Any]:
        """The row for one scan; any exception while scoring it becomes an error row."""
        self.timings["decode"] += decoded.seconds
        if decoded.scan is None:
            return self._row(decoded.item, error=decoded.error, seconds=decoded.seconds)
        started = time.perf_counter()
        decoded.to_arrays()
        try:
            return self._scored_row(decoded.item, decoded.scan, decoded.prepared, decoded.seconds)
        except Exception as exc:  # one bad scan must not stop the job
            seconds = decoded.seconds + time.perf_counter() - started
            return self._row(decoded.item, error=_error_text(exc), seconds=seconds)

    def commit(self, table: ScoresTable, rows: list[dict[str, Any]]) -> None:
        started = time.perf_counter()
        table.append(rows)
        self.timings["write"] += time.perf_counter() - started

    def _scored_row(
        self, item: InputItem, scan: Scan, prepared: PreparedScan, decode_seconds: float
    ) -> dict[str, Any]:
        model_started = time.perf_counter()
        prediction = self.predictor.predict_prepared(prepared)
        model_seconds = time.perf_counter() - model_started
        self.timings["model"] += model_seconds
        # The job's own rule rather than prediction.flagged: the threshold may
        # be overridden, and scanml flags strictly above it (scanml.metrics).
        flagged = bool(prediction.score > self.threshold)

        write_started = time.perf_counter()
        failures: list[str] = []
        overlay = report = None
        if flagged and self.overlays is not None:
            overlay = _side_output("overlay", failures, self._write_overlay, item, scan, prediction)
        if self.tdr is not None:
            report = _side_output(
                "tdr", failures, self._write_report, item, scan, prediction, flagged, model_seconds
            )
        write_seconds = time.perf_counter() - write_started
        self.timings["write"] += write_seconds
        return self._row(
            item,
            site=item.site or scan.meta.get("site"),
            score=float(prediction.score),
            flagged=flagged,
            regions=[self._region_record(region) for region in prediction.regions],
            height=scan.height,
            width=scan.width,
            seconds=decode_seconds + model_seconds + write_seconds,
            overlay=str(overlay) if overlay else None,
            tdr=str(report) if report else None,
            output_error="; ".join(failures) or None,
        )

    def _row(self, item: InputItem, **values: Any) -> dict[str, Any]:
        """A table row: ``values`` over the defaults of an error row."""
        row = {
            "scan_id": item.scan_id,
            "path": str(item.path),
            "site": item.site,
            "score": None,
            "flagged": None,
            "threshold": self.threshold,
            "regions": [],
            "model_uri": self.model_uri,
            "error": None,
            "height": None,
            "width": None,
            "overlay": None,
            "tdr": None,
            "output_error": None,
            "fingerprint": self.fingerprints.get(item.path),
            "model_name": self.model.name,
            "model_version": self.model.version,
            "model_run_id": self.model.run_id,
        }
        row.update(values)
        return row

    def _region_record(self, region: Region) -> dict[str, Any]:
        return {
            "x": float(region.x),
            "y": float(region.y),
            "w": float(region.w),
            "h": float(region.h),
            "score": float(region.score),
            "category": region.category,
        }

    def _write_overlay(self, item: InputItem, scan: Scan, prediction: Prediction) -> Path:
        return save_overlay(
            scan,
            prediction,
            self.overlays / f"{self.file_stems[item.path]}.png",
            title=f"{item.scan_id}  score {prediction.score:.3f} > {self.threshold:.3f}",
            heat_floor=self.predictor.bundle.region_threshold,
        )

    def _write_report(
        self,
        item: InputItem,
        scan: Scan,
        prediction: Prediction,
        flagged: bool,
        model_seconds: float,
    ) -> Path:
        described = self.model.describe()
        return write_tdr(
            self.tdr / f"{self.file_stems[item.path]}.dcm",
            scan_meta=scan.meta,
            prediction_regions=prediction.regions,
            score=float(prediction.score),
            threshold=self.threshold,
            flagged=flagged,
            model_uri=self.model_uri
            if described == self.model_uri
            else f"{self.model_uri} = {described}",
            class_names=self.predictor.bundle.class_names,
            processing_ms=model_seconds * 1000,
            peak_xy=prediction.peak_xy,
        )


def _side_output(kind: str, failures: list[str], write, *args: Any) -> Path | None:
    """``write(*args)``, or None with the reason added to ``failures``: the score never depends on it."""
    try:
        return write(*args)
    except Exception as exc:
        failures.append(f"{kind}: {_error_text(exc)}")
        return None


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def file_stems(items: Sequence[InputItem]) -> dict[Path, str]:
    """A file name (without suffix) for each input's overlay and report.

    The scan id, made safe for a file name; where two inputs share one
    (``a/1.dcm`` and ``b/1.dcm``), a short hash of the path tells them
    apart. Computed over all inputs, so a rerun names every file the same.
    """
    safe = {item.path: re.sub(r"[^A-Za-z0-9._-]", "_", item.scan_id) or "scan" for item in items}
    safe = {path: "_" + name if name.startswith(".") else name for path, name in safe.items()}
    seen: dict[str, int] = {}
    for name in safe.values():
        seen[name] = seen.get(name, 0) + 1
    return {
        path: name
        if seen[name] == 1
        else f"{name}-{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
        for path, name in safe.items()
    }
