"""scanml.data on real files: tiny scans written with scanml.io, a manifest and a COCO file."""

from __future__ import annotations

import json
import logging
import multiprocessing
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from scanml.data import (
    Box,
    DataError,
    DataWarning,
    ScanCache,
    ScanDataset,
    ScanRecord,
    TileDataset,
    TileSampler,
    assign_splits,
    load_dataset,
)
from scanml.io import Scan, write_scan
from scanml.preprocess import Preprocessing

BACKGROUND = 0.25  # model units: every scan pixel that is not air holds at least this
SCAN_SHAPE = (96, 160)
SPACING_MM = 5.0


def write_dataset(
    root: Path,
    scans: list[dict],
    *,
    categories: tuple[str, ...] = ("drugs", "weapon"),
    manifest_extra: str = "",
) -> Path:
    """Write ``.npy`` scans (uniform cargo, a post, objects twice as dense) with manifest and COCO.

    Each scan dict: scan_id, label, site, boxes [(x, y, w, h, category_id)], optional
    group / split / array.
    """
    (root / "scans").mkdir(parents=True, exist_ok=True)
    lines, images, annotations = [], [], []
    header = "scan_id,path,label,site,row_spacing_mm,col_spacing_mm,group,split" + manifest_extra
    for index, spec in enumerate(scans):
        array = spec.get("array")
        if array is None:
            array = np.full((1, *SCAN_SHAPE), BACKGROUND * 12.0, dtype=np.float32)
            array[:, :, 140:146] *= 3  # a corner post: structure for hard negatives
            for x, y, w, h, _ in spec.get("boxes", []):
                array[:, y : y + h, x : x + w] *= 2
        name = f"scans/{spec['scan_id']}.npy"
        write_scan(Scan(array, (SPACING_MM, SPACING_MM), ["high"]), root / name)
        lines.append(
            f"{spec['scan_id']},{name},{spec['label']},{spec.get('site', 'antwerp')},"
            f"{SPACING_MM},{SPACING_MM},{spec.get('group', '')},{spec.get('split', '')}"
        )
        images.append(
            {"id": index + 1, "file_name": name, "width": array.shape[2], "height": array.shape[1]}
        )
        for x, y, w, h, category_id in spec.get("boxes", []):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": index + 1,
                    "category_id": category_id,
                    "bbox": [x, y, w, h],
                }
            )
    (root / "manifest.csv").write_text(header + "\n" + "\n".join(lines) + "\n")
    coco = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": name} for i, name in enumerate(categories)],
    }
    (root / "annotations.json").write_text(json.dumps(coco))
    return root


def standard_scans() -> list[dict]:
    """Four scans: two clean, two with boxes (one near a corner, so its tiles need padding)."""
    return [
        {"scan_id": "clean-a", "label": 0},
        {"scan_id": "clean-b", "label": 0, "site": "rotterdam"},
        {"scan_id": "drugs", "label": 1, "boxes": [(60, 30, 24, 16, 1)]},
        {"scan_id": "corner", "label": 1, "boxes": [(2, 80, 20, 14, 2)], "site": "rotterdam"},
    ]


@pytest.fixture
def dataset_dir(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "data", standard_scans())


# -- load_dataset ---------------------------------------------------------------------------


