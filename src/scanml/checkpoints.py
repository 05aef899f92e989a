"""A training run on disk: its folder, its checkpoints, and what resuming restores.

A run lives in a local folder (``runs/<name>/``) holding the resolved
configuration, ``run.json`` (its MLflow run id) and two checkpoints,
``last.pt`` and ``best.pt``. A checkpoint is one flat dict (model,
optimizer, scheduler, RNG states, :class:`TrainingState`, configuration),
written atomically and read with ``weights_only=True``; checkpoints never
depend on MLflow.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from scanml.config import Config, load_config
from scanml.fsutil import write_atomically

__all__ = [
    "CHECKPOINT_FORMAT",
    "TrainingState",
    "load_checkpoint",
    "open_run",
    "restore_rng",
    "save_checkpoint",
    "save_run_info",
]

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1


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


def save_checkpoint(
    path: Path,
    network: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    state: TrainingState,
    config: Config,
    epoch: int,
    *,
    average: nn.Module | None = None,
) -> None:
    """One flat dict (model, optimizer, scheduler, RNG, state, configuration), written atomically.

    ``average`` is the weight average (``train.ema_decay``), saved beside the
    weights as they are under ``"average"``.
    """
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
    if average is not None:
        payload["average"] = average.state_dict()
    write_atomically(path, lambda partial: torch.save(payload, partial))


def load_checkpoint(path: Path) -> dict[str, Any]:
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a scanml checkpoint of format {CHECKPOINT_FORMAT}")
    return checkpoint


def open_run(
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
    checkpoint = load_checkpoint(last)
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


def save_run_info(run_dir: Path, mlflow_run_id: str | None) -> None:
    (run_dir / "run.json").write_text(json.dumps({"mlflow_run_id": mlflow_run_id}, indent=2))


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


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    np.random.set_state(
        ("MT19937", np.asarray(state["numpy"], dtype=np.uint32), state["numpy_pos"], 0, 0.0)
    )
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
