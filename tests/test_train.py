"""Training end to end on simulated scans into a real sqlite MLflow store."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from safetensors.torch import load_file

from conftest import CONFIGS
from scanml.config import load_config
from scanml.train import DenseTileLoss, train

SMOKE = CONFIGS / "smoke.yaml"


@pytest.mark.slow
def test_smoke_training_is_tracked_and_registered(tiny_dataset: Path, mlflow_uri: str) -> None:
    config = load_config(
        SMOKE, ["tracking.run_name=smoke-e2e", "validation.calibration_variants=2"]
    )
    result = train(config, tiny_dataset, progress=False)

    client = MlflowClient(mlflow_uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["model.architecture"] == "resnet18"
    assert run.data.params["data.digest"]
    assert run.data.params["train.precision"] == "float32"  # smoke.yaml: train.amp false
    assert len(run.data.tags["git.commit"]) == 40  # the code's commit, whatever the working folder
    assert "version.torch" in run.data.tags
    history = client.get_metric_history(result.run_id, "train/loss")
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == [1, 2]
    assert len(client.get_metric_history(result.run_id, "val/auroc")) == 2
    assert "best/threshold" in run.data.metrics

    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"config.yaml", "plots", "overlays", "metrics"} <= artifacts
    plots = {Path(a.path).name for a in client.list_artifacts(result.run_id, "plots")}
    assert {
        "roc.png",
        "precision_recall.png",
        "detection_rate_vs_false_alarms.png",
        "confusion_matrix.png",
    } <= plots
    inputs = run.inputs.dataset_inputs
    assert {i.tags[0].value for i in inputs} == {"training", "validation"}

    versions = client.search_model_versions("name='scanml-smoke'")
    assert [v.run_id for v in versions] == [result.run_id]
    assert result.model_uri == f"models:/scanml-smoke/{versions[0].version}"
    assert (result.run_dir / "best.pt").exists() and (result.run_dir / "last.pt").exists()
    assert (result.bundle_dir / "model.safetensors").exists()
    calibration = json.loads((result.bundle_dir / "model.json").read_text())["metadata"]
    assert calibration["calibration_variant_scores"] == 2 * calibration["calibration_scans"] > 0
    chain = calibration["calibration_chain"]  # what evaluate --calibrate-far redraws through
    assert chain["variants"] == 2 and chain["seed"] == 0
    assert chain["augment"] == load_config(SMOKE).augment.model_dump(mode="json")


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_weights(
    tiny_dataset: Path, mlflow_uri: str, tmp_path: Path
) -> None:
    common = [
        "--config",
        str(SMOKE),
        "--data",
        str(tiny_dataset),
        "--set",
        "train.epochs=3",
        "--set",
        "tracking.registered_model=null",
        "--set",
        "validation.overlays=0",
        "--set",
        "train.ema_decay=0.9",  # the weight average must resume too
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    def scanml(*args: str, runs: str, name: str) -> subprocess.Popen:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "scanml",
                "train",
                *common,
                "--set",
                f"train.runs_dir={runs}",
                "--set",
                f"tracking.run_name={name}",
                *args,
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    straight = scanml(runs="straight", name="straight")
    out, _ = straight.communicate(timeout=600)
    assert straight.returncode == 0, out

    killed = scanml(runs="killed", name="killed")
    last = tmp_path / "killed" / "killed" / "last.pt"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and killed.poll() is None:
        if last.exists() and torch.load(last, weights_only=True)["state"]["epoch"] >= 1:
            break
        time.sleep(0.2)
    assert killed.poll() is None, "the run ended before it could be killed"
    time.sleep(1.0)  # well inside epoch 2
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait(timeout=60)

    resumed = subprocess.run(
        [
            sys.executable,
            "-m",
            "scanml",
            "train",
            "--data",
            str(tiny_dataset),
            "--resume",
            str(last.parent),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr

    reference = torch.load(tmp_path / "straight" / "straight" / "last.pt", weights_only=True)
    continued = torch.load(last, weights_only=True)
    assert continued["state"]["epoch"] == reference["state"]["epoch"] == 3
    for part in ("model", "average"):
        for key, tensor in reference[part].items():
            assert torch.equal(tensor, continued[part][key]), (part, key)

    # same MLflow run, finished, with every epoch's metrics
    run_id = continued["state"]["mlflow_run_id"]
    client = MlflowClient(mlflow_uri)
    assert client.get_run(run_id).info.status == "FINISHED"
    assert {m.step for m in client.get_metric_history(run_id, "train/loss")} == {1, 2, 3}


def test_overfits_one_batch(tiny_dataset: Path) -> None:
    """The network, the loss and the optimizer can fit a fixed batch: the basic sanity check."""
    from scanml.data import TileDataset, TileSampler, load_dataset
    from scanml.models import create_model
    from scanml.preprocess import Preprocessing
    from scanml.transforms import EvalTransform

    torch.manual_seed(0)
    dataset = load_dataset(tiny_dataset)
    pre = Preprocessing(channels=("high",), spacing_mm=16.0)
    sampler = TileSampler(
        tile_size=64, tiles_per_scan=2, positive_fraction=0.5, hard_negative_fraction=0.0, seed=0
    )
    tiles = TileDataset(
        dataset,
        pre,
        sampler,
        transform=EvalTransform(),
        categories=["drugs", "weapon", "cigarettes", "other"],
        seed=0,
    )
    batch = tiles.collate([item for _, item in zip(range(8), iter(tiles), strict=False)])
    assert 0 < float(batch["label"].mean()) < 1

    network = create_model("resnet18", in_channels=1, num_categories=4)
    criterion = DenseTileLoss()
    optimizer = torch.optim.AdamW(network.parameters(), lr=2e-3)
    network.train()
    for _ in range(40):
        losses = criterion(network(batch["image"]), batch)
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
    network.eval()
    with torch.no_grad():
        logits = network.tile_logits(network(batch["image"]), "max")
    assert losses["loss"].item() < 0.1
    assert torch.equal(logits > 0, batch["label"] > 0.5)


@pytest.mark.parametrize(("amp", "conv_dtype"), [(False, torch.float32), (True, torch.bfloat16)])
def test_train_amp_runs_the_step_in_reduced_precision_on_float32_weights(
    tiny_dataset: Path, amp: bool, conv_dtype: torch.dtype
) -> None:
    """train.amp on a CPU: the convolutions compute in bfloat16, the weights stay float32
    and the loss still falls; the input convolution (attenuation in physical units, and
    its local contrast) computes in float32 either way."""
    from scanml.data import TileDataset, TileSampler, load_dataset
    from scanml.models import create_model
    from scanml.preprocess import Preprocessing
    from scanml.train import train_one_epoch
    from scanml.transforms import EvalTransform

    torch.manual_seed(0)
    config = load_config(SMOKE, [f"train.amp={str(amp).lower()}", "train.grad_clip=null"])
    sampler = TileSampler(
        tile_size=64, tiles_per_scan=2, positive_fraction=0.5, hard_negative_fraction=0.0, seed=0
    )
    tiles = TileDataset(
        load_dataset(tiny_dataset),
        Preprocessing(channels=("high",), spacing_mm=16.0),
        sampler,
        transform=EvalTransform(),
        categories=config.model.categories,
        seed=0,
    )
    batch = tiles.collate([item for _, item in zip(range(8), iter(tiles), strict=False)])
    network = create_model(
        "resnet18", in_channels=1, num_categories=len(config.model.categories), input_contrast=9
    )
    seen: dict[str, torch.dtype] = {}
    input_conv, next_conv = [m for m in network.modules() if isinstance(m, torch.nn.Conv2d)][:2]
    input_conv.register_forward_hook(lambda _m, _inputs, out: seen.update(input_conv=out.dtype))
    next_conv.register_forward_hook(lambda _m, _inputs, out: seen.update(conv=out.dtype))
    optimizer = torch.optim.AdamW(network.parameters(), lr=2e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)

    def epoch() -> float:
        stats = train_one_epoch(
            network,
            DenseTileLoss(),
            optimizer,
            scheduler,
            torch.amp.GradScaler("cpu", enabled=False),
            [batch] * 10,
            device=torch.device("cpu"),
            epoch=1,
            config=config,
            progress=False,
        )
        return stats["loss"]

    first = epoch()
    for _ in range(2):
        last = epoch()
    assert seen["conv"] == conv_dtype
    assert seen["input_conv"] == torch.float32  # attenuation is read at full precision
    assert all(p.dtype == torch.float32 for p in network.parameters())
    assert math.isfinite(last) and last < 0.5 * first


def test_calibration_variants_redraw_each_clean_scan_through_the_acquisition_chain(
    tiny_dataset: Path,
) -> None:
    """Variants of clean validation scans go through the configured chain, seeded, and
    never the threat projection: a gain of 1.2 alone raises every score of a model whose
    logit is the mean attenuation; a chain of no-ops gives back the scans' own scores."""
    from scanml.data import load_dataset
    from scanml.validation import load_validation_scans, validate, variant_scores
    from test_predict import local_mean_bundle

    bundle = local_mean_bundle()
    still = [
        "augment.scale=[1.0, 1.0]",
        "augment.offset=[0.0, 0.0]",
        "augment.noise=0",
        "augment.blur=0",
        "augment.row_streaks=0",
        "augment.beam_profile=0",
        "augment.saturation=0",
        "augment.tip.rate=1.0",  # on in smoke.yaml; variants must never carry a threat
        "validation.calibration_variants=2",
    ]
    config = load_config(SMOKE, [*still, "augment.gain=[1.0, 1.0]"])
    scans = load_validation_scans(load_dataset(tiny_dataset), config, bundle.preprocessing)
    cpu = torch.device("cpu")
    _, predictions = validate(bundle, scans, device=cpu, config=config, progress=False)
    clean = [p.score for item, p in predictions if item.record.label == 0]
    assert len(clean) >= 3

    same = variant_scores(bundle, scans, device=cpu, config=config, progress=False)
    assert same == pytest.approx([score for score in clean for _ in range(2)], abs=1e-6)

    brighter = load_config(SMOKE, [*still, "augment.gain=[1.2, 1.2]"])
    raised = variant_scores(bundle, scans, device=cpu, config=brighter, progress=False)
    assert len(raised) == 2 * len(clean)
    each = [score for score in clean for _ in range(2)]
    # brighter never scores lower; only a cell already clipped at full scale stays level
    assert all(up >= own - 1e-6 for up, own in zip(raised, each, strict=True))
    assert sum(up > own + 1e-4 for up, own in zip(raised, each, strict=True)) > len(each) / 2

    drawn = load_config(SMOKE, ["validation.calibration_variants=2"])  # the whole chain
    redrawn = variant_scores(bundle, scans, device=cpu, config=drawn, progress=False)
    assert redrawn == variant_scores(bundle, scans, device=cpu, config=drawn, progress=False)
    assert redrawn != pytest.approx(same, abs=1e-6)
    assert (
        variant_scores(
            bundle,
            scans,
            device=cpu,
            config=config.model_copy(
                update={"augment": config.augment.model_copy(update={"enabled": False})}
            ),
            progress=False,
        )
        == []
    )