def test_load_dataset_reads_records_boxes_and_extras(tmp_path: Path) -> None:
    root = write_dataset(tmp_path, standard_scans(), manifest_extra=",weight_kg")
    manifest = root / "manifest.csv"
    lines = manifest.read_text().splitlines()
    manifest.write_text(
        "\n".join([lines[0]] + [f"{line},{i * 100}" for i, line in enumerate(lines[1:])])
    )

    dataset = load_dataset(root)

    assert [r.scan_id for r in dataset] == ["clean-a", "clean-b", "drugs", "corner"]
    assert dataset.categories == ["drugs", "weapon"]
    assert dataset.sites == ["antwerp", "rotterdam"]
    drugs = dataset.records[2]
    assert drugs.path == root / "scans/drugs.npy" and drugs.path.is_absolute()
    assert drugs.boxes == [Box(60.0, 30.0, 24.0, 16.0, "drugs")]
    assert drugs.spacing_mm == (SPACING_MM, SPACING_MM)
    assert drugs.extras == {"weight_kg": 200}
    assert dataset.records[3].boxes[0].category == "weapon"
    frame = dataset.to_pandas()
    assert list(frame["n_boxes"]) == [0, 0, 1, 1] and "weight_kg" in frame
    assert len(dataset.digest) == 64 and load_dataset(root).digest == dataset.digest


def test_digest_follows_the_files(dataset_dir: Path) -> None:
    before = load_dataset(dataset_dir).digest
    coco = json.loads((dataset_dir / "annotations.json").read_text())
    coco["annotations"][0]["bbox"][0] += 1
    (dataset_dir / "annotations.json").write_text(json.dumps(coco))
    assert load_dataset(dataset_dir).digest != before


def test_how_each_object_was_hidden_is_read_from_either_coco_convention(
    dataset_dir: Path,
) -> None:
    def hide(coco: dict) -> None:
        coco["annotations"][0]["concealment"] = "rip_on"  # a key of its own
        coco["annotations"][1]["attributes"] = {"concealment": "floor"}  # CVAT's attributes

    before = load_dataset(dataset_dir)
    _edit_coco(dataset_dir, hide)
    after = load_dataset(dataset_dir)

    assert [box.concealment for r in before for box in r.boxes] == [None, None]
    assert [box.concealment for r in after for box in r.boxes] == ["rip_on", "floor"]
    assert after.records[2].boxes[0] == Box(60.0, 30.0, 24.0, 16.0, "drugs", "rip_on")


def _edit_manifest(root: Path, old: str, new: str) -> None:
    manifest = root / "manifest.csv"
    manifest.write_text(manifest.read_text().replace(old, new, 1))


def _edit_coco(root: Path, edit) -> None:
    coco = json.loads((root / "annotations.json").read_text())
    edit(coco)
    (root / "annotations.json").write_text(json.dumps(coco))


BAD_CASES = {
    "missing column": (
        lambda root: _edit_manifest(root, "scan_id,path,label,site", "scan_id,path,labels,site"),
        ["manifest.csv", "missing column", "label"],
    ),
    "duplicate scan_id": (
        lambda root: _edit_manifest(root, "clean-b,", "clean-a,"),
        ["manifest.csv", "row 2 (line 3)", "'scan_id'", "repeats row 1"],
    ),
    "label not 0/1": (
        lambda root: _edit_manifest(
            root, "clean-a,scans/clean-a.npy,0", "clean-a,scans/clean-a.npy,2"
        ),
        ["manifest.csv", "row 1", "'label'", "expected 0 or 1, got '2'"],
    ),
    "path missing": (
        lambda root: (root / "scans/clean-b.npy").unlink(),
        ["manifest.csv", "row 2", "'path'", "no file at"],
    ),
    "bad split": (
        lambda root: _edit_manifest(root, f"{SPACING_MM},,\n", f"{SPACING_MM},,training\n"),
        ["manifest.csv", "row 1", "'split'", "'training'"],
    ),
    "bad spacing": (
        lambda root: _edit_manifest(root, f",{SPACING_MM},{SPACING_MM},", f",{SPACING_MM},-1,"),
        ["manifest.csv", "row 1", "'col_spacing_mm'", "positive"],
    ),
    "unknown file_name": (
        lambda root: _edit_coco(root, lambda c: c["images"][0].update(file_name="scans/nope.npy")),
        ["annotations.json", "images[0]", "'file_name'", "matches no manifest path"],
    ),
    "bbox outside": (
        lambda root: _edit_coco(root, lambda c: c["annotations"][0].update(bbox=[150, 30, 24, 16])),
        ["annotations.json", "annotations[0]", "'bbox'", "leaves the 160 x 96 image"],
    ),
    "bbox not positive": (
        lambda root: _edit_coco(root, lambda c: c["annotations"][0].update(bbox=[60, 30, 0, 16])),
        ["annotations.json", "annotations[0]", "'bbox'", "must be positive"],
    ),
    "unknown category": (
        lambda root: _edit_coco(root, lambda c: c["annotations"][1].update(category_id=9)),
        ["annotations.json", "annotations[1]", "'category_id'", "unknown category 9"],
    ),
    "clean scan with a box": (
        lambda root: _edit_coco(root, lambda c: c["annotations"][0].update(image_id=1)),
        ["annotations.json", "labelled 0", "clean-a"],
    ),
}


