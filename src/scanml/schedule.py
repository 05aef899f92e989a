"""How long a run trains and how its learning rate moves: the epoch plan and the schedule."""

from __future__ import annotations

import math

from scanml.config import Config

__all__ = ["WarmupCosine", "epoch_steps", "plan_epochs"]


def epoch_steps(n_scans: int, config: Config) -> int:
    steps = math.ceil(n_scans * config.data.tiles_per_scan / config.train.batch_size)
    if config.train.max_steps_per_epoch:
        steps = min(steps, config.train.max_steps_per_epoch)
    return max(steps, 1)


class WarmupCosine:
    """Learning-rate factor per step: linear warm-up, then a cosine down to 0 at ``total_steps``.

    ``total_steps`` may be changed while training (a time budget sets it
    once the epoch length is known); being an object, not a closure, it is
    saved with the scheduler's state. Not ``SequentialLR(LinearLR,
    CosineAnnealingLR)``: under ``train.time_budget_min`` the planned length is
    re-planned after every epoch, and SequentialLR's milestones and
    CosineAnnealingLR's ``T_max`` are fixed when they are built (its recursive
    update assumes ``T_max`` never changes), so they cannot express it.
    """

    def __init__(self, warmup_steps: int, total_steps: int) -> None:
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps

    def __call__(self, step: int) -> float:
        if self.warmup_steps and step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = (step - self.warmup_steps) / max(self.total_steps - self.warmup_steps, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def plan_epochs(budget_s: float, elapsed_s: float, epoch: int, max_epochs: int) -> int:
    """How many epochs fit in the budget, judged from the epochs run so far.

    The mean epoch so far includes the first one's decoding, so the plan
    errs on the short side. At least the epochs already run, at most
    ``max_epochs``.
    """
    mean_epoch_s = elapsed_s / max(epoch, 1)
    fit = epoch + math.floor(max(budget_s - elapsed_s, 0.0) / max(mean_epoch_s, 1e-9))
    return int(min(max(fit, epoch), max_epochs))