@pytest.mark.parametrize(
    ("avx512_bf16", "amx", "auto"),
    [(True, False, torch.bfloat16), (False, True, torch.bfloat16), (False, False, None)],
)
def test_amp_auto_is_reduced_precision_only_where_the_device_computes_it(
    monkeypatch: pytest.MonkeyPatch, avx512_bf16: bool, amx: bool, auto: torch.dtype | None
) -> None:
    from scanml.device import autocast_dtype

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert autocast_dtype(cpu, "auto") == auto
    assert autocast_dtype(cpu, False) is None and autocast_dtype(cuda, False) is None
    assert autocast_dtype(cpu, True) == torch.bfloat16  # forced, native or not
    assert autocast_dtype(cuda, True) == torch.float16 == autocast_dtype(cuda, "auto")
    assert autocast_dtype(torch.device("meta"), "auto") is None
    with pytest.raises(ValueError, match="true, false or 'auto'"):
        autocast_dtype(cpu, "sometimes")


@pytest.mark.parametrize(
    ("architecture", "stages", "output_stride"),
    [("resnet18", 3, 16), ("resnet18", None, 32), ("convnext_tiny", None, 32)],
)
def test_each_location_is_taught_the_object_under_its_own_footprint(
    architecture: str, stages: int | None, output_stride: int
) -> None:
    """A one-pixel object is the target of the cell whose centre is nearest,
    as :mod:`scanml.predict` places cells on the scan, for every pixel."""
    from scanml.losses import cell_targets
    from scanml.models import create_model

    grid = create_model(
        architecture, in_channels=1, stages=stages, output_stride=output_stride
    ).grid
    size = 4 * grid.stride
    cells = (size // grid.stride, size // grid.stride)
    for pixel in range(size):
        mask = torch.zeros(1, size, size)
        mask[0, pixel, pixel] = 1.0
        target = cell_targets(mask, cells, grid)[0]
        nearest = math.floor((pixel + 0.5 - grid.offset) / grid.stride + 0.5)
        expected = torch.zeros(cells)
        if 0 <= nearest < cells[0]:
            expected[nearest, nearest] = 1.0
        assert torch.equal(target, expected), (pixel, grid)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "train.lr=-1"], "train.lr"),
        (["--set", "model.architecture=vgg_unknown"], "model.architecture"),
        (["--set", "train.bogus=1"], "--set train.bogus=...: no such configuration key"),
    ],
)
def test_invalid_configuration_is_a_clear_cli_error(
    args: list[str], message: str, tmp_path: Path
) -> None:
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "scanml",
            "train",
            "--config",
            str(SMOKE),
            "--data",
            str(tmp_path),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 2
    assert message in completed.stderr
    assert "Traceback" not in completed.stderr


