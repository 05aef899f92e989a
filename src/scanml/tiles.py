"""The tiles a model trains on, cut from the scans of a :class:`~scanml.dataset.ScanDataset`.

Training does not see whole scans: they are 5-25 megapixels. Each epoch a
:class:`TileSampler` plans, per scan, square tiles on the *model's* grid
(positives around annotated objects, random negatives, and hard negatives
that look like threats to a detector: structure now, the model's own false
alarms once the trainer mines them). :class:`TileDataset` reads and prepares
every scan at most once per epoch, in whichever DataLoader worker owns it,
cuts its tiles, augments them, and mixes them through a bounded shuffle
buffer. A per-worker :class:`ScanCache` keeps prepared scans so that later
epochs skip decoding when the cache is large enough.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from scanml.dataset import DataError, ScanDataset, ScanRecord
from scanml.io import ScanReadError, read_scan
from scanml.preprocess import PreparedScan, Preprocessing, prepare_scan

__all__ = [
    "LoaderStats",
    "PreparedScan",
    "ScanCache",
    "Tile",
    "TileDataset",
    "TileSampler",
    "TileSpec",
    "collate_tiles",
    "prepare_record",
]

log = logging.getLogger(__name__)

TileSource = Literal["positive", "random", "hard", "structure", "tip"]


@dataclass(frozen=True)
class TileSpec:
    """One planned tile: its top-left corner on the model grid and why it was chosen."""

    scan_index: int
    y0: int
    x0: int
    label: int
    category_index: int  # -1 for negatives
    source: TileSource


@dataclass
class Tile:
    """A tile as cut from a prepared scan, and as the transforms hand it on.

    ``image`` is float32 [C, T, T] in [0, 1] (log-attenuation / scale), zero
    (air) where the tile leaves the scan; ``mask`` is float32 [T, T], 1 inside
    annotated boxes; ``category`` indexes the model's categories, -1 when the
    tile is clean. ``amount`` is float32 [T, T], the net attenuation (model
    units) the objects changed, each box's mean over its box, zero outside;
    None where a box of the scan does not record it.
    """

    image: np.ndarray
    mask: np.ndarray
    label: int
    category: int
    scan_id: str
    source: TileSource
    y0: int
    x0: int
    amount: np.ndarray | None = None


def prepare_record(
    record: ScanRecord,
    preprocessing: Preprocessing,
    categories: Sequence[str],
    *,
    amounts: bool = False,
) -> PreparedScan:
    """Read a scan, bring it onto the model grid, and move its boxes there.

    ``amounts`` keeps each box's annotated contrast (``box_amounts``), for
    the amount target. Raises ScanReadError when the file cannot be read.
    """
    scan = read_scan(record.path, spacing_mm=record.spacing_mm, site=record.site)
    return prepare_scan(
        scan,
        preprocessing,
        scan_id=record.scan_id,
        boxes=[(b.x, b.y, b.w, b.h) for b in record.boxes],
        box_categories=[categories.index(b.category) for b in record.boxes],
        box_contrasts=[b.contrast for b in record.boxes] if amounts else None,
    )


class TileSampler:
    """Plans each scan's tiles for an epoch, deterministically from (seed, epoch, scan).

    Per scan, ``tiles_per_scan`` tiles: a ``positive_fraction`` of them
    positives when the scan has boxes, a ``hard_negative_fraction`` hard
    negatives, the rest random negatives. A clean scan has no positives to
    give; its negatives keep the hard-to-random ratio of an anomalous scan's.

    - positive: a box is picked and the tile placed uniformly over every
      position that keeps at least ``1 - jitter`` of the object inside
      (``jitter=0.4``: 60 %), so the model sees objects off-centre and cut
      by tile edges, as they appear to it in a whole scan;
    - random: uniform over the scan;
    - hard: centred near the locations the current model scores highest on
      this scan, as mined by the trainer (:meth:`set_hard_negatives`);
      before any mining, or for scans without mined locations, *structure*
      tiles: drawn where the scan is both dense and edged (door ends, corner
      posts, reefer machinery, wheels), which is where a detector's false
      alarms are before it has learned otherwise.

    No negative tile overlaps a box. Mined locations live in shared memory,
    so :meth:`set_hard_negatives` reaches DataLoader workers that are
    already running (``persistent_workers=True``) under fork or spawn.
    """

    def __init__(
        self,
        *,
        tile_size: int = 128,
        tiles_per_scan: int = 16,
        positive_fraction: float = 0.4,
        hard_negative_fraction: float = 0.3,
        jitter: float = 0.4,
        max_hard_per_scan: int = 64,
        seed: int = 0,
    ) -> None:
        if tile_size < 1 or tiles_per_scan < 1 or max_hard_per_scan < 1:
            raise ValueError("tile_size, tiles_per_scan and max_hard_per_scan must be positive")
        if not (0 <= positive_fraction <= 1 and 0 <= hard_negative_fraction <= 1):
            raise ValueError("positive_fraction and hard_negative_fraction must lie in [0, 1]")
        if positive_fraction + hard_negative_fraction > 1:
            raise ValueError("positive_fraction + hard_negative_fraction must not exceed 1")
        if not 0 <= jitter < 1:
            raise ValueError(f"jitter must lie in [0, 1), got {jitter}")
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        self.tile_size = tile_size
        self.tiles_per_scan = tiles_per_scan
        self.positive_fraction = positive_fraction
        self.hard_negative_fraction = hard_negative_fraction
        self.jitter = jitter
        self.max_hard_per_scan = max_hard_per_scan
        self.seed = seed
        # Structure is pooled on cells of a quarter tile: fine enough to find
        # a corner post, coarse enough to be cheap to keep per scan.
        self.structure_cell = max(tile_size // 4, 1)
        self._scan_index: dict[str, int] = {}
        self._hard = torch.zeros(0, max_hard_per_scan, 3, dtype=torch.float32)
        self._hard_count = torch.zeros(0, dtype=torch.int64)

    def bind(self, scan_ids: Sequence[str]) -> None:
        """Allocate the shared table of mined locations for these scans (done by TileDataset)."""
        if self._scan_index and list(self._scan_index) != list(scan_ids):
            raise ValueError(
                "this TileSampler already serves another TileDataset; create one per dataset"
            )
        self._scan_index = {scan_id: index for index, scan_id in enumerate(scan_ids)}
        self._hard = torch.zeros(len(scan_ids), self.max_hard_per_scan, 3).share_memory_()
        self._hard_count = torch.zeros(len(scan_ids), dtype=torch.int64).share_memory_()

    def set_hard_negatives(
        self, locations: Mapping[str, Sequence[tuple[float, float, float]]]
    ) -> None:
        """Replace the mined hard negatives: ``{scan_id: [(y, x, score), ...]}``.

        ``(y, x)`` are tile centres in model-grid pixels of clean scans, as
        the current model scores them highest; the ``max_hard_per_scan``
        best-scoring ones are kept per scan. Scans left out fall back to
        structure tiles. Takes effect at the next epoch each worker starts.
        """
        unknown = sorted(set(locations) - set(self._scan_index))
        if unknown:
            raise ValueError(
                f"hard negatives for scans this sampler does not serve (not in its TileDataset): {unknown[:5]}"
            )
        table = torch.zeros_like(self._hard)
        counts = torch.zeros_like(self._hard_count)
        for scan_id, points in locations.items():
            array = np.asarray(points, dtype=np.float32).reshape(-1, 3)
            best = array[np.argsort(-array[:, 2], kind="stable")[: self.max_hard_per_scan]]
            index = self._scan_index[scan_id]
            table[index, : len(best)] = torch.from_numpy(best)
            counts[index] = len(best)
        self._hard.copy_(table)
        self._hard_count.copy_(counts)

    def structure_weights(self, image: np.ndarray) -> np.ndarray:
        """Sampling weights of structure tiles, one per cell of ``structure_cell`` pixels.

        Mean gradient magnitude times mean density per cell: large where the
        scan is both dense and edged (posts, bars, machinery, wheels), small
        on light corrugated walls (edged but thin) and on smooth cargo.
        """
        cell = self.structure_cell
        _, height, width = image.shape
        gradient = np.zeros((height, width), dtype=np.float32)
        gradient[:, 1:] += np.abs(np.diff(image, axis=2)).sum(axis=0)
        gradient[1:, :] += np.abs(np.diff(image, axis=1)).sum(axis=0)
        density = image.sum(axis=0)
        return (_cell_means(gradient, cell) * _cell_means(density, cell)).astype(np.float64)

    def plan_scan(
        self, scan: PreparedScan, structure: np.ndarray, scan_index: int, epoch: int
    ) -> list[TileSpec]:
        """The tiles of one scan for one epoch."""
        rng = np.random.default_rng((self.seed, epoch, scan_index))
        n_positive = (
            _stochastic_round(self.tiles_per_scan * self.positive_fraction, rng)
            if len(scan.boxes)
            else 0
        )
        n_negative = self.tiles_per_scan - n_positive
        hard_share = (
            self.hard_negative_fraction / (1 - self.positive_fraction)
            if self.positive_fraction < 1
            else 0
        )
        n_hard = min(_stochastic_round(n_negative * hard_share, rng), n_negative)

        specs = self._positives(scan, scan_index, n_positive, rng)
        mined = self._hard[scan_index, : int(self._hard_count[scan_index])].numpy()
        if len(mined):
            hard_source: TileSource = "hard"
            hard = self._around_points(mined, n_hard, rng)
        else:
            hard_source = "structure"
            hard = self._from_structure(structure, scan.boxes, scan.image.shape[1:], n_hard, rng)
        hard = hard[self._box_free(hard, scan.boxes)][:n_hard]
        specs += [TileSpec(scan_index, int(y), int(x), 0, -1, hard_source) for y, x in hard]
        # Random tiles fill the rest, including a hard quota that boxes left short.
        n_random = self.tiles_per_scan - len(specs)
        uniform = self._uniform(scan.image.shape[1:], n_random, rng)
        uniform = uniform[self._box_free(uniform, scan.boxes)][:n_random]
        specs += [TileSpec(scan_index, int(y), int(x), 0, -1, "random") for y, x in uniform]
        return specs

    def _positives(
        self, scan: PreparedScan, scan_index: int, count: int, rng: np.random.Generator
    ) -> list[TileSpec]:
        if count == 0:
            return []
        picked = rng.integers(len(scan.boxes), size=count)
        x, y, w, h = scan.boxes[picked].T.astype(np.float64)
        y0 = self._jittered_start(y, h, rng)
        x0 = self._jittered_start(x, w, rng)
        categories = scan.box_categories[picked]
        return [
            TileSpec(scan_index, int(r), int(c), 1, int(k), "positive")
            for r, c, k in zip(y0, x0, categories, strict=True)
        ]

    def _jittered_start(
        self, start: np.ndarray, length: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        """Tile starts along one axis that keep sqrt(1 - jitter) of the object's extent inside.

        Per axis, so that both axes together keep at least ``1 - jitter`` of
        the object (of the tile, for objects larger than a tile).
        """
        size = self.tile_size
        need = math.sqrt(1 - self.jitter) * np.minimum(length, size)
        low = np.ceil(start + need - size)
        high = np.maximum(np.floor(start + length - need), low)
        return (low + np.floor(rng.random(len(start)) * (high - low + 1))).astype(np.int64)

    def _uniform(self, shape: tuple[int, int], count: int, rng: np.random.Generator) -> np.ndarray:
        height, width = shape
        size = self.tile_size
        # Oversampled: the caller drops the candidates that touch a box.
        n = 4 * count + 8
        return np.stack(
            [
                rng.integers(0, max(height - size, 0) + 1, n),
                rng.integers(0, max(width - size, 0) + 1, n),
            ],
            axis=1,
        )

    def _around_points(
        self, points: np.ndarray, count: int, rng: np.random.Generator
    ) -> np.ndarray:
        """Tiles containing mined locations, shifted by up to a quarter tile so they vary."""
        n = 4 * count + 8
        picked = points[rng.integers(len(points), size=n), :2]
        shift = rng.uniform(-0.25, 0.25, size=(n, 2)) * self.tile_size
        return np.floor(picked + shift - self.tile_size / 2).astype(np.int64)

    def _from_structure(
        self,
        weights: np.ndarray,
        boxes: np.ndarray,
        shape: tuple[int, int],
        count: int,
        rng: np.random.Generator,
    ) -> np.ndarray:
        """Tiles centred in cells drawn by structure weight; none when the scan has no structure.

        Cells whose tiles would touch a box are left out first (with a cell
        of margin), so the draws are not spent on the object's own edges.
        """
        cell = self.structure_cell
        rows, cols = np.indices(weights.shape).reshape(2, -1)
        corners = np.stack([rows, cols], axis=1) * cell - (self.tile_size + cell) // 2
        weights = weights.ravel() * self._box_free(corners, boxes, self.tile_size + 2 * cell)
        total = weights.sum()
        if count == 0 or not total > 0:
            return np.zeros((0, 2), dtype=np.int64)
        n = 4 * count + 8
        picked = rng.choice(weights.size, size=n, p=weights / total)
        centre = (np.stack([rows[picked], cols[picked]], axis=1) + rng.random((n, 2))) * cell
        centre = np.minimum(centre, np.asarray(shape) - 1)
        return np.floor(centre - self.tile_size / 2).astype(np.int64)

    def _box_free(
        self, corners: np.ndarray, boxes: np.ndarray, size: int | None = None
    ) -> np.ndarray:
        """Which candidate tiles (top-left corners [n, 2] as y, x; ``size`` wide) touch no box."""
        if len(boxes) == 0:
            return np.ones(len(corners), dtype=bool)
        y0, x0 = corners[:, :1], corners[:, 1:]
        bx, by, bw, bh = boxes.T
        size = self.tile_size if size is None else size
        overlaps = (y0 < by + bh) & (y0 + size > by) & (x0 < bx + bw) & (x0 + size > bx)
        return ~overlaps.any(axis=1)


@dataclass(frozen=True)
class LoaderStats:
    """Per-scan counters of a TileDataset, summed over workers and epochs."""

    scan_ids: list[str]
    reads: np.ndarray  # decodes (read_scan + prepare)
    cache_hits: np.ndarray
    failures: np.ndarray  # ScanReadError, scan skipped
    tiles: np.ndarray  # tiles emitted

    def totals(self) -> dict[str, int]:
        """The counters summed over scans, e.g. to log as metrics."""
        return {
            "reads": int(self.reads.sum()),
            "cache_hits": int(self.cache_hits.sum()),
            "failures": int(self.failures.sum()),
            "tiles": int(self.tiles.sum()),
        }

    @property
    def failed_scans(self) -> list[str]:
        return [scan_id for scan_id, n in zip(self.scan_ids, self.failures, strict=True) if n]


TileTransform = Callable[[Tile, np.random.Generator], Tile]


def collate_tiles(tiles: Sequence[Tile]) -> dict[str, Any]:
    """Batch tiles: image [N, C, T, T] and mask [N, T, T] float32, label float32 [N],
    category int64 [N] (-1 clean), origin int64 [N, 2] (y0, x0), scan_id and source lists;
    amount [N, T, T] float32 (zero where unknown) and amount_known float32 [N].
    """
    zeros = np.zeros(tiles[0].mask.shape, dtype=np.float32) if tiles else None
    return {
        "amount": torch.from_numpy(
            np.stack([zeros if t.amount is None else t.amount for t in tiles])
        ),
        "amount_known": torch.tensor([t.amount is not None for t in tiles], dtype=torch.float32),
        "image": torch.from_numpy(np.stack([t.image for t in tiles])),
        "mask": torch.from_numpy(np.stack([t.mask for t in tiles])),
        "label": torch.tensor([t.label for t in tiles], dtype=torch.float32),
        "category": torch.tensor([t.category for t in tiles], dtype=torch.int64),
        "origin": torch.tensor([(t.y0, t.x0) for t in tiles], dtype=torch.int64).reshape(-1, 2),
        "scan_id": [t.scan_id for t in tiles],
        "source": [t.source for t in tiles],
    }


class TileDataset(IterableDataset):
    """Training tiles, each scan read and prepared at most once per epoch.

    Each epoch the scans are ordered by (seed, epoch) and sharded over
    DDP ranks and DataLoader workers by scan index, so the same worker owns
    the same scans every epoch and its :class:`ScanCache` (``cache_bytes``
    per worker; keep workers alive with ``persistent_workers=True``) can
    skip decoding them. A worker plans a scan's tiles with the sampler, cuts
    them, applies ``transform(tile, rng)`` and emits them through a shuffle
    buffer of ``shuffle_buffer`` tiles. Tile contents depend only on
    (seeds, epoch, scan), not on the number of workers.

    Call :meth:`set_epoch` before each epoch. Items are :class:`Tile`; pass
    ``collate_fn=TileDataset.collate`` to the DataLoader for batches of
    tensors. Scans that fail to read are logged, skipped and counted in
    :attr:`stats`; anomalous scans without boxes are left out, because no
    tile of theirs is known to be clean.
    """

    collate = staticmethod(collate_tiles)

    def __init__(
        self,
        dataset: ScanDataset,
        preprocessing: Preprocessing,
        sampler: TileSampler,
        *,
        transform: TileTransform | None = None,
        categories: Sequence[str] | None = None,
        cache_bytes: int = 1 << 30,
        shuffle_buffer: int = 512,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        amounts: bool = False,
    ) -> None:
        super().__init__()
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside a world of {world_size}")
        self.categories = list(categories if categories is not None else dataset.categories)
        unknown = sorted(
            {b.category for r in dataset.records for b in r.boxes} - set(self.categories)
        )
        if unknown:
            raise DataError(
                [f"{dataset.root}: box categories {unknown} are not among {self.categories}"]
            )
        self.records = [r for r in dataset.records if r.boxes or r.label == 0]
        if len(self.records) < len(dataset.records):
            log.warning(
                "%d anomalous scans without boxes give no tiles (none of their tiles is known to be clean)",
                len(dataset.records) - len(self.records),
            )
        self.preprocessing = preprocessing
        self.sampler = sampler
        self.transform = transform
        self.cache_bytes = cache_bytes
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.amounts = amounts
        sampler.bind([r.scan_id for r in self.records])
        # Shared memory: set_epoch and the counters reach persistent workers.
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._counters = torch.zeros(4, len(self.records), dtype=torch.int64).share_memory_()
        self._cache: ScanCache | None = None

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose plan the next iteration follows (in every worker)."""
        self._epoch[0] = epoch

    @property
    def epoch(self) -> int:
        return int(self._epoch[0])

    @property
    def stats(self) -> LoaderStats:
        reads, hits, failures, tiles = self._counters.numpy().copy()
        return LoaderStats([r.scan_id for r in self.records], reads, hits, failures, tiles)

    def __len__(self) -> int:
        """Tiles per epoch on this rank, if no scan fails."""
        return (
            len(range(self.rank, len(self.records), self.world_size)) * self.sampler.tiles_per_scan
        )

    def __iter__(self) -> Iterator[Tile]:
        epoch = self.epoch
        info = get_worker_info()
        n_workers, worker = (info.num_workers, info.id) if info else (1, 0)
        order = np.random.default_rng((self.seed, epoch)).permutation(len(self.records))
        # By rank first, so a rank's scans do not depend on its number of workers.
        on_rank = order[order % self.world_size == self.rank]
        mine = on_rank[(on_rank // self.world_size) % n_workers == worker]
        buffer_rng = np.random.default_rng((self.seed, epoch, self.rank, n_workers, worker))
        return _shuffled(self._tiles(mine, epoch), self.shuffle_buffer, buffer_rng)

    def __getstate__(self) -> dict[str, Any]:
        # Workers start with an empty cache rather than a copy of the parent's.
        return {**self.__dict__, "_cache": None}

    def _tiles(self, scan_indices: Iterable[int], epoch: int) -> Iterator[Tile]:
        for scan_index in scan_indices:
            loaded = self._load(int(scan_index))
            if loaded is None:
                continue
            scan, structure = loaded
            specs = self.sampler.plan_scan(scan, structure, int(scan_index), epoch)
            augment_rng = np.random.default_rng((self.seed, epoch, int(scan_index), 1))
            for spec in specs:
                tile = _cut_tile(scan, spec, self.sampler.tile_size)
                yield tile if self.transform is None else self.transform(tile, augment_rng)
            self._counters[3, scan_index] += len(specs)

    def _load(self, scan_index: int) -> tuple[PreparedScan, np.ndarray] | None:
        if self._cache is None:
            self._cache = ScanCache(self.cache_bytes)
        record = self.records[scan_index]
        cached = self._cache.get(record.scan_id)
        if cached is not None:
            self._counters[1, scan_index] += 1
            return cached
        try:
            scan = prepare_record(record, self.preprocessing, self.categories, amounts=self.amounts)
        except ScanReadError as exc:
            self._counters[2, scan_index] += 1
            log.warning("skipping scan %s (%s): %s", record.scan_id, exc.path, exc.reason)
            return None
        self._counters[0, scan_index] += 1
        structure = self.sampler.structure_weights(scan.image)
        self._cache.put(record.scan_id, (scan, structure), scan.nbytes + structure.nbytes)
        return scan, structure


class ScanCache:
    """A least-recently-used cache bounded in bytes.

    Holds prepared scans (model grid, float32) in one worker. An entry
    larger than the whole budget is not kept; ``max_bytes=0`` disables it.
    """

    def __init__(self, max_bytes: int = 1 << 30) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be non-negative, got {max_bytes}")
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._entries: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def get(self, key: Hashable) -> Any | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry[0]

    def put(self, key: Hashable, value: Any, nbytes: int) -> None:
        if key in self._entries:
            self.nbytes -= self._entries.pop(key)[1]
        if nbytes > self.max_bytes:
            return
        while self.nbytes + nbytes > self.max_bytes:
            self.nbytes -= self._entries.popitem(last=False)[1][1]
        self._entries[key] = (value, nbytes)
        self.nbytes += nbytes


# -- helpers: tiles ---------------------------------------------------------------------


def _cut_tile(scan: PreparedScan, spec: TileSpec, size: int) -> Tile:
    """Cut a tile, padding with air (0) where it leaves the scan, and rasterise its boxes."""
    channels, height, width = scan.image.shape
    image = np.zeros((channels, size, size), dtype=np.float32)
    top, left = max(spec.y0, 0), max(spec.x0, 0)
    bottom, right = min(spec.y0 + size, height), min(spec.x0 + size, width)
    if top < bottom and left < right:
        image[:, top - spec.y0 : bottom - spec.y0, left - spec.x0 : right - spec.x0] = scan.image[
            :, top:bottom, left:right
        ]
    mask = np.zeros((size, size), dtype=np.float32)
    amounts = scan.box_amounts
    known = amounts is not None and not np.isnan(amounts).any()
    amount = np.zeros((size, size), dtype=np.float32) if known else None
    for k, (x, y, w, h) in enumerate(scan.boxes):
        # Every pixel the box touches: a partly covered pixel holds part of the object.
        r0, r1 = np.clip([math.floor(y) - spec.y0, math.ceil(y + h) - spec.y0], 0, size)
        c0, c1 = np.clip([math.floor(x) - spec.x0, math.ceil(x + w) - spec.x0], 0, size)
        mask[r0:r1, c0:c1] = 1.0
        if amount is not None:
            amount[r0:r1, c0:c1] += amounts[k]  # attenuation adds along a ray
    return Tile(
        image,
        mask,
        spec.label,
        spec.category_index,
        scan.scan_id,
        spec.source,
        spec.y0,
        spec.x0,
        amount,
    )


def _shuffled(items: Iterator[Tile], size: int, rng: np.random.Generator) -> Iterator[Tile]:
    """Emit items in random order through a buffer of ``size``: bounded memory, tiles of many scans mixed."""
    buffer: list[Tile] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        slot = int(rng.integers(size))
        yield buffer[slot]
        buffer[slot] = item
    for slot in rng.permutation(len(buffer)):
        yield buffer[slot]


def _cell_means(values: np.ndarray, cell: int) -> np.ndarray:
    """Mean over non-overlapping ``cell`` x ``cell`` blocks (zero-padded at the far edges)."""
    height, width = values.shape
    rows, cols = -(-height // cell), -(-width // cell)
    padded = np.zeros((rows * cell, cols * cell), dtype=values.dtype)
    padded[:height, :width] = values
    return padded.reshape(rows, cell, cols, cell).mean(axis=(1, 3))


def _stochastic_round(value: float, rng: np.random.Generator) -> int:
    """Round up with probability equal to the fraction, so counts are right on average."""
    whole = math.floor(value)
    return whole + int(rng.random() < value - whole)
