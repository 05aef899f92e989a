"""How fast does a training recipe learn? A laboratory on a fixed set of real crops.

The default preset's 12- and 24-minute runs mix many effects (augmentation,
hard-negative mining, the time budget, validation on whole scans). This
script isolates the optimiser's side: it cuts crops once with scanml's own
loader (:class:`scanml.tiles.TileDataset`, no augmentation), caches them,
then trains scanml's own network and loss on them for a fixed wall-clock
time and prints, every 100 steps, the training tile and dense losses and the
AUROC of the crops of held-out scans (a crop's score: its highest location).

    python benchmarks/recipe_lab.py --data data/some-48-scans --seconds 200
    python benchmarks/recipe_lab.py --data data/some-48-scans --tile 128 --batch 16
    python benchmarks/recipe_lab.py --data data/some-48-scans --tile 128 --batch 16 --input-contrast 33

Use a small dataset (a few dozen scans): the cache holds every crop in
memory. With so few threats the held-out figure is noisy; the training
losses say whether a recipe learns at all (a tile loss that stays where a
constant guess puts it does not). ``reports/quality.md`` quotes its runs.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from scanml.dataset import assign_splits, load_dataset
from scanml.losses import DenseTileLoss
from scanml.models import create_model
from scanml.preprocess import Preprocessing
from scanml.tiles import TileDataset, TileSampler, collate_tiles

CATEGORIES = ["drugs", "weapon", "cigarettes", "other"]


def cut_crops(data: Path, tile: int, train_epochs: int) -> dict[str, dict]:
    """Crops of the train and val splits (a quarter of the scans held out), as batches."""
    dataset = assign_splits(load_dataset(data), val_fraction=0.25, test_fraction=0.0, seed=0)
    pre = Preprocessing(channels=("high",), spacing_mm=8.0)
    crops = {}
    for split, epochs in (("train", train_epochs), ("val", 2)):
        sampler = TileSampler(
            tile_size=tile,
            tiles_per_scan=16,
            positive_fraction=0.3,
            hard_negative_fraction=0.0,
            seed=0,
        )
        tiles = TileDataset(dataset.split(split), pre, sampler, categories=CATEGORIES, seed=0)
        cut = []
        for epoch in range(epochs):
            tiles.set_epoch(epoch)
            cut.extend(tiles)
        crops[split] = collate_tiles(cut)
    return crops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--cache", type=Path, default=None, help="crop cache file (.pt)")
    parser.add_argument("--seconds", type=float, default=200.0)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--optimizer", choices=["adamw", "sgd"], default="adamw")
    parser.add_argument("--dense-loss", choices=["focal", "bce"], default="focal")
    parser.add_argument("--stages", type=int, default=3)
    parser.add_argument("--output-stride", type=int, default=16)
    parser.add_argument("--norm", choices=["batch", "group"], default="batch")
    parser.add_argument(
        "--input-contrast",
        type=lambda text: [int(w) for w in text.split(",")],
        default=None,
        help="model.input_contrast: an odd window in px, or several, comma-separated",
    )
    parser.add_argument("--out", type=Path, default=None, help="write the history as JSON")
    args = parser.parse_args()
    torch.manual_seed(0)

    cache = args.cache or args.data / f".recipe_lab_{args.tile}.pt"
    if cache.exists():
        crops = torch.load(cache, weights_only=False)
    else:
        crops = cut_crops(args.data, args.tile, train_epochs=3)
        torch.save(crops, cache)
    train, val = crops["train"], crops["val"]
    n_train = len(train["label"])
    print(
        f"{n_train} training crops ({float(train['label'].mean()):.0%} positive), "
        f"{len(val['label'])} held-out crops",
        flush=True,
    )

    network = create_model(
        "resnet18",
        1,
        stages=args.stages,
        output_stride=args.output_stride,
        input_contrast=args.input_contrast,
    ).to(memory_format=torch.channels_last)
    if args.norm == "group":
        _batch_to_group_norm(network)
    criterion = DenseTileLoss(dense_loss=args.dense_loss, grid=network.grid)
    if args.optimizer == "adamw":
        optimizer = torch.optim.AdamW(network.parameters(), lr=args.lr, weight_decay=1e-4)
    else:
        optimizer = torch.optim.SGD(
            network.parameters(), lr=args.lr, momentum=0.9, weight_decay=1e-4, nesterov=True
        )

    rng = np.random.default_rng(0)
    history, window, step, started = [], [], 0, time.monotonic()
    while time.monotonic() - started < args.seconds:
        index = torch.from_numpy(rng.choice(n_train, args.batch, replace=False))
        images = train["image"][index].contiguous(memory_format=torch.channels_last)
        targets = {key: train[key][index] for key in ("label", "mask", "category")}
        for group in optimizer.param_groups:  # 100 steps of linear warm-up, then constant
            group["lr"] = args.lr * min(1.0, (step + 1) / 100)
        losses = criterion(network(images), targets)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(network.parameters(), 1.0)
        optimizer.step()
        step += 1
        window.append((float(losses["tile_loss"]), float(losses["dense_loss"])))
        if step % 100 == 0:
            tile_loss, dense_loss = np.mean(window, axis=0)
            window = []
            history.append(
                {
                    "step": step,
                    "seconds": round(time.monotonic() - started),
                    "tile_loss": round(float(tile_loss), 3),
                    "dense_loss": round(float(dense_loss), 3),
                    "held_out_crop_auroc": round(_held_out_auroc(network, val), 3),
                }
            )
            print(history[-1], flush=True)
    if args.out:
        args.out.write_text(json.dumps({"args": vars(args), "history": history}, default=str))


def _held_out_auroc(network: torch.nn.Module, val: dict) -> float:
    network.eval()
    scores = []
    with torch.no_grad():
        for start in range(0, len(val["label"]), 32):
            images = val["image"][start : start + 32].contiguous(memory_format=torch.channels_last)
            scores.append(network(images)[:, 0].amax(dim=(-2, -1)))
    network.train()
    return float(roc_auc_score(val["label"].numpy(), torch.cat(scores).numpy()))


def _batch_to_group_norm(module: torch.nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, torch.nn.BatchNorm2d):
            channels = child.num_features
            setattr(module, name, torch.nn.GroupNorm(min(32, channels // 4), channels))
        else:
            _batch_to_group_norm(child)


if __name__ == "__main__":
    main()
