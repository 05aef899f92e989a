"""The amount target: the net attenuation each concealment changed, from the annotation
through the tiles, the augmentation and the loss to the network's second head."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from scanml.config import load_config
from scanml.data import ScanDataset, TileDataset, TileSampler, load_dataset
from scanml.losses import DenseTileLoss, cell_targets
from scanml.models import ModelBundle, create_model
from scanml.preprocess import Preprocessing
from scanml.tiles import Tile, collate_tiles, prepare_record
from scanml.transforms import EvalTransform, ThreatProjector, TrainTransform

SMOKE = Path(__file__).parent.parent / "configs" / "smoke.yaml"


def test_each_box_carries_its_annotated_contrast_onto_its_tiles(tiny_dataset: Path) -> None:
    dataset = load_dataset(tiny_dataset)
    pre = Preprocessing(channels=("high",), spacing_mm=16.0)
    record = next(r for r in dataset if r.boxes)
    assert all(isinstance(b.contrast, float) for b in record.boxes)  # scanml synth writes it

    scan = prepare_record(record, pre, dataset.categories, amounts=True)
    expected = [b.contrast / pre.attenuation_scale for b in record.boxes]
    np.testing.assert_allclose(scan.box_amounts, expected, rtol=1e-6)

    sampler = TileSampler(
        tile_size=64, tiles_per_scan=4, positive_fraction=1.0, hard_negative_fraction=0.0, seed=0
    )
    tiles = TileDataset(
        ScanDataset([record], dataset.categories, dataset.root),
        pre,
        sampler,
        transform=EvalTransform(),
        amounts=True,
    )
    positives = [t for t in tiles if t.label == 1]
    assert positives
    for tile in positives:
        # Inside a box (one box here, or the sum where boxes overlap), outside zero.
        assert tile.amount is not None and tile.amount.shape == tile.mask.shape
        assert np.all(tile.amount[tile.mask == 0] == 0)
        inside = np.unique(tile.amount[tile.mask == 1])
        assert len(record.boxes) > 1 or np.allclose(inside, expected[0])


def test_a_box_without_contrast_leaves_the_tile_without_an_amount(tiny_dataset: Path) -> None:
    dataset = load_dataset(tiny_dataset)
    pre = Preprocessing(channels=("high",), spacing_mm=16.0)
    record = next(r for r in dataset if r.boxes)
    unknown = replace(record, boxes=[replace(b, contrast=None) for b in record.boxes])
    scan = prepare_record(unknown, pre, dataset.categories, amounts=True)
    assert np.isnan(scan.box_amounts).all()

    sampler = TileSampler(
        tile_size=64, tiles_per_scan=2, positive_fraction=1.0, hard_negative_fraction=0.0, seed=0
    )
    tiles = list(
        TileDataset(
            ScanDataset([unknown], dataset.categories, dataset.root),
            pre,
            sampler,
            transform=EvalTransform(),
            amounts=True,
        )
    )
    assert tiles and all(t.amount is None for t in tiles)
    batch = collate_tiles(tiles)
    assert batch["amount_known"].tolist() == [0.0] * len(tiles)
    assert float(batch["amount"].abs().sum()) == 0.0


def _tile_with_amount() -> Tile:
    image = np.full((1, 64, 64), 0.2, dtype=np.float32)
    mask = np.zeros((64, 64), dtype=np.float32)
    amount = np.zeros((64, 64), dtype=np.float32)
    image[:, 20:40, 8:30] += 0.1
    mask[20:40, 8:30] = 1.0
    amount[20:40, 8:30] = 0.1
    return Tile(image, mask, 1, 0, "scan", "positive", 0, 0, amount)


def test_the_amount_map_follows_the_geometry_as_the_mask_does() -> None:
    tile = _tile_with_amount()
    off = {"scale_range": (1.0, 1.0), "gain_range": (1.0, 1.0), "offset_range": (0.0, 0.0)}
    off |= {"noise": 0.0, "blur": 0.0, "row_streaks": 0.0}
    flipped = TrainTransform(**off | {"hflip": 1.0})(tile, np.random.default_rng(0))
    np.testing.assert_array_equal(flipped.amount, tile.amount[:, ::-1])

    scaled = TrainTransform(**off | {"hflip": 0.0, "scale_range": (0.8, 1.25)})
    rng = np.random.default_rng(1)
    for _ in range(5):
        out = scaled(tile, rng)
        # Nearest, never blended: the amount is the box's value exactly where the mask is.
        assert set(np.unique(out.amount)) <= {0.0, np.float32(0.1)}
        np.testing.assert_array_equal(out.amount > 0, out.mask > 0)


def test_threat_projection_adds_what_it_pasted_to_the_amount() -> None:
    tile = _tile_with_amount()
    tile = replace(tile, mask=np.zeros_like(tile.mask), amount=np.zeros_like(tile.amount), label=0)
    threat = np.full((1, 6, 10), 0.05, dtype=np.float32)
    out = ThreatProjector.project(tile, threat, 30, 40, 2.0, 1)
    assert out.amount is not None
    np.testing.assert_allclose(out.amount[30:36, 40:50], 0.1)
    assert float(out.amount.sum()) == pytest.approx(0.1 * 60, rel=1e-5)


def test_the_amount_loss_is_zero_at_its_target_and_skips_tiles_that_do_not_record_it() -> None:
    network = create_model("resnet18", in_channels=1, stages=3, output_stride=16)
    grid = network.grid
    mask = torch.zeros(2, 64, 64)
    mask[:, 16:48, 16:48] = 1.0
    targets = {
        "label": torch.tensor([1.0, 1.0]),
        "mask": mask,
        "category": torch.tensor([0, 0]),
        "amount": mask * 0.1,
        "amount_known": torch.tensor([1.0, 0.0]),
    }
    logits = torch.zeros(2, 5, 4, 4)
    criterion = DenseTileLoss(grid=grid, amount_weight=1.0, amount_scale=12.0)
    wanted = 12.0 * cell_targets(targets["amount"], (4, 4), grid, "mean")
    exact = wanted[:, None].clone()
    exact[1] += 5.0  # the second tile records no amount: its error must not count
    assert float(criterion(logits, targets, exact)["amount_loss"]) == 0.0
    off = criterion(logits, targets, exact + 0.2)["amount_loss"]
    assert float(off) > 0.0
    with pytest.raises(ValueError, match="amount head"):
        criterion(logits, targets)


def test_the_amount_head_learns_a_batch_and_survives_the_bundle(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    dataset = load_dataset(tiny_dataset)
    pre = Preprocessing(channels=("high",), spacing_mm=16.0)
    sampler = TileSampler(tile_size=64, tiles_per_scan=2, positive_fraction=0.5, seed=0)
    tiles = TileDataset(dataset, pre, sampler, transform=EvalTransform(), seed=0, amounts=True)
    batch = collate_tiles([t for _, t in zip(range(8), iter(tiles), strict=False)])
    assert float(batch["amount"].abs().sum()) > 0 and batch["amount_known"].all()

    network = create_model("resnet18", in_channels=1, stages=3, output_stride=16, amount_head=True)
    criterion = DenseTileLoss(grid=network.grid, amount_weight=1.0, amount_scale=12.0)
    optimizer = torch.optim.AdamW(network.parameters(), lr=2e-3)
    network.train()
    first = None
    for _ in range(40):
        logits, amount = network(batch["image"], with_amount=True)
        losses = criterion(logits, batch, amount)
        first = float(losses["amount_loss"]) if first is None else first
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
    assert float(losses["amount_loss"]) < 0.2 * first

    network.eval()
    bundle = ModelBundle(network, "resnet18", pre, list(dataset.categories), 0.5, 0.5)
    loaded = ModelBundle.load(bundle.save(tmp_path / "bundle"))
    assert loaded.network.amount_head is not None
    loaded.network.eval()
    with torch.no_grad():
        for got, want in zip(
            loaded.network(batch["image"], with_amount=True),
            network(batch["image"], with_amount=True),
            strict=True,
        ):
            torch.testing.assert_close(got, want)
        # Scoring reads the logits alone, as from a network without the head.
        assert loaded.network(batch["image"]).shape == logits.shape
    plain = create_model("resnet18", in_channels=1, stages=3, output_stride=16)
    with pytest.raises(ValueError, match="no amount head"):
        plain(batch["image"], with_amount=True)


def test_a_run_with_the_amount_loss_logs_it(tiny_dataset: Path, mlflow_uri: str) -> None:
    from mlflow import MlflowClient

    from scanml.train import train

    config = load_config(
        SMOKE,
        ["tracking.run_name=amount", "train.amount_loss_weight=1.0", "train.epochs=1"],
    )
    result = train(config, tiny_dataset, progress=False)
    history = MlflowClient(mlflow_uri).get_metric_history(result.run_id, "train/amount_loss")
    assert history and history[0].value > 0
    assert ModelBundle.load(result.bundle_dir).network.amount_head is not None