@pytest.mark.parametrize("case", BAD_CASES)
def test_load_dataset_names_file_row_and_column(dataset_dir: Path, case: str) -> None:
    breaks, expected = BAD_CASES[case]
    breaks(dataset_dir)
    with pytest.raises(DataError) as caught:
        load_dataset(dataset_dir)
    for fragment in expected:
        assert fragment in str(caught.value), (fragment, str(caught.value))


def test_load_dataset_lists_every_problem_at_once(dataset_dir: Path) -> None:
    _edit_manifest(dataset_dir, "clean-a,scans/clean-a.npy,0", "clean-a,scans/clean-a.npy,x")
    _edit_manifest(dataset_dir, "clean-b,scans/clean-b.npy,0", "clean-b,scans/clean-b.npy,y")
    with pytest.raises(DataError) as caught:
        load_dataset(dataset_dir)
    assert len(caught.value.problems) == 2


def test_anomalous_scan_without_boxes_is_kept_with_a_warning(dataset_dir: Path) -> None:
    _edit_coco(dataset_dir, lambda c: c["annotations"].pop(0))
    with pytest.warns(DataWarning, match="drugs"):
        dataset = load_dataset(dataset_dir)
    assert dataset.records[2].label == 1 and dataset.records[2].boxes == []


def test_missing_annotations_file_is_named(dataset_dir: Path) -> None:
    (dataset_dir / "annotations.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"annotations\.json"):
        load_dataset(dataset_dir)


# -- assign_splits ----------------------------------------------------------------------------


def _records(n: int, *, groups: bool = False) -> ScanDataset:
    records = [
        ScanRecord(
            scan_id=f"s{i:03d}",
            path=Path(f"/scans/s{i:03d}.dcm"),
            label=int(i % 4 == 0),
            site=("antwerp", "rotterdam", "santos")[i % 3],
            extras={"group": f"container-{i // 3}"} if groups else {},
        )
        for i in range(n)
    ]
    return ScanDataset(records, ["drugs"], Path("/scans"))


def test_splits_are_disjoint_stratified_and_deterministic() -> None:
    dataset = _records(240)
    split = assign_splits(dataset, val_fraction=0.2, test_fraction=0.1, seed=3)

    names = {s: {r.scan_id for r in split.split(s)} for s in ("train", "val", "test")}
    assert set.union(*names.values()) == {r.scan_id for r in dataset}
    assert sum(len(v) for v in names.values()) == len(dataset)  # no scan in two splits
    assert (len(names["val"]), len(names["test"])) == (48, 24)
    for stratum, members in Counter((r.site, r.label) for r in dataset).items():
        val = sum(1 for r in split.split("val") if (r.site, r.label) == stratum)
        assert abs(val - 0.2 * members) <= 1, stratum
    again = assign_splits(dataset, val_fraction=0.2, test_fraction=0.1, seed=3)
    assert [r.split for r in again] == [r.split for r in split]
    assert again.digest == split.digest != dataset.digest
    other = assign_splits(dataset, val_fraction=0.2, test_fraction=0.1, seed=4)
    assert [r.split for r in other] != [r.split for r in split]


def test_splits_keep_a_container_together() -> None:
    split = assign_splits(_records(90, groups=True), val_fraction=0.3, test_fraction=0.2, seed=0)
    by_group: dict[str, set[str]] = {}
    for record in split:
        by_group.setdefault(record.extras["group"], set()).add(record.split)
    assert all(len(splits) == 1 for splits in by_group.values())
    assert {s for splits in by_group.values() for s in splits} == {"train", "val", "test"}


def test_manifest_splits_are_kept_and_checked_for_leaks(tmp_path: Path) -> None:
    scans = [
        {"scan_id": "a", "label": 0, "split": "train", "group": "c1"},
        {"scan_id": "b", "label": 0, "split": "val", "group": "c2"},
        {"scan_id": "c", "label": 0, "split": "test", "group": "c2"},
    ]
    dataset = load_dataset(write_dataset(tmp_path / "leak", scans))
    with pytest.raises(DataError, match="group:c2"):
        assign_splits(dataset, val_fraction=0.2, test_fraction=0.1, seed=0)
    scans[2]["group"] = "c3"
    dataset = load_dataset(write_dataset(tmp_path / "ok", scans))
    kept = assign_splits(dataset, val_fraction=0.5, test_fraction=0.4, seed=0)
    assert [r.split for r in kept] == ["train", "val", "test"]


# -- tiles ------------------------------------------------------------------------------------

PRE = Preprocessing(channels=("high",), spacing_mm=SPACING_MM)  # the scans' own grid


def _tiles(
    root: Path,
    *,
    tile_size: int = 32,
    tiles_per_scan: int = 12,
    cache_bytes: int = 1 << 26,
    **sampler_args,
) -> TileDataset:
    sampler = TileSampler(
        tile_size=tile_size, tiles_per_scan=tiles_per_scan, seed=5, **sampler_args
    )
    return TileDataset(load_dataset(root), PRE, sampler, cache_bytes=cache_bytes, seed=11)


def _epoch(tiles: TileDataset, epoch: int, loader: DataLoader) -> list[dict]:
    tiles.set_epoch(epoch)
    items = []
    for batch in loader:
        for i, scan_id in enumerate(batch["scan_id"]):
            items.append({key: value[i] for key, value in batch.items()} | {"scan_id": scan_id})
    return items


def _fingerprints(items: list[dict]) -> Counter:
    return Counter(
        (item["scan_id"], item["source"], *item["origin"].tolist(), float(item["image"].sum()))
        for item in items
    )


@pytest.mark.parametrize("num_workers", [0, 2])
def test_each_scan_is_read_at_most_once_per_epoch(dataset_dir: Path, num_workers: int) -> None:
    cached = _tiles(dataset_dir)
    uncached = _tiles(dataset_dir, cache_bytes=0)
    for tiles, reads_after_two_epochs in ((cached, 1), (uncached, 2)):
        loader = DataLoader(
            tiles,
            batch_size=8,
            num_workers=num_workers,
            persistent_workers=num_workers > 0,
            collate_fn=tiles.collate,
        )
        first = _epoch(tiles, 0, loader)
        assert tiles.stats.reads.tolist() == [1, 1, 1, 1]
        _epoch(tiles, 1, loader)
        stats = tiles.stats
        assert stats.reads.tolist() == [reads_after_two_epochs] * 4
        assert (stats.reads + stats.cache_hits).tolist() == [2] * 4
        assert len(first) == len(tiles) == 4 * 12 and stats.totals()["tiles"] == 2 * 4 * 12


def test_tiles_do_not_depend_on_the_number_of_workers(dataset_dir: Path) -> None:
    tiles = _tiles(dataset_dir)
    serial = DataLoader(tiles, batch_size=8, collate_fn=tiles.collate)
    parallel = DataLoader(tiles, batch_size=8, num_workers=2, collate_fn=tiles.collate)
    epoch_0 = _fingerprints(_epoch(tiles, 0, serial))
    assert _fingerprints(_epoch(tiles, 0, parallel)) == epoch_0
    assert _fingerprints(_epoch(tiles, 1, serial)) != epoch_0


def test_ranks_share_out_the_scans(dataset_dir: Path) -> None:
    dataset, sampler_args = load_dataset(dataset_dir), {"tile_size": 32, "tiles_per_scan": 3}
    per_rank = [
        TileDataset(dataset, PRE, TileSampler(**sampler_args), rank=rank, world_size=2)
        for rank in (0, 1)
    ]
    scans = [{tile.scan_id for tile in tiles} for tiles in per_rank]
    assert scans[0].isdisjoint(scans[1]) and len(scans[0] | scans[1]) == 4
    assert [len(tiles) for tiles in per_rank] == [6, 6]


def test_positives_hold_their_object_and_negatives_touch_no_box(dataset_dir: Path) -> None:
    tiles = _tiles(
        dataset_dir, tiles_per_scan=40, positive_fraction=0.5, hard_negative_fraction=0.3
    )
    boxes = {r.scan_id: r.boxes for r in load_dataset(dataset_dir)}
    items = _epoch(tiles, 0, DataLoader(tiles, batch_size=16, collate_fn=tiles.collate))
    sources = Counter(item["source"] for item in items)
    assert sources["positive"] == 40 and sources["structure"] > 0 and sources["random"] > 0
    size = 32
    for item in items:
        y0, x0 = item["origin"].tolist()
        image, mask = item["image"].numpy()[0], item["mask"].numpy()
        if item["source"] == "positive":
            assert item["label"] == 1.0 and item["category"] >= 0
            visible = max(
                _overlap(b, y0, x0, size) / min(b.w * b.h, size * size)
                for b in boxes[item["scan_id"]]
            )
            assert visible >= 0.6 - 1e-6
            assert mask.sum() > 0 and np.allclose(image[mask == 1], 2 * BACKGROUND)
        else:
            assert item["label"] == 0.0 and item["category"] == -1 and mask.sum() == 0
            assert all(_overlap(b, y0, x0, size) == 0 for b in boxes[item["scan_id"]])
        # Pixels inside the scan hold the scan; those outside it are air.
        rows, cols = np.arange(y0, y0 + size)[:, None], np.arange(x0, x0 + size)[None, :]
        inside = (rows >= 0) & (rows < SCAN_SHAPE[0]) & (cols >= 0) & (cols < SCAN_SHAPE[1])
        assert np.all(image[~inside] == 0) and np.all(image[inside] >= BACKGROUND - 1e-6)
    corner = [i for i in items if i["scan_id"] == "corner" and i["source"] == "positive"]
    assert any(i["origin"][1] < 0 or i["origin"][0] + size > SCAN_SHAPE[0] for i in corner)


def _overlap(box: Box, y0: int, x0: int, size: int) -> float:
    rows = max(0.0, min(box.y + box.h, y0 + size) - max(box.y, y0))
    cols = max(0.0, min(box.x + box.w, x0 + size) - max(box.x, x0))
    return rows * cols


def test_boxes_follow_the_scan_onto_a_coarser_model_grid(dataset_dir: Path) -> None:
    coarse = Preprocessing(channels=("high",), spacing_mm=2 * SPACING_MM)
    sampler = TileSampler(
        tile_size=16, tiles_per_scan=8, positive_fraction=1.0, hard_negative_fraction=0
    )
    tiles = TileDataset(load_dataset(dataset_dir), coarse, sampler)
    for tile in tiles:
        if tile.source == "positive":
            dense = tile.image[0] > 1.5 * BACKGROUND  # the object, away from its blurred rim
            assert dense.any() and np.all(tile.mask[dense] == 1)


def test_structure_tiles_find_dense_edged_places(tmp_path: Path) -> None:
    array = np.zeros((1, *SCAN_SHAPE), dtype=np.float32)
    array[:, :, 120:128] = 8.0  # a corner post; the rest of the scan is air
    root = write_dataset(tmp_path, [{"scan_id": "post", "label": 0, "array": array}])
    tiles = _tiles(root, tiles_per_scan=40, positive_fraction=0.0, hard_negative_fraction=0.5)
    structure = [t for t in tiles if t.source == "structure"]
    assert len(structure) == 20
    assert all(t.image.max() > 0 for t in structure)  # every one sees the post
    random = [t for t in tiles if t.source == "random"]
    assert sum(t.image.max() > 0 for t in random) < len(random)


def test_mined_hard_negatives_reach_running_spawned_workers(dataset_dir: Path) -> None:
    tiles = _tiles(
        dataset_dir, tiles_per_scan=10, positive_fraction=0.0, hard_negative_fraction=1.0
    )
    loader = DataLoader(
        tiles,
        batch_size=10,
        num_workers=2,
        persistent_workers=True,
        collate_fn=tiles.collate,
        multiprocessing_context=multiprocessing.get_context("spawn"),
    )
    assert "hard" not in {i["source"] for i in _epoch(tiles, 0, loader)}
    tiles.sampler.set_hard_negatives({"clean-a": [(40, 100, 3.0), (10, 10, -1.0)]})
    items = _epoch(tiles, 1, loader)
    hard = [i for i in items if i["source"] == "hard"]
    assert len(hard) == 10 and {i["scan_id"] for i in hard} == {"clean-a"}
    for item in hard:
        y0, x0 = item["origin"].tolist()
        assert any(y0 <= y < y0 + 32 and x0 <= x < x0 + 32 for y, x in [(40, 100), (10, 10)])
    assert tiles.stats.reads.tolist() == [1, 1, 1, 1]
    with pytest.raises(ValueError, match="does not serve"):
        tiles.sampler.set_hard_negatives({"unknown-scan": [(0, 0, 1.0)]})


def test_unreadable_scan_is_logged_skipped_and_counted(
    dataset_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (dataset_dir / "scans/clean-b.npy").write_bytes(b"not an array at all")
    tiles = _tiles(dataset_dir)
    with caplog.at_level(logging.WARNING, logger="scanml.tiles"):
        emitted = list(tiles)
    assert {t.scan_id for t in emitted} == {"clean-a", "drugs", "corner"}
    assert tiles.stats.failed_scans == ["clean-b"] and tiles.stats.totals()["failures"] == 1
    assert "clean-b" in caplog.text and "clean-b.npy" in caplog.text


def test_tile_dataset_pickles_and_batches_typed_tensors(dataset_dir: Path) -> None:
    tiles = pickle.loads(pickle.dumps(_tiles(dataset_dir)))
    batch = next(iter(DataLoader(tiles, batch_size=5, collate_fn=tiles.collate)))
    assert batch["image"].dtype == torch.float32 and batch["image"].shape == (5, 1, 32, 32)
    assert batch["mask"].shape == (5, 32, 32) and batch["label"].dtype == torch.float32
    assert batch["category"].dtype == torch.int64 and batch["origin"].shape == (5, 2)
    assert float(batch["image"].min()) >= 0 and float(batch["image"].max()) <= 1


def test_scan_cache_evicts_least_recently_used_by_bytes() -> None:
    cache = ScanCache(max_bytes=100)
    cache.put("a", "A", 40)
    cache.put("b", "B", 40)
    assert cache.get("a") == "A"  # now b is the least recently used
    cache.put("c", "C", 40)
    assert "b" not in cache and cache.get("a") == "A" and cache.get("c") == "C"
    cache.put("huge", "H", 101)
    assert "huge" not in cache and cache.nbytes == 80
