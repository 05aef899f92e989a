"""Whole-scan validation during training, and the hard negatives mined between epochs.

Validation runs the same :class:`~scanml.predict.Predictor` on whole scans
that scoring uses, so a validation AUROC is a statement about whole scans,
never about tiles. The validation scans are read and prepared once per run
(:func:`load_validation_scans`), not once per epoch.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm.auto import tqdm

from scanml.config import Config
from scanml.dataset import ScanDataset, ScanRecord
from scanml.io import ScanReadError, read_scan
from scanml.metrics import ScanMetrics, ScanOutcome, compute_metrics
from scanml.models import ModelBundle
from scanml.predict import Prediction, Predictor
from scanml.preprocess import PreparedScan, Preprocessing, prepare_scan

if TYPE_CHECKING:
    from scanml.tracking import Tracker

__all__ = [
    "ValidationScan",
    "calibration_chain",
    "chain_config",
    "load_validation_scans",
    "log_validation_figures",
    "mine_hard_negatives",
    "validate",
    "variant_scores",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ValidationScan:
    """A validation scan: its manifest record (label, boxes, site) and the scan prepared once.

    Prepared once per run, not once per epoch; the Predictor scores
    ``prepared`` in the scan's own pixels, where the record's boxes are.
    """

    record: ScanRecord
    prepared: PreparedScan


def validate(
    bundle: ModelBundle,
    scans: Sequence[ValidationScan],
    *,
    device: torch.device,
    config: Config,
    progress: bool = True,
) -> tuple[ScanMetrics, list[tuple[ValidationScan, Prediction]]]:
    """Score whole validation scans through the Predictor and compute scan metrics."""
    predictor = Predictor(
        bundle, device=device, max_block_pixels=config.validation.max_block_pixels
    )
    outcomes, predictions = [], []
    for item in tqdm(scans, desc="validation", unit="scan", disable=not progress, leave=False):
        prediction = predictor.predict_prepared(item.prepared)
        predictions.append((item, prediction))
        outcomes.append(ScanOutcome.of(item.record, prediction))
    return compute_metrics(outcomes), predictions


def variant_scores(
    bundle: ModelBundle,
    scans: Sequence[ValidationScan],
    *,
    device: torch.device,
    config: Config,
    progress: bool = True,
) -> list[float]:
    """Scores of ``validation.calibration_variants`` redraws of each clean validation scan.

    Each variant is the whole prepared scan drawn through the training
    acquisition chain (``augment``: gain, offset, beam profile, streaks,
    blur, noise, saturation), so it stays the same clean container seen by
    another scanner. Not the flip, not the threat projection, and not the
    pixel-pitch change: on a whole scan that would mirror its edges into
    the frame, and a scan read at another pitch is resampled to the model's
    anyway. Seeded by ``config.seed``: a rerun draws the same variants.
    Empty when the count is 0, and (with a warning) when augmentation is off.
    """
    from scanml.tiles import Tile
    from scanml.transforms import TrainTransform, transform_from_config

    count = config.validation.calibration_variants
    clean = [item for item in scans if item.record.label == 0]
    if not count or not clean:
        return []
    if not config.augment.enabled:
        log.warning(
            "validation.calibration_variants=%d ignored: augment.enabled is false, so "
            "there is no acquisition chain to redraw the scans through",
            count,
        )
        return []
    augment = config.augment.model_copy(
        update={
            "hflip": 0.0,
            "scale": (1.0, 1.0),
            "tip": config.augment.tip.model_copy(update={"enabled": False}),
        }
    )
    transform = transform_from_config(
        config.model_copy(update={"augment": augment}), None, bundle.preprocessing
    )
    if not isinstance(transform, TrainTransform):  # augment.enabled was checked above
        raise TypeError(f"expected the training transform, got {transform!r}")
    predictor = Predictor(
        bundle, device=device, max_block_pixels=config.validation.max_block_pixels
    )
    rng = np.random.default_rng([config.seed, 0xCA11B])
    scores = []
    jobs = [item for item in clean for _ in range(count)]
    for item in tqdm(
        jobs, desc="calibration variants", unit="scan", disable=not progress, leave=False
    ):
        prepared = item.prepared
        tile = Tile(
            image=prepared.image,
            mask=np.zeros(prepared.image.shape[1:], dtype=np.float32),
            label=0,
            category=-1,
            scan_id=prepared.scan_id,
            source="random",
            y0=0,
            x0=0,
        )
        image = transform(tile, rng).image
        scores.append(predictor.predict_prepared(replace(prepared, image=image)).score)
    return scores


def calibration_chain(config: Config) -> dict[str, object]:
    """What a model bundle records so that its threshold can be recalibrated later
    (``scanml evaluate --calibrate-far``) on the same acquisition variants:
    their count, their seed and the ``augment`` section they are drawn from."""
    return {
        "variants": config.validation.calibration_variants,
        "seed": config.seed,
        "augment": config.augment.model_dump(mode="json"),
    }


def chain_config(bundle: ModelBundle, variants: int | None = None) -> Config | None:
    """The configuration :func:`variant_scores` needs to redraw clean scans as the model's
    training did, from the chain its bundle records (:func:`calibration_chain`).

    ``variants`` None takes the count the model was trained with; 0 turns
    the variants off. None is returned when there are none to draw. Raises
    ValueError when variants are asked for and the model records no chain
    (a model trained before it was recorded).
    """
    if variants is not None and variants < 0:
        raise ValueError(f"calibration variants must be 0 or more, got {variants}")
    chain = bundle.metadata.get("calibration_chain")
    if not isinstance(chain, dict):
        if variants:
            raise ValueError(
                "this model records no acquisition chain to redraw its calibration scans "
                "through (trained before scanml recorded one): calibrate without variants"
            )
        return None
    count = int(chain.get("variants", 0)) if variants is None else variants
    if not count:
        return None
    return Config.model_validate(
        {
            "seed": chain.get("seed", 0),
            "augment": chain.get("augment", {}),
            "validation": {"calibration_variants": count},
        }
    )


def mine_hard_negatives(
    bundle: ModelBundle,
    records: ScanDataset,
    *,
    per_scan: int,
    tile_size: int,
    max_scans: int | None = None,
    seed: int = 0,
    device: torch.device,
    progress: bool = True,
    share: Callable[[list[ScanRecord]], list[ScanRecord]] = list,
) -> dict[str, list[tuple[int, int, float]]]:
    """The locations of clean training scans the current model scores highest.

    Returned in model-grid pixels (tile centres), per scan id. Peaks closer
    than half a tile are suppressed so one corner post does not fill the list.
    With ``max_scans``, a sample of that many clean scans (drawn with
    ``seed``, so successive rounds visit different scans) bounds the cost.
    """
    predictor = Predictor(bundle, device=device)
    grid = bundle.network.grid
    mined: dict[str, list[tuple[int, int, float]]] = {}
    clean = [record for record in records.records if record.label == 0]
    if max_scans is not None and len(clean) > max_scans:
        clean = random.Random(seed).sample(clean, max_scans)
    clean = share(clean)  # this process's share, when several train together
    for record in tqdm(
        clean, desc="mining hard negatives", unit="scan", disable=not progress, leave=False
    ):
        try:
            scan = read_scan(record.path, spacing_mm=record.spacing_mm, site=record.site)
        except ScanReadError as exc:
            log.warning("hard-negative mining skips %s", exc)
            continue
        dense = predictor.predict(scan).dense_logits[0]  # the anomaly channel
        mined[record.scan_id] = _top_locations(
            dense, per_scan, grid.stride, grid.offset, tile_size // 2
        )
    return mined


def _top_locations(
    dense: np.ndarray, count: int, stride: int, offset: float, min_distance: int
) -> list[tuple[int, int, float]]:
    """The ``count`` highest cells, as model-grid pixel centres, at least ``min_distance`` apart."""
    order = np.argsort(dense, axis=None)[::-1]
    picked: list[tuple[int, int, float]] = []
    for flat in order:
        row, col = np.unravel_index(flat, dense.shape)
        y, x = round(offset + stride * int(row)), round(offset + stride * int(col))
        if all(abs(y - py) >= min_distance or abs(x - px) >= min_distance for py, px, _ in picked):
            picked.append((y, x, float(dense[row, col])))
            if len(picked) == count:
                break
    return picked


def load_validation_scans(
    val_set: ScanDataset, config: Config, preprocessing: Preprocessing
) -> list[ValidationScan]:
    records = list(val_set.records)
    if config.data.max_val_scans and len(records) > config.data.max_val_scans:
        rng = random.Random(config.seed)
        records = sorted(rng.sample(records, config.data.max_val_scans), key=lambda r: r.scan_id)
    scans = []
    for record in records:
        try:
            scan = read_scan(record.path, spacing_mm=record.spacing_mm, site=record.site)
        except ScanReadError as exc:
            log.warning("validation skips %s", exc)
            continue
        scans.append(
            ValidationScan(record, prepare_scan(scan, preprocessing, scan_id=record.scan_id))
        )
    return scans


def log_validation_figures(
    tracker: Tracker,
    metrics: ScanMetrics,
    predictions: Sequence[tuple[ValidationScan, Prediction]],
    bundle: ModelBundle,
    config: Config,
) -> None:
    """The run's ROC, PR, DR-vs-FAR and confusion figures, and overlays of its top-scored scans."""
    import matplotlib.pyplot as plt

    from scanml import overlays, plots

    outcomes = [ScanOutcome.of(item.record, prediction) for item, prediction in predictions]
    for name, figure in (
        ("roc.png", plots.plot_roc(outcomes)),
        ("precision_recall.png", plots.plot_pr(outcomes)),
        ("detection_rate_vs_false_alarms.png", plots.plot_dr_far(outcomes)),
        ("confusion_matrix.png", plots.plot_confusion(outcomes, bundle.threshold)),
    ):
        tracker.log_figure(figure, f"plots/{name}")
        plt.close(figure)
    ranked = sorted(predictions, key=lambda pair: pair[1].score, reverse=True)
    for item, prediction in ranked[: config.validation.overlays]:
        scan = read_scan(item.record.path, spacing_mm=item.record.spacing_mm, site=item.record.site)
        title = f"{item.record.scan_id} label={item.record.label} score={prediction.score:.3f}"
        image = overlays.overlay_image(
            scan, prediction, title=title, heat_floor=bundle.region_threshold
        )
        tracker.log_image(image, f"overlays/{item.record.scan_id}.png")
