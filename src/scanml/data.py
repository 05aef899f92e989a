"""Datasets of scans and the tiles a model trains on: one import for both.

The dataset contract (manifest, COCO annotations, splits) lives in
:mod:`scanml.dataset`, the tile pipeline in :mod:`scanml.tiles`; every name
stays importable from here, as notebooks and scripts use it.
"""

from scanml.dataset import (
    REQUIRED_COLUMNS,
    SPLITS,
    Box,
    DataError,
    DataWarning,
    ScanDataset,
    ScanRecord,
    assign_splits,
    load_dataset,
)
from scanml.tiles import (
    LoaderStats,
    PreparedScan,
    ScanCache,
    Tile,
    TileDataset,
    TileSampler,
    TileSource,
    TileSpec,
    TileTransform,
    collate_tiles,
    prepare_record,
)

__all__ = [
    "REQUIRED_COLUMNS",
    "SPLITS",
    "Box",
    "DataError",
    "DataWarning",
    "LoaderStats",
    "PreparedScan",
    "ScanCache",
    "ScanDataset",
    "ScanRecord",
    "Tile",
    "TileDataset",
    "TileSampler",
    "TileSource",
    "TileSpec",
    "TileTransform",
    "assign_splits",
    "collate_tiles",
    "load_dataset",
    "prepare_record",
]
