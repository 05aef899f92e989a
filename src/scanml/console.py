"""What a training run prints: a start banner, one line per epoch, and how to resume.

The lines are built by pure functions (easy to test, easy to reuse in a
notebook) and printed by :func:`say`, which goes through ``tqdm.write`` so
that a line stays on screen above the progress bars instead of being
overwritten by them. The epoch line reads like the tools data scientists
know (Keras, Lightning, torchvision's references): the epoch, the loss, the
validation figures that matter to customs, the seconds.
"""

from __future__ import annotations

import math
import shlex
import sys
from pathlib import Path

__all__ = [
    "epoch_line",
    "interrupted_message",
    "mlflow_run_link",
    "resume_command",
    "say",
    "start_banner",
]

#: Where ``make ui`` serves the MLflow UI of a local store.
LOCAL_UI = "http://127.0.0.1:5000"


def say(text: str) -> None:
    """Print ``text`` to stderr above any progress bar, flushed."""
    from tqdm.auto import tqdm

    for line in text.splitlines() or [""]:
        tqdm.write(line, file=sys.stderr)
    sys.stderr.flush()


def start_banner(
    *,
    run_name: str,
    run_dir: str | Path,
    data_dir: str | Path,
    n_train: int,
    n_val: int,
    n_test: int,
    device: str,
    epochs: int,
    run_id: str | None,
    tracking_uri: str,
    experiment_id: str | None,
    first_epoch: int = 1,
) -> str:
    """The lines printed once a run has its data, device and MLflow run.

    ``first_epoch`` above 1 marks a resumed run.
    """
    resumed = f", resuming at epoch {first_epoch}" if first_epoch > 1 else ""
    lines = [
        f"scanml train: run {run_name}{resumed}",
        f"  data     {data_dir}: {n_train} train, {n_val} val, {n_test} test scans",
        f"  device   {device}; {epochs} epochs",
        f"  folder   {run_dir}",
    ]
    if run_id:
        lines.append(f"  MLflow   run {run_id} in {tracking_uri}")
        lines.append(f"           {mlflow_run_link(tracking_uri, experiment_id, run_id)}")
    else:
        lines.append(f"  MLflow   unreachable at {tracking_uri}: checkpoints only")
    return "\n".join(lines)


def epoch_line(
    epoch: int,
    epochs: int,
    *,
    loss: float,
    val_auroc: float | None = None,
    dr_at_far_1pct: float | None = None,
    pointing: float | None = None,
    seconds: float,
    best: bool = False,
) -> str:
    """``epoch  3/20  loss 0.412  val AUROC 0.913  DR@1%FAR 0.640  pointing 0.810  58.2 s *``.

    Validation figures are left out on epochs without validation (None);
    NaN (undefined, e.g. one class only) prints as ``n/a``. ``*`` marks a
    new best epoch.
    """
    width = len(str(epochs))
    parts = [f"epoch {epoch:>{width}}/{epochs}", f"loss {_number(loss)}"]
    for label, value in (
        ("val AUROC", val_auroc),
        ("DR@1%FAR", dr_at_far_1pct),
        ("pointing", pointing),
    ):
        if value is not None:
            parts.append(f"{label} {_number(value)}")
    parts.append(f"{seconds:.1f} s")
    return "  ".join(parts) + (" *" if best else "")


def resume_command(data_dir: str | Path, run: str | Path, *, executable: str = "scanml") -> str:
    """The exact command that continues a run: ``scanml train --data D --resume RUN``."""
    return shlex.join([executable, "train", "--data", str(data_dir), "--resume", str(run)])


def interrupted_message(
    data_dir: str | Path, run_dir: str | Path, run_id: str | None, last_epoch: int
) -> str:
    """What Ctrl-C prints: where the run stopped and the command that resumes it."""
    saved = (
        f"epoch {last_epoch} is saved in {Path(run_dir) / 'last.pt'}"
        if last_epoch > 0
        else "no epoch finished, so there is nothing to resume; start the run again"
    )
    lines = [f"interrupted: {saved}; the MLflow run is marked KILLED"]
    if last_epoch > 0:
        lines.append(f"resume with: {resume_command(data_dir, run_id or run_dir)}")
    return "\n".join(lines)


def mlflow_run_link(tracking_uri: str, experiment_id: str | None, run_id: str) -> str:
    """Where to see the run: the server's URL, or ``make ui`` and the local URL for a local store."""
    path = f"#/experiments/{experiment_id or '0'}/runs/{run_id}"
    if tracking_uri.startswith(("http://", "https://")):
        return f"{tracking_uri.rstrip('/')}/{path}"
    if tracking_uri == "sqlite:///mlflow.db":
        return f"{LOCAL_UI}/{path} (after `make ui`)"
    return f"{LOCAL_UI}/{path} (after `mlflow ui --backend-store-uri {tracking_uri}`)"


def _number(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.3f}"
