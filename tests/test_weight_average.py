"""train.ema_decay: the run's model is the exponential moving average of its weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from conftest import CONFIGS
from scanml.config import load_config
from scanml.dataset import load_dataset
from scanml.io import read_scan
from scanml.models import ModelBundle
from scanml.predict import Predictor
from scanml.train import _weight_average, train

SMOKE = CONFIGS / "smoke.yaml"


def test_the_average_follows_the_weights_and_the_batch_norm_statistics() -> None:
    torch.manual_seed(0)
    network = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    assert _weight_average(network, None) is None
    average = _weight_average(network, 0.9)
    assert average is not None
    expected_weight = network[0].weight.detach().clone()
    expected_mean = network[1].running_mean.clone()
    network.train()
    for step in range(5):
        with torch.no_grad():
            network[0].weight.add_(1.0)  # as an optimiser step would move it
        network(torch.randn(4, 1, 8, 8) + step)  # moves the batch-norm statistics
        average.update_parameters(network)
        if step == 0:  # the first update copies
            expected_weight = network[0].weight.detach().clone()
            expected_mean = network[1].running_mean.clone()
        else:
            expected_weight = 0.9 * expected_weight + 0.1 * network[0].weight.detach()
            expected_mean = 0.9 * expected_mean + 0.1 * network[1].running_mean
    torch.testing.assert_close(average.module[0].weight, expected_weight)
    torch.testing.assert_close(average.module[1].running_mean, expected_mean)
    assert not torch.equal(average.module[0].weight, network[0].weight)


def test_a_zero_or_whole_decay_is_refused() -> None:
    for bad in ("0", "1", "1.5"):
        with pytest.raises(ValueError, match="ema_decay"):
            load_config(SMOKE, [f"train.ema_decay={bad}"])


@pytest.mark.slow
def test_the_run_keeps_the_average_as_its_model(tiny_dataset: Path, mlflow_uri: str) -> None:
    config = load_config(
        SMOKE,
        [
            "train.ema_decay=0.9",
            "train.keep=last",
            "train.keep_epoch_models=true",
            "tracking.registered_model=null",
            "validation.overlays=0",
        ],
    )
    result = train(config, tiny_dataset, progress=False)

    last = torch.load(result.run_dir / "last.pt", weights_only=True)
    kept = load_file(result.bundle_dir / "model.safetensors")
    averaged = {k.removeprefix("module."): v for k, v in last["average"].items()}
    assert kept.keys() <= averaged.keys()
    assert all(torch.equal(kept[name], averaged[name]) for name in kept)
    weights = [name for name in kept if name.endswith("weight")]
    assert not all(torch.equal(kept[name], last["model"][name]) for name in weights)
    snapshot = load_file(result.run_dir / "epochs" / "epoch-002" / "model.safetensors")
    assert all(torch.equal(kept[name], snapshot[name]) for name in kept)
    metadata = json.loads((result.bundle_dir / "model.json").read_text())["metadata"]
    assert metadata["ema_decay"] == 0.9

    record = load_dataset(tiny_dataset).records[0]
    scan = read_scan(record.path, spacing_mm=record.spacing_mm, site=record.site)
    prediction = Predictor(ModelBundle.load(result.bundle_dir)).predict(scan)
    assert 0.0 <= prediction.score <= 1.0
