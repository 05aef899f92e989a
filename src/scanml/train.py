"""Training: tiles in, a dense anomaly detector out, every run tracked in MLflow.

Reads top to bottom like torchvision's reference ``train.py``: data, model,
loss, optimizer, scheduler, resume, epoch loop. :func:`train_one_epoch` and
:func:`validate` are plain functions; validation runs the same
:class:`~scanml.predict.Predictor` on whole scans that scoring uses, so a
validation AUROC is a statement about whole scans, never about tiles.

A run lives in a local folder (``runs/<name>/``) holding the resolved
configuration and two checkpoints, ``last.pt`` and ``best.pt``, each written
atomically (temporary file, then rename). Checkpoints never depend on MLflow;
``--resume`` continues a killed run from ``last.pt`` in the same MLflow run
and ends with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from torchvision.ops import sigmoid_focal_loss
from tqdm.auto import tqdm

from scanml import distributed
from scanml.config import Config, config_from_json, load_config
from scanml.console import epoch_line, interrupted_message, say, start_banner
from scanml.data import (
    ScanDataset,
    ScanRecord,
    TileDataset,
    TileSampler,
    assign_splits,
    load_dataset,
)
from scanml.io import ScanReadError, read_scan
from scanml.metrics import ScanMetrics, ScanOutcome, calibrate_threshold, compute_metrics
from scanml.models import DenseLogitNet, ModelBundle, create_model
from scanml.predict import Prediction, Predictor
from scanml.preprocess import Preprocessing, prepare
from scanml.tracking import Tracker, log_model, resolve_tracking_uri, run_tags
from scanml.transforms import EvalTransform, ThreatProjector, TrainTransform

__all__ = ["TrainResult", "train", "train_one_epoch", "validate"]

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1


@dataclass(frozen=True)
class TrainResult:
    """What a finished training leaves behind."""

    run_id: str | None
    model_uri: str | None
    run_dir: Path
    bundle_dir: Path
    best_epoch: int
    metrics: dict[str, float]


def train(
    config: Config | None,
    data_dir: str | Path,
    *,
    resume: str | Path | None = None,
    overrides: Iterable[str] = (),
    progress: bool = True,
) -> TrainResult:
    """Train a model on ``data_dir`` (``manifest.csv`` + ``annotations.json``).

    ``resume`` names a run to continue (its MLflow run id, its folder under
    ``train.runs_dir``, or a ``last.pt``); its saved configuration is used.
    """
    # Under torchrun: rank 0 opens the run folder, every rank learns it (scanml.distributed).
    world = distributed.setup(_device(config.train.device if config else "auto"))
    run_dir, checkpoint = world.from_main(lambda: _open_run(config, resume, overrides))
    config = config_from_json(checkpoint["config"]) if checkpoint else config
    assert config is not None
    if checkpoint is None and world.is_main:
        config.save(run_dir / "config.yaml")
    device = world.device(_device(config.train.device))
    progress = progress and world.is_main
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    _seed_everything(config.seed)

    # -- data ---------------------------------------------------------------------------
    dataset = assign_splits(
        load_dataset(data_dir),
        val_fraction=config.data.val_fraction,
        test_fraction=config.data.test_fraction,
        seed=config.seed,
    )
    train_set, val_set = dataset.split("train"), dataset.split("val")
    if not len(train_set) or not len(val_set):
        raise ValueError(
            f"{data_dir}: need scans in both the train and val splits "
            f"(got {len(train_set)} train, {len(val_set)} val)"
        )
    preprocessing = Preprocessing(
        channels=tuple(config.model.channels),
        spacing_mm=config.model.spacing_mm,
        attenuation_scale=config.model.attenuation_scale,
    )
    sampler = TileSampler(
        tile_size=config.data.tile_size,
        tiles_per_scan=config.data.tiles_per_scan,
        positive_fraction=config.data.positive_fraction,
        hard_negative_fraction=config.data.hard_negative_fraction,
        seed=config.seed,
    )
    tiles = TileDataset(
        train_set,
        preprocessing,
        sampler,
        transform=_train_transform(config, train_set, preprocessing),
        categories=config.model.categories,
        cache_bytes=config.data.cache_bytes,
        seed=config.seed,
        rank=world.rank,
        world_size=world.world_size,
    )
    loader = DataLoader(
        tiles,
        batch_size=config.train.batch_size,
        num_workers=config.data.num_workers,
        persistent_workers=config.data.num_workers > 0,
        pin_memory=device.type == "cuda",
        collate_fn=tiles.collate,
    )
    val_records = _validation_records(val_set, config, preprocessing)

    # -- model, loss, optimizer, scheduler ----------------------------------------------
    network = create_model(
        config.model.architecture,
        in_channels=len(preprocessing.channels),
        weights=config.model.weights,
        num_categories=len(config.model.categories),
        output_stride=config.model.output_stride,
        stages=config.model.stages,
    ).to(device)
    if config.train.channels_last:
        network = network.to(memory_format=torch.channels_last)
    criterion = DenseTileLoss(
        config.train.dense_loss_weight,
        config.train.category_loss_weight,
        config.train.tile_pooling,
        dense_loss=config.train.dense_loss,
    )
    optimizer = torch.optim.AdamW(
        _parameter_groups(network, config.train.weight_decay), lr=config.train.lr
    )
    # each rank steps through its own share of the scans
    steps_per_epoch = _steps_per_epoch(math.ceil(len(train_set) / world.world_size), config)
    schedule = WarmupCosine(
        round(config.train.warmup_epochs * steps_per_epoch), config.train.epochs * steps_per_epoch
    )
    # A callable object, not a closure: LambdaLR saves its state in the
    # checkpoint, so a resumed run keeps the length a time budget gave it.
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    scaler = torch.amp.GradScaler(device.type, enabled=config.train.amp and device.type == "cuda")

    # -- resume -------------------------------------------------------------------------
    state = TrainingState()
    if checkpoint is not None:
        network.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        state = TrainingState.from_dict(checkpoint["state"])
        _restore_rng(checkpoint["rng"])
        sampler.set_hard_negatives(state.hard_negatives)
        log.info("resuming %s after epoch %d", run_dir.name, state.epoch)

    # -- tracking -----------------------------------------------------------------------
    tracker = (Tracker if world.is_main else distributed.SilentTracker)(
        resolve_tracking_uri(config.tracking.tracking_uri),
        config.tracking.experiment,
        max_retries=config.tracking.max_retries,
        timeout_s=config.tracking.timeout_s,
        retry_after_s=config.tracking.retry_after_s,
    )
    state.mlflow_run_id = world.from_main(  # one MLflow run, logged by rank 0 alone
        lambda: (
            tracker.start(
                run_id=state.mlflow_run_id,
                run_name=config.tracking.run_name or run_dir.name,
                tags=run_tags({"scanml.run_dir": str(run_dir.resolve())}),
            )
            or state.mlflow_run_id
        )
    )
    if config.tracking.system_metrics:
        tracker.start_system_metrics()
    if checkpoint is None:
        tracker.log_params(config.flat())
        tracker.log_params(
            {
                "data.path": str(Path(data_dir).resolve()),
                "data.digest": dataset.digest,
                "data.n_train": len(train_set),
                "data.n_val": len(val_set),
                "distributed.world_size": world.world_size,
            }
        )
        tracker.log_dataset(train_set, name=Path(data_dir).name, context="training")
        tracker.log_dataset(val_set, name=Path(data_dir).name, context="validation")
        tracker.log_artifact(run_dir / "config.yaml")
    if world.is_main:
        _save_run_info(run_dir, state.mlflow_run_id)
    trainable = world.wrap(network, device)  # DistributedDataParallel under torchrun
    say(
        start_banner(
            run_name=config.tracking.run_name or run_dir.name,
            run_dir=run_dir,
            data_dir=data_dir,
            n_train=len(train_set),
            n_val=len(val_set),
            n_test=len(dataset.split("test")),
            device=str(device),
            epochs=config.train.epochs,
            run_id=state.mlflow_run_id,
            tracking_uri=tracker.tracking_uri,
            experiment_id=tracker.experiment_id,
            first_epoch=state.epoch + 1,
        )
    )

    # -- the epoch loop -----------------------------------------------------------------
    bundle_dir = run_dir / "model"
    status = "FAILED"
    budget_s = config.train.time_budget_min * 60 if config.train.time_budget_min else None
    try:
        for epoch in range(state.epoch + 1, config.train.epochs + 1):
            if state.planned_epochs and epoch > state.planned_epochs:
                break
            epoch_started = time.monotonic()
            tiles.set_epoch(epoch)
            with world.join(trainable):
                epoch_stats = train_one_epoch(
                    trainable,
                    criterion,
                    optimizer,
                    scheduler,
                    scaler,
                    loader,
                    device=device,
                    epoch=epoch,
                    config=config,
                    progress=progress,
                )
            tracker.log_metrics(
                {f"train/{key}": value for key, value in epoch_stats.items()}, step=epoch
            )
            tracker.log_metrics({"train/lr": scheduler.get_last_lr()[0]}, step=epoch)

            if epoch % config.validation.every == 0 or epoch == config.train.epochs:
                bundle = _bundle(
                    network, config, preprocessing, threshold=0.5, run_id=state.mlflow_run_id
                )
                metrics, _ = distributed.validate_across(
                    world,
                    validate,
                    bundle,
                    val_records,
                    device=device,
                    config=config,
                    progress=progress,
                )
                tracker.log_metrics(
                    {f"val/{k}": v for k, v in metrics.to_flat_dict().items()}, step=epoch
                )
                value = state.smooth(
                    metrics.to_flat_dict().get(config.train.monitor.removeprefix("val/"), math.nan),
                    config.train.monitor_smoothing,
                )
                if config.train.monitor_smoothing:
                    tracker.log_metrics({"val/monitor_smoothed": value}, step=epoch)
                improved = state.improves(value, config.train.monitor_mode)
                if improved:
                    state.best_metric, state.best_epoch, state.stale_epochs = value, epoch, 0
                    if world.is_main:
                        _save_checkpoint(
                            run_dir / "best.pt", network, optimizer, scheduler, state, config, epoch
                        )
                else:
                    state.stale_epochs += 1
                flat = metrics.to_flat_dict()
                say(
                    epoch_line(
                        epoch,
                        state.planned_epochs or config.train.epochs,
                        loss=epoch_stats["loss"],
                        val_auroc=flat.get("auroc"),
                        dr_at_far_1pct=flat.get("dr_at_far_1pct"),
                        pointing=flat.get("pointing_hit_rate"),
                        seconds=time.monotonic() - epoch_started,
                        best=improved,
                    )
                )

            if (
                config.train.hard_negative_every
                and epoch % config.train.hard_negative_every == 0
                and epoch < (state.planned_epochs or config.train.epochs)
            ):
                bundle = _bundle(
                    network, config, preprocessing, threshold=0.5, run_id=state.mlflow_run_id
                )
                mined = mine_hard_negatives(
                    bundle,
                    train_set,
                    per_scan=config.train.hard_negatives_per_scan,
                    tile_size=config.data.tile_size,
                    max_scans=config.train.hard_negative_max_scans,
                    seed=config.seed + epoch,
                    device=device,
                    progress=progress,
                    share=world.share,
                )
                mined = distributed.merge_across(world, mined)
                # Scans not re-scored this round keep the locations found before.
                state.hard_negatives = {**state.hard_negatives, **mined}
                sampler.set_hard_negatives(state.hard_negatives)

            state.epoch = epoch
            state.elapsed_s += time.monotonic() - epoch_started
            if budget_s is not None:  # rank 0's clock decides, so the ranks stop together
                state.planned_epochs = world.from_main(
                    functools.partial(
                        _plan_epochs, budget_s, state.elapsed_s, epoch, config.train.epochs
                    )
                )
                schedule.total_steps = state.planned_epochs * steps_per_epoch
                tracker.log_metrics(
                    {
                        "train/elapsed_min": state.elapsed_s / 60,
                        "train/planned_epochs": state.planned_epochs,
                    },
                    step=epoch,
                )
            if config.train.keep_epoch_models and world.is_main:
                snapshot = _bundle(
                    network, config, preprocessing, threshold=0.5, run_id=state.mlflow_run_id
                )
                snapshot.metadata.update(epoch=epoch, elapsed_min=round(state.elapsed_s / 60, 3))
                snapshot.save(run_dir / "epochs" / f"epoch-{epoch:03d}")
            if world.is_main:
                _save_checkpoint(
                    run_dir / "last.pt", network, optimizer, scheduler, state, config, epoch
                )
            patience = config.train.early_stopping_patience
            if patience is not None and state.stale_epochs >= patience:
                log.info(
                    "early stopping: %s has not improved for %d validations",
                    config.train.monitor,
                    patience,
                )
                break

        if not world.is_main:  # rank 0 alone calibrates, saves and registers the model
            status = "FINISHED"
            return TrainResult(state.mlflow_run_id, None, run_dir, bundle_dir, state.best_epoch, {})
        result = _finish(
            run_dir,
            bundle_dir,
            network,
            config,
            preprocessing,
            val_records,
            state,
            tracker,
            device,
            progress,
            split_digest=dataset.digest,
        )
        status = "FINISHED"
        return result
    except KeyboardInterrupt:
        status = "KILLED"
        say(interrupted_message(data_dir, run_dir, state.mlflow_run_id, state.epoch))
        raise
    finally:
        tracker.end(status=status)
        world.close()


# -- one epoch --------------------------------------------------------------------------


def train_one_epoch(
    network: DenseLogitNet,
    criterion: DenseTileLoss,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    loader: Iterable[dict[str, Any]],
    *,
    device: torch.device,
    epoch: int,
    config: Config,
    progress: bool = True,
) -> dict[str, float]:
    """One pass over the epoch's tiles; returns mean losses, tile accuracy and throughput."""
    network.train()
    totals: dict[str, float] = {
        "loss": 0.0,
        "tile_loss": 0.0,
        "dense_loss": 0.0,
        "category_loss": 0.0,
    }
    n_tiles, n_correct, steps = 0, 0, 0
    started = time.perf_counter()
    bar = tqdm(loader, desc=f"epoch {epoch}", unit="batch", disable=not progress, leave=False)
    for batch in bar:
        images = batch["image"].to(device, non_blocking=True)
        if config.train.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        targets = {
            key: batch[key].to(device, non_blocking=True) for key in ("label", "mask", "category")
        }
        with torch.autocast(
            device.type,
            dtype=torch.bfloat16 if device.type == "cpu" else torch.float16,
            enabled=config.train.amp,
        ):
            dense_logits = network(images)
        losses = criterion(dense_logits.float(), targets)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(losses["loss"]).backward()
        if config.train.grad_clip:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(network.parameters(), config.train.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()

        steps += 1
        n_tiles += images.shape[0]
        n_correct += int(((losses["tile_logits"] > 0) == (targets["label"] > 0.5)).sum())
        for key in totals:
            totals[key] += float(losses[key].detach())
        rate = n_tiles / max(time.perf_counter() - started, 1e-9)
        bar.set_postfix(loss=f"{totals['loss'] / steps:.4f}", tiles_per_s=f"{rate:.0f}")
        if config.train.max_steps_per_epoch and steps >= config.train.max_steps_per_epoch:
            break
    seconds = time.perf_counter() - started
    stats = {key: value / max(steps, 1) for key, value in totals.items()}
    stats.update(
        tile_accuracy=n_correct / max(n_tiles, 1),
        tiles_per_s=n_tiles / max(seconds, 1e-9),
        epoch_seconds=seconds,
        tiles=float(n_tiles),
    )
    return stats


class DenseTileLoss(nn.Module):
    """What the network learns from a batch of tiles: where, whether, and what.

    - dense: per-location cross-entropy of the anomaly logits against the
      object mask pooled to the logit grid (a location is positive when any
      of its pixels is inside a box). It teaches *where*, and it is what the
      scan score needs: the score is a maximum over tens of thousands of
      locations, so every location of a clean scan must stay low;
    - tile: cross-entropy of the tile logit against the tile label, with
      the tile logit pooled from the dense logits. ``"max"`` (the default)
      is the tile-sized version of the scan score: on a clean tile it pushes
      down the highest location, on a positive one it asks that at least
      one location fires. ``"mean"`` is the design's original tile logit,
      but on a positive tile it pushes up every location, the object's
      background included, which the dense term must then undo;
    - category: cross-entropy of the category logits averaged over the
      object's locations, on positive tiles only.

    ``dense_loss="focal"`` replaces the dense cross-entropy by the focal
    loss (Lin et al., 2017): on large crops nearly every location is clean
    and easy, and a mean cross-entropy is then dominated by them, while the
    scan score depends only on the few clean locations that still score
    high; the focal loss down-weights the easy ones so those few drive it.
    """

    def __init__(
        self,
        dense_weight: float = 1.0,
        category_weight: float = 0.2,
        tile_pooling: str = "max",
        *,
        dense_loss: str = "bce",
    ) -> None:
        super().__init__()
        if dense_loss not in ("bce", "focal"):
            raise ValueError(f"dense_loss is 'bce' or 'focal', got {dense_loss!r}")
        self.dense_weight = dense_weight
        self.category_weight = category_weight
        self.tile_pooling = tile_pooling
        self.dense_loss = dense_loss

    def forward(
        self, dense_logits: torch.Tensor, targets: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        anomaly = dense_logits[:, 0]
        labels = targets["label"].float()
        tile_logits = DenseLogitNet.tile_logits(dense_logits, self.tile_pooling)
        tile_loss = F.binary_cross_entropy_with_logits(tile_logits, labels)

        cells = F.adaptive_max_pool2d(targets["mask"].float()[:, None], anomaly.shape[-2:])[:, 0]
        cells = cells * labels[:, None, None]  # a clean tile is clean everywhere
        if self.dense_loss == "focal":
            # RetinaNet's normalisation: by the positive locations, so a
            # batch's loss does not shrink as its crops grow.
            dense_loss = sigmoid_focal_loss(
                anomaly, cells, reduction="sum"
            ) / cells.sum().clamp_min(float(anomaly.shape[0]))
        else:
            dense_loss = F.binary_cross_entropy_with_logits(anomaly, cells)

        category_loss = dense_logits.new_zeros(())
        positive = (targets["category"] >= 0) & (labels > 0.5)
        if positive.any() and dense_logits.shape[1] > 1:
            weights = cells[positive][:, None]
            pooled = (dense_logits[positive, 1:] * weights).sum((2, 3)) / weights.sum(
                (2, 3)
            ).clamp_min(1.0)
            category_loss = F.cross_entropy(pooled, targets["category"][positive].long())

        loss = tile_loss + self.dense_weight * dense_loss + self.category_weight * category_loss
        return {
            "loss": loss,
            "tile_loss": tile_loss.detach(),
            "dense_loss": dense_loss.detach(),
            "category_loss": category_loss.detach(),
            "tile_logits": tile_logits.detach(),
        }


# -- whole-scan validation and hard negatives ------------------------------------------


@dataclass(frozen=True)
class ValidationScan:
    """A validation scan kept on the model grid: decoded once per run, not once per epoch."""

    record: ScanRecord
    prepared: np.ndarray  # float32 [C, H', W'] in [0, 1]
    shape_hw: tuple[int, int]  # the scan's own pixels, where predictions are reported
    spacing_mm: tuple[float, float]


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
        prediction = predictor.predict_array(
            item.prepared, scan_shape_hw=item.shape_hw, scan_spacing_mm=item.spacing_mm
        )
        predictions.append((item, prediction))
        outcomes.append(ScanOutcome.of(item.record, prediction))
    return compute_metrics(outcomes), predictions


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


def _validation_records(
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
            ValidationScan(
                record, prepare(scan, preprocessing), scan.attenuation.shape[-2:], scan.spacing_mm
            )
        )
    return scans


# -- the end of a run: calibrate, save, log, register ----------------------------------


def _finish(
    run_dir: Path,
    bundle_dir: Path,
    network: DenseLogitNet,
    config: Config,
    preprocessing: Preprocessing,
    val_records: Sequence[ValidationScan],
    state: TrainingState,
    tracker: Tracker,
    device: torch.device,
    progress: bool,
    *,
    split_digest: str = "",
) -> TrainResult:
    best_path = run_dir / "best.pt"
    if best_path.exists():
        network.load_state_dict(_load_checkpoint(best_path)["model"])
    bundle = _bundle(network, config, preprocessing, threshold=0.5, run_id=state.mlflow_run_id)
    metrics, predictions = validate(
        bundle, val_records, device=device, config=config, progress=progress
    )
    clean_scores = [p.score for item, p in predictions if item.record.label == 0]
    calibration = calibrate_threshold(clean_scores, config.validation.target_far)
    bundle.threshold = calibration.threshold
    bundle.metadata.update(
        best_epoch=state.best_epoch,
        **calibration.to_metadata(),
        # evaluate draws the test split exactly as this run drew it
        split={
            "val_fraction": config.data.val_fraction,
            "test_fraction": config.data.test_fraction,
            "seed": config.seed,
            "digest": split_digest,
        },
    )
    if config.model.weights:
        bundle.metadata["parent"] = str(config.model.weights)
    bundle.save(bundle_dir)

    final = metrics.to_flat_dict()
    tracker.log_metrics(
        {f"best/{key}": value for key, value in final.items()}, step=state.best_epoch
    )
    tracker.log_metrics({"best/threshold": bundle.threshold}, step=state.best_epoch)
    _log_figures(tracker, metrics, predictions, bundle, config)
    tracker.log_text(json.dumps(final, indent=2, sort_keys=True), "metrics/best.json")

    model_uri = None
    if state.mlflow_run_id and tracker.available:
        try:
            logged = log_model(
                bundle_dir,
                run_id=state.mlflow_run_id,
                tracking_uri=tracker.tracking_uri,
                registered_model=config.tracking.registered_model,
                example_paths=[str(item.record.path) for item in val_records[:1]],
            )
            model_uri = logged.registry_uri
        except Exception as exc:  # the weights are safe in bundle_dir; say so and go on
            log.warning(
                "could not log the model to MLflow (%s); it is saved in %s", exc, bundle_dir
            )
    return TrainResult(
        run_id=state.mlflow_run_id,
        model_uri=model_uri,
        run_dir=run_dir,
        bundle_dir=bundle_dir,
        best_epoch=state.best_epoch,
        metrics=final,
    )


def _log_figures(
    tracker: Tracker,
    metrics: ScanMetrics,
    predictions: Sequence[tuple[ValidationScan, Prediction]],
    bundle: ModelBundle,
    config: Config,
) -> None:
    import matplotlib.pyplot as plt

    from scanml import plots

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
        image = plots.overlay_image(
            scan, prediction, title=title, heat_floor=bundle.region_threshold
        )
        tracker.log_image(image, f"overlays/{item.record.scan_id}.png")


# -- checkpoints ------------------------------------------------------------------------


@dataclass
class TrainingState:
    """Everything besides tensors that a resumed run needs to continue identically."""

    epoch: int = 0
    best_metric: float = math.nan
    best_epoch: int = 0
    stale_epochs: int = 0
    mlflow_run_id: str | None = None
    hard_negatives: dict[str, list[tuple[int, int, float]]] = field(default_factory=dict)
    elapsed_s: float = 0.0  # wall time of the finished epochs, across resumes
    planned_epochs: int | None = None  # set by a time budget
    smoothed_metric: float = math.nan

    def smooth(self, value: float, factor: float) -> float:
        """The monitored value smoothed exponentially over validations (``factor`` 0: as is)."""
        if factor and not math.isnan(value) and not math.isnan(self.smoothed_metric):
            value = factor * self.smoothed_metric + (1 - factor) * value
        self.smoothed_metric = value
        return value

    def improves(self, value: float, mode: str) -> bool:
        if math.isnan(value):
            return math.isnan(self.best_metric) and self.best_epoch == 0
        if math.isnan(self.best_metric):
            return True
        return value > self.best_metric if mode == "max" else value < self.best_metric

    def to_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "best_metric": self.best_metric,
            "best_epoch": self.best_epoch,
            "stale_epochs": self.stale_epochs,
            "mlflow_run_id": self.mlflow_run_id,
            "hard_negatives": {k: [list(p) for p in v] for k, v in self.hard_negatives.items()},
            "elapsed_s": self.elapsed_s,
            "planned_epochs": self.planned_epochs,
            "smoothed_metric": self.smoothed_metric,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingState:
        negatives = {
            k: [(int(y), int(x), float(s)) for y, x, s in v]
            for k, v in data["hard_negatives"].items()
        }
        return cls(
            int(data["epoch"]),
            float(data["best_metric"]),
            int(data["best_epoch"]),
            int(data["stale_epochs"]),
            data["mlflow_run_id"],
            negatives,
            float(data.get("elapsed_s", 0.0)),
            data.get("planned_epochs"),
            float(data.get("smoothed_metric", math.nan)),
        )


def _save_checkpoint(
    path: Path,
    network: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    state: TrainingState,
    config: Config,
    epoch: int,
) -> None:
    """One flat dict (model, optimizer, scheduler, RNG, state, configuration), written atomically."""
    snapshot = TrainingState(**{**state.__dict__, "epoch": epoch})
    payload = {
        "format": CHECKPOINT_FORMAT,
        "model": network.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "state": snapshot.to_dict(),
        "rng": _rng_state(),
        "config": config.model_dump_json(),
    }
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(temporary, "wb") as handle:
        torch.save(payload, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def _load_checkpoint(path: Path) -> dict[str, Any]:
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a scanml checkpoint of format {CHECKPOINT_FORMAT}")
    return checkpoint


def _open_run(
    config: Config | None, resume: str | Path | None, overrides: Iterable[str]
) -> tuple[Path, dict[str, Any] | None]:
    """A new run folder, or the folder and last checkpoint of the run to resume."""
    if resume is None:
        assert config is not None, "a configuration is needed for a new run"
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        name = config.tracking.run_name or f"{config.model.architecture}-{stamp}"
        run_dir = Path(config.train.runs_dir) / name
        suffix = 1
        while run_dir.exists():
            suffix += 1
            run_dir = Path(config.train.runs_dir) / f"{name}-{suffix}"
        run_dir.mkdir(parents=True)
        return run_dir.resolve(), None
    run_dir = _find_run_dir(
        resume, config.train.runs_dir if config else load_config().train.runs_dir
    )
    last = run_dir / "last.pt"
    if not last.exists():
        raise FileNotFoundError(
            f"{run_dir}: no last.pt to resume from (killed before the first epoch ended?)"
        )
    checkpoint = _load_checkpoint(last)
    if overrides:
        log.warning(
            "--set is ignored with --resume: the run continues with its saved configuration"
        )
    return run_dir, checkpoint


def _find_run_dir(resume: str | Path, runs_dir: str) -> Path:
    candidate = Path(resume)
    if candidate.is_file():
        return candidate.parent
    if candidate.is_dir():
        return candidate
    for info in sorted(Path(runs_dir).glob("*/run.json")):
        if json.loads(info.read_text()).get("mlflow_run_id") == str(resume):
            return info.parent
    if (Path(runs_dir) / str(resume)).is_dir():
        return Path(runs_dir) / str(resume)
    raise FileNotFoundError(
        f"no run {resume!r}: not a folder, and no run under {runs_dir}/ has that MLflow run id"
    )


def _save_run_info(run_dir: Path, mlflow_run_id: str | None) -> None:
    (run_dir / "run.json").write_text(json.dumps({"mlflow_run_id": mlflow_run_id}, indent=2))


# -- small helpers ----------------------------------------------------------------------


def _bundle(
    network: DenseLogitNet,
    config: Config,
    preprocessing: Preprocessing,
    *,
    threshold: float,
    run_id: str | None,
) -> ModelBundle:
    return ModelBundle(
        network=network,
        architecture=config.model.architecture,
        preprocessing=preprocessing,
        class_names=list(config.model.categories),
        threshold=threshold,
        region_threshold=config.validation.region_threshold,
        metadata={"run_id": run_id, "output_stride": network.output_stride},
    )


def _train_transform(
    config: Config, train_set: ScanDataset, preprocessing: Preprocessing
) -> TrainTransform | EvalTransform:
    if not config.augment.enabled:
        return EvalTransform()
    augment = config.augment
    tip = None
    if augment.tip.enabled and augment.tip.rate > 0:
        tip = ThreatProjector.from_dataset(
            train_set,
            preprocessing,
            rate=augment.tip.rate,
            depth_range=augment.tip.depth,
            synthetic_fraction=augment.tip.synthetic_fraction,
            categories=config.model.categories,
            seed=config.seed,
        )
    return TrainTransform(
        tip=tip,
        hflip=augment.hflip,
        scale_range=augment.scale,
        gain_range=augment.gain,
        offset_range=augment.offset,
        noise=augment.noise,
        i0_range=augment.noise_i0,
        blur=augment.blur,
        blur_sigma=augment.blur_sigma,
        row_streaks=augment.row_streaks,
        beam_profile=augment.beam_profile,
        beam_profile_amplitude=augment.beam_profile_amplitude,
        saturation=augment.saturation,
        saturation_range=augment.saturation_range,
        attenuation_scale=config.model.attenuation_scale,
    )


def _parameter_groups(network: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on norms and biases: decaying them only fights the normalisation."""
    decay, no_decay = [], []
    for parameter in network.parameters():
        if parameter.requires_grad:
            (no_decay if parameter.ndim <= 1 else decay).append(parameter)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def _steps_per_epoch(n_scans: int, config: Config) -> int:
    steps = math.ceil(n_scans * config.data.tiles_per_scan / config.train.batch_size)
    if config.train.max_steps_per_epoch:
        steps = min(steps, config.train.max_steps_per_epoch)
    return max(steps, 1)


class WarmupCosine:
    """Learning-rate factor per step: linear warm-up, then a cosine down to 0 at ``total_steps``.

    ``total_steps`` may be changed while training (a time budget sets it
    once the epoch length is known); being an object, not a closure, it is
    saved with the scheduler's state.
    """

    def __init__(self, warmup_steps: int, total_steps: int) -> None:
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps

    def __call__(self, step: int) -> float:
        if self.warmup_steps and step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = (step - self.warmup_steps) / max(self.total_steps - self.warmup_steps, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def _plan_epochs(budget_s: float, elapsed_s: float, epoch: int, max_epochs: int) -> int:
    """How many epochs fit in the budget, judged from the epochs run so far.

    The mean epoch so far includes the first one's decoding, so the plan
    errs on the short side. At least the epochs already run, at most
    ``max_epochs``.
    """
    mean_epoch_s = elapsed_s / max(epoch, 1)
    fit = epoch + math.floor(max(budget_s - elapsed_s, 0.0) / max(mean_epoch_s, 1e-9))
    return int(min(max(fit, epoch), max_epochs))


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
        "python_gauss": random.getstate()[2],
        "numpy": np.random.get_state()[1].tolist(),
        "numpy_pos": int(np.random.get_state()[2]),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    np.random.set_state(
        ("MT19937", np.asarray(state["numpy"], dtype=np.uint32), state["numpy_pos"], 0, 0.0)
    )
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
