"""The lines a training run prints: banner, epoch line, the resume command."""

from __future__ import annotations

import math
import shlex

from scanml.console import (
    epoch_line,
    interrupted_message,
    mlflow_run_link,
    resume_command,
    start_banner,
)


def test_banner_names_splits_device_run_and_ui_link() -> None:
    banner = start_banner(
        run_name="resnet18-20261201",
        run_dir="runs/resnet18-20261201",
        data_dir="data/raw/synth",
        n_train=210,
        n_val=60,
        n_test=30,
        device="cpu",
        epochs=20,
        run_id="abc123",
        tracking_uri="http://127.0.0.1:5000",
        experiment_id="4",
    )
    assert "210 train, 60 val, 30 test" in banner and "device   cpu" in banner
    assert "http://127.0.0.1:5000/#/experiments/4/runs/abc123" in banner
    offline = start_banner(
        run_name="r",
        run_dir="runs/r",
        data_dir="d",
        n_train=1,
        n_val=1,
        n_test=0,
        device="cuda",
        epochs=2,
        run_id=None,
        tracking_uri="http://down:5000",
        experiment_id=None,
        first_epoch=2,
    )
    assert "resuming at epoch 2" in offline and "unreachable" in offline


def test_epoch_line_is_one_line_with_the_figures_that_matter() -> None:
    line = epoch_line(
        3,
        20,
        loss=0.41234,
        val_auroc=0.9131,
        dr_at_far_1pct=math.nan,
        pointing=0.8,
        seconds=58.24,
        best=True,
    )
    assert line == (
        "epoch  3/20  loss 0.412  val AUROC 0.913  DR@1%FAR n/a  pointing 0.800  58.2 s *"
    )
    assert epoch_line(4, 20, loss=0.4, seconds=1.0) == "epoch  4/20  loss 0.400  1.0 s"


def test_interrupt_prints_the_exact_resume_command() -> None:
    message = interrupted_message("my data", "runs/r1", "abc123", last_epoch=3)
    assert "KILLED" in message
    command = message.splitlines()[-1].removeprefix("resume with: ")
    assert shlex.split(command) == ["scanml", "train", "--data", "my data", "--resume", "abc123"]
    assert command == resume_command("my data", "abc123")
    early = interrupted_message("d", "runs/r1", None, last_epoch=0)
    assert "nothing to resume" in early and "--resume" not in early


def test_local_store_link_says_how_to_start_the_ui() -> None:
    assert mlflow_run_link("sqlite:///mlflow.db", "1", "r").endswith("(after `make ui`)")
    assert "--backend-store-uri sqlite:////x/m.db" in mlflow_run_link("sqlite:////x/m.db", "1", "r")
