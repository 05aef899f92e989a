"""What the network learns from a batch of tiles: :class:`DenseTileLoss`."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import sigmoid_focal_loss

from scanml.backbones import OutputGrid
from scanml.models import DenseLogitNet

__all__ = ["DenseTileLoss", "cell_targets"]


def cell_targets(
    mask: torch.Tensor,
    cells_hw: tuple[int, int],
    grid: OutputGrid | None,
    reduce: str = "max",
) -> torch.Tensor:
    """The object mask ``[N, H, W]`` as one target per output cell ``[N, h, w]``.

    A cell is positive when any input pixel of its footprint is inside a box.
    Its footprint is the stride-wide square centred where the network puts
    the cell (``grid.offset + grid.stride * i``, as the heat maps and boxes
    of :mod:`scanml.predict` place it), so a location learns the object that
    scoring will draw under it. A ResNet centres cell ``i`` on pixel
    ``stride * i``: its footprint starts half a stride before, not at, that
    pixel. Without a grid, the mask is cut into ``cells_hw`` equal bins
    (:func:`torch.nn.functional.adaptive_max_pool2d`).

    ``reduce="mean"`` averages the footprint instead: a per-pixel quantity
    (the amount map) as one value per cell.
    """
    if reduce not in ("max", "mean"):
        raise ValueError(f"reduce is 'max' or 'mean', got {reduce!r}")
    mask = mask.float()[:, None]
    if grid is None:
        pool = F.adaptive_max_pool2d if reduce == "max" else F.adaptive_avg_pool2d
        return pool(mask, cells_hw)[:, 0]
    stride = grid.stride
    # Pixel j (centre j + 0.5) belongs to cell i when it lies within half a
    # stride of the cell's centre: cell 0 starts at this pixel index.
    first = math.ceil(grid.offset - stride / 2 - 0.5)
    height, width = mask.shape[-2:]
    # Shift and size the mask onto the cells' footprints: a negative pad crops.
    rows, cols = cells_hw[0] * stride, cells_hw[1] * stride
    canvas = F.pad(mask, (-first, cols - width + first, -first, rows - height + first))
    pool = F.max_pool2d if reduce == "max" else F.avg_pool2d
    return pool(canvas, stride)[:, 0]


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

    - amount (``amount_weight`` > 0): a Huber regression of the net
      attenuation each cell's concealment changed (the tile's ``amount`` map
      averaged over the cell's footprint, in attenuation units: model units
      times ``amount_scale``), zero on clean cells, over the tiles whose
      boxes record it, normalised by the cells that hold an object. The
      mask says *whether* a cell holds an object; this asks *how much*
      material it changed, a question about physics rather than about how
      a simulator draws a box.

    ``grid``: where the network's cells sit on its input (``network.grid``),
    so that each location is taught the object under its own footprint
    (:func:`cell_targets`); train with it. ``None`` cuts the mask into equal
    bins from the tile's corner, which for a ResNet is half a stride off.
    """

    def __init__(
        self,
        dense_weight: float = 1.0,
        category_weight: float = 0.2,
        tile_pooling: str = "max",
        *,
        dense_loss: str = "bce",
        grid: OutputGrid | None = None,
        amount_weight: float = 0.0,
        amount_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if dense_loss not in ("bce", "focal"):
            raise ValueError(f"dense_loss is 'bce' or 'focal', got {dense_loss!r}")
        self.dense_weight = dense_weight
        self.category_weight = category_weight
        self.tile_pooling = tile_pooling
        self.dense_loss = dense_loss
        self.grid = grid
        self.amount_weight = amount_weight
        self.amount_scale = amount_scale

    def forward(
        self,
        dense_logits: torch.Tensor,
        targets: dict[str, torch.Tensor],
        amount: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """The losses of a batch; ``amount`` is the amount head's ``[N, 1, h, w]`` when weighted."""
        anomaly = dense_logits[:, 0]
        labels = targets["label"].float()
        tile_logits = DenseLogitNet.tile_logits(dense_logits, self.tile_pooling)
        tile_loss = F.binary_cross_entropy_with_logits(tile_logits, labels)

        cells = cell_targets(targets["mask"], (anomaly.shape[-2], anomaly.shape[-1]), self.grid)
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

        amount_loss = dense_logits.new_zeros(())
        if self.amount_weight > 0:
            if amount is None:
                raise ValueError("amount_weight > 0 needs the network's amount head output")
            known = targets["amount_known"].float()
            if known.any():
                wanted = self.amount_scale * cell_targets(
                    targets["amount"], (anomaly.shape[-2], anomaly.shape[-1]), self.grid, "mean"
                )
                per_cell = F.huber_loss(amount[:, 0].float(), wanted, reduction="none", delta=0.5)
                per_cell = per_cell * known[:, None, None]
                # Normalised as the focal term is, by the cells that hold an
                # object: nearly every cell is clean, and a mean would let
                # them drown the few that are not.
                objects = ((wanted != 0) & (known[:, None, None] > 0)).sum()
                amount_loss = per_cell.sum() / objects.clamp_min(known.sum())

        loss = (
            tile_loss
            + self.dense_weight * dense_loss
            + self.category_weight * category_loss
            + self.amount_weight * amount_loss
        )
        return {
            "loss": loss,
            "tile_loss": tile_loss.detach(),
            "dense_loss": dense_loss.detach(),
            "category_loss": category_loss.detach(),
            "amount_loss": amount_loss.detach(),
            "tile_logits": tile_logits.detach(),
        }