def test_missing_dataset_is_a_clear_cli_error(tmp_path: Path) -> None:
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "scanml",
            "train",
            "--config",
            str(SMOKE),
            "--data",
            str(tmp_path / "none"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 2
    assert f"--data {tmp_path / 'none'}: no such folder" in completed.stderr
    assert "Traceback" not in completed.stderr


def test_time_budget_plans_the_epochs_that_fit() -> None:
    from scanml.schedule import WarmupCosine, plan_epochs

    # 3 epochs of 100 s ran in a 600 s budget: 3 more fit, never more than the maximum.
    assert plan_epochs(600.0, 300.0, 3, 50) == 6
    assert plan_epochs(600.0, 300.0, 3, 4) == 4
    assert plan_epochs(600.0, 700.0, 3, 50) == 3  # over budget: stop where it is
    schedule = WarmupCosine(10, 100)
    assert schedule(0) == pytest.approx(0.1) and schedule(10) == pytest.approx(1.0)
    schedule.total_steps = 50  # a budget shortens the run: the cosine ends there
    assert schedule(50) == pytest.approx(0.0) and schedule(30) == pytest.approx(0.5)


@pytest.mark.slow
def test_a_time_budget_ends_the_run_and_keeps_epoch_snapshots(
    tiny_dataset: Path, mlflow_uri: str
) -> None:
    config = load_config(
        SMOKE,
        [
            "train.epochs=50",
            "train.time_budget_min=0.01",  # less than one epoch: the run stops after the first
            "train.keep_epoch_models=true",
            "train.dense_loss=focal",
            "model.stages=3",
            "train.monitor_smoothing=0.5",
        ],
    )
    result = train(config, tiny_dataset, progress=False)

    snapshots = sorted((result.run_dir / "epochs").glob("epoch-*"))
    assert [path.name for path in snapshots] == ["epoch-001"]
    metadata = json.loads((snapshots[0] / "model.json").read_text())
    assert metadata["stages"] == 3 and metadata["metadata"]["elapsed_min"] > 0
    history = MlflowClient(mlflow_uri).get_metric_history(result.run_id, "train/planned_epochs")
    assert [m.value for m in history] == [1.0]


@pytest.mark.slow
@pytest.mark.parametrize("keep", ["best", "last"])
def test_the_run_keeps_the_epoch_train_keep_names(
    keep: str, tiny_dataset: Path, mlflow_uri: str
) -> None:
    # A constant monitor never improves after epoch 1, so "best" is epoch 1, "last" epoch 2.
    config = load_config(
        SMOKE,
        [
            f"train.keep={keep}",
            "train.monitor=val/n_scans",
            "train.keep_epoch_models=true",
            "augment.tip.enabled=false",
        ],
    )
    result = train(config, tiny_dataset, progress=False)

    expected = {"best": 1, "last": 2}[keep]
    assert (result.best_epoch, result.kept_epoch) == (1, expected)
    kept = load_file(result.bundle_dir / "model.safetensors")
    snapshot = load_file(result.run_dir / "epochs" / f"epoch-{expected:03d}" / "model.safetensors")
    other = load_file(result.run_dir / "epochs" / f"epoch-{3 - expected:03d}" / "model.safetensors")
    assert all(torch.equal(kept[name], snapshot[name]) for name in snapshot)
    assert not all(torch.equal(kept[name], other[name]) for name in other)
    metadata = json.loads((result.bundle_dir / "model.json").read_text())["metadata"]
    assert (metadata["best_epoch"], metadata["kept_epoch"]) == (1, expected)
    run = MlflowClient(mlflow_uri).get_run(result.run_id)
    assert run.data.metrics["best/epoch"] == expected
