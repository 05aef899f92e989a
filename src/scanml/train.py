"""Training: tiles in, a dense anomaly detector out, every run tracked in MLflow.

Reads top to bottom like torchvision's reference ``train.py``: data, model,
loss, optimizer, scheduler, resume, epoch loop. :func:`train_one_epoch` and
:func:`~scanml.validation.validate` are plain functions; validation runs the
same :class:`~scanml.predict.Predictor` on whole scans that scoring uses, so
a validation AUROC is a statement about whole scans, never about tiles.

A run lives in a local folder (``runs/<name>/``) holding the resolved
configuration and two checkpoints, ``last.pt`` and ``best.pt``, each written
atomically (:mod:`scanml.checkpoints`). Checkpoints never depend on MLflow;
``--resume`` continues a killed run from ``last.pt`` in the same MLflow run
and ends with the same weights as an uninterrupted run. The loss lives in
:mod:`scanml.losses`, the epoch plan and learning-rate schedule in
:mod:`scanml.schedule`.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from scanml import distributed
from scanml.checkpoints import (
    TrainingState,
    load_checkpoint,
    open_run,
    restore_rng,
    save_checkpoint,
    save_run_info,
)
from scanml.config import Config, config_from_json
from scanml.console import epoch_line, interrupted_message, say, start_banner
from scanml.dataset import assign_splits, load_dataset
from scanml.device import autocast_dtype, precision_name, resolve_device
from scanml.losses import DenseTileLoss
from scanml.metrics import calibrate_threshold
from scanml.models import DenseLogitNet, ModelBundle, create_model
from scanml.preprocess import Preprocessing
from scanml.pyfunc import log_model
from scanml.schedule import WarmupCosine, epoch_steps, plan_epochs
from scanml.tiles import TileDataset, TileSampler
from scanml.tracking import Tracker, resolve_tracking_uri, run_tags
from scanml.transforms import transform_from_config
from scanml.validation import (
    ValidationScan,
    calibration_chain,
    load_validation_scans,
    log_validation_figures,
    mine_hard_negatives,
    validate,
    variant_scores,
)

# Names that lived here before the loss, validation, schedule and checkpoints
# moved to modules of their own, kept importable from scanml.train.
__all__ = [
    "DenseTileLoss",
    "TrainResult",
    "TrainingState",
    "ValidationScan",
    "WarmupCosine",
    "mine_hard_negatives",
    "train",
    "train_one_epoch",
    "validate",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    """What a finished training leaves behind."""

    run_id: str | None
    model_uri: str | None
    run_dir: Path
    bundle_dir: Path
    best_epoch: int
    metrics: dict[str, float]
    kept_epoch: int = 0  # the epoch whose weights are the model (train.keep)


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
    world = distributed.setup(resolve_device(config.train.device if config else "auto"))
    run_dir, checkpoint = world.from_main(lambda: open_run(config, resume, overrides))
    config = config_from_json(checkpoint["config"]) if checkpoint else config
    assert config is not None
    if checkpoint is None and world.is_main:
        config.save(run_dir / "config.yaml")
    device = world.device(resolve_device(config.train.device))
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
        transform=transform_from_config(config, train_set, preprocessing),
        categories=config.model.categories,
        cache_bytes=config.data.cache_bytes,
        seed=config.seed,
        rank=world.rank,
        world_size=world.world_size,
        amounts=config.train.amount_loss_weight > 0,  # per tile work only when it is learnt
    )
    loader = DataLoader(
        tiles,
        batch_size=config.train.batch_size,
        num_workers=config.data.num_workers,
        persistent_workers=config.data.num_workers > 0,
        pin_memory=device.type == "cuda",
        collate_fn=tiles.collate,
    )
    val_records = load_validation_scans(val_set, config, preprocessing)

    # -- model, loss, optimizer, scheduler ----------------------------------------------
    network = create_model(
        config.model.architecture,
        in_channels=len(preprocessing.channels),
        weights=config.model.weights,
        num_categories=len(config.model.categories),
        output_stride=config.model.output_stride,
        stages=config.model.stages,
        input_contrast=config.model.input_contrast,
        amount_head=config.train.amount_loss_weight > 0,
    ).to(device)
    if config.train.channels_last:
        network = network.to(memory_format=torch.channels_last)
    average = _weight_average(network, config.train.ema_decay)
    # What validation, mining, snapshots and the bundle see: the average where there is one.
    model = network if average is None else average.module
    criterion = DenseTileLoss(
        config.train.dense_loss_weight,
        config.train.category_loss_weight,
        config.train.tile_pooling,
        dense_loss=config.train.dense_loss,
        grid=network.grid,
        amount_weight=config.train.amount_loss_weight,
        amount_scale=preprocessing.attenuation_scale,
    )
    optimizer = torch.optim.AdamW(
        _parameter_groups(network, config.train.weight_decay), lr=config.train.lr
    )
    # each rank steps through its own share of the scans
    steps_per_epoch = epoch_steps(math.ceil(len(train_set) / world.world_size), config)
    schedule = WarmupCosine(
        round(config.train.warmup_epochs * steps_per_epoch), config.train.epochs * steps_per_epoch
    )
    # A callable object, not a closure: LambdaLR saves its state in the
    # checkpoint, so a resumed run keeps the length a time budget gave it.
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    precision = autocast_dtype(device, config.train.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == torch.float16)

    # -- resume -------------------------------------------------------------------------
    state = TrainingState()
    if checkpoint is not None:
        network.load_state_dict(checkpoint["model"])
        if average is not None:
            if "average" in checkpoint:
                average.load_state_dict(checkpoint["average"])
            else:  # a run saved without one: the average starts from its weights
                log.warning("%s saved no weight average; it starts from the weights", run_dir)
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        state = TrainingState.from_dict(checkpoint["state"])
        restore_rng(checkpoint["rng"])
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
                "train.precision": _precision_name(precision),
            }
        )
        tracker.log_dataset(train_set, name=Path(data_dir).name, context="training")
        tracker.log_dataset(val_set, name=Path(data_dir).name, context="validation")
        tracker.log_artifact(run_dir / "config.yaml")
    if world.is_main:
        save_run_info(run_dir, state.mlflow_run_id)
    trainable = world.wrap(network, device)  # DistributedDataParallel under torchrun
    say(
        start_banner(
            run_name=config.tracking.run_name or run_dir.name,
            run_dir=run_dir,
            data_dir=data_dir,
            n_train=len(train_set),
            n_val=len(val_set),
            n_test=len(dataset.split("test")),
            device=f"{device}, {_precision_name(precision)}",
            epochs=config.train.epochs,
            run_id=state.mlflow_run_id,
            tracking_uri=tracker.tracking_uri,
            experiment_id=tracker.experiment_id,
            first_epoch=state.epoch + 1,
        )
    )

    # -- the epoch loop -----------------------------------------------------------------
    bundle_dir = run_dir / "model"
    checkpoint_to = functools.partial(  # best.pt and last.pt: the same parts, saved whole
        save_checkpoint,
        network=network,
        optimizer=optimizer,
        scheduler=scheduler,
        config=config,
        average=average,
    )
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
                    average=average,
                )
            tracker.log_metrics(
                {f"train/{key}": value for key, value in epoch_stats.items()}, step=epoch
            )
            tracker.log_metrics({"train/lr": scheduler.get_last_lr()[0]}, step=epoch)

            if epoch % config.validation.every == 0 or epoch == config.train.epochs:
                bundle = _bundle(
                    model, config, preprocessing, threshold=0.5, run_id=state.mlflow_run_id
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
                        checkpoint_to(run_dir / "best.pt", state=state, epoch=epoch)
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
                    model, config, preprocessing, threshold=0.5, run_id=state.mlflow_run_id
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
                        plan_epochs, budget_s, state.elapsed_s, epoch, config.train.epochs
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
                    model, config, preprocessing, threshold=0.5, run_id=state.mlflow_run_id
                )
                snapshot.metadata.update(epoch=epoch, elapsed_min=round(state.elapsed_s / 60, 3))
                snapshot.save(run_dir / "epochs" / f"epoch-{epoch:03d}")
            if world.is_main:
                checkpoint_to(run_dir / "last.pt", state=state, epoch=epoch)
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
            average=average,
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
    average: AveragedModel | None = None,
) -> dict[str, float]:
    """One pass over the epoch's tiles; returns mean losses, tile accuracy and throughput.

    ``average`` (``train.ema_decay``) takes in the weights after every optimiser step.
    """
    network.train()
    precision = autocast_dtype(device, config.train.amp)
    totals: dict[str, float] = {
        "loss": 0.0,
        "tile_loss": 0.0,
        "dense_loss": 0.0,
        "category_loss": 0.0,
        "amount_loss": 0.0,
    }
    n_tiles, n_correct, steps = 0, 0, 0
    started = time.perf_counter()
    bar = tqdm(loader, desc=f"epoch {epoch}", unit="batch", disable=not progress, leave=False)
    for batch in bar:
        images = batch["image"].to(device, non_blocking=True)
        if config.train.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        keys = ("label", "mask", "category", "amount", "amount_known")
        targets = {key: batch[key].to(device, non_blocking=True) for key in keys}
        amount = None
        with torch.autocast(device.type, dtype=precision, enabled=precision is not None):
            if criterion.amount_weight > 0:
                dense_logits, amount = network(images, with_amount=True)
            else:
                dense_logits = network(images)
        losses = criterion(dense_logits.float(), targets, amount)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(losses["loss"]).backward()
        if config.train.grad_clip:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(network.parameters(), config.train.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        if average is not None:
            average.update_parameters(network)

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
    average: AveragedModel | None = None,
) -> TrainResult:
    best_path = run_dir / "best.pt"
    kept_epoch = state.epoch
    if config.train.keep == "best" and best_path.exists():
        best = load_checkpoint(best_path)
        if average is not None and "average" in best:
            average.load_state_dict(best["average"])
        else:
            network.load_state_dict(best["model"])
        kept_epoch = state.best_epoch
    if average is not None:  # the model is the average of the weights
        network = average.module
    bundle = _bundle(network, config, preprocessing, threshold=0.5, run_id=state.mlflow_run_id)
    metrics, predictions = validate(
        bundle, val_records, device=device, config=config, progress=progress
    )
    clean_scores = [p.score for item, p in predictions if item.record.label == 0]
    calibration = calibrate_threshold(
        clean_scores,
        config.validation.target_far,
        variant_scores=variant_scores(
            bundle, val_records, device=device, config=config, progress=progress
        ),
    )
    bundle.threshold = calibration.threshold
    bundle.metadata.update(
        best_epoch=state.best_epoch,
        kept_epoch=kept_epoch,
        **calibration.to_metadata(),
        # evaluate draws the test split exactly as this run drew it
        split={
            "val_fraction": config.data.val_fraction,
            "test_fraction": config.data.test_fraction,
            "seed": config.seed,
            "digest": split_digest,
        },
        # evaluate --calibrate-far redraws the clean scans through the same chain
        calibration_chain=calibration_chain(config),
    )
    if average is not None:
        bundle.metadata["ema_decay"] = config.train.ema_decay
    if config.model.weights:
        bundle.metadata["parent"] = str(config.model.weights)
    bundle.save(bundle_dir)

    final = metrics.to_flat_dict()
    # best/* describe the model the run keeps (train.keep), the one `compare` ranks.
    tracker.log_metrics({f"best/{key}": value for key, value in final.items()}, step=kept_epoch)
    tracker.log_metrics(
        {"best/threshold": bundle.threshold, "best/epoch": kept_epoch}, step=kept_epoch
    )
    log_validation_figures(tracker, metrics, predictions, bundle, config)
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
        kept_epoch=kept_epoch,
    )


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


def _weight_average(network: nn.Module, decay: float | None) -> AveragedModel | None:
    """An exponential moving average of ``network``'s weights and batch-norm statistics.

    The batch-norm statistics are averaged with the weights (``use_buffers``),
    so the average needs no pass over the data to recompute them.
    """
    if decay is None:
        return None
    return AveragedModel(network, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


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


def _precision_name(precision: torch.dtype | None) -> str:
    """How the training step computes: ``float32``, or ``bfloat16 autocast``..."""
    return precision_name(precision) + ("" if precision is None else " autocast")


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
