"""scanml.transforms: physics of the augmentations, ranges, geometry and determinism."""

from __future__ import annotations

import json
import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from torch.utils.data import DataLoader

from scanml.data import PreparedScan, Tile, TileDataset, TileSampler, load_dataset
from scanml.io import Scan, write_scan
from scanml.physics import ATTENUATION_SCALE
from scanml.preprocess import Preprocessing
from scanml.synth import generate_dataset
from scanml.transforms import (
    EvalTransform,
    ThreatObject,
    ThreatProjector,
    TrainTransform,
    cut_threat_objects,
    generate_threat_objects,
)

SIZE = 64
OFF = {
    "hflip": 0.0,
    "scale_range": (1.0, 1.0),
    "gain_range": (1.0, 1.0),
    "offset_range": (0.0, 0.0),
}
OFF |= {"noise": 0.0, "blur": 0.0, "row_streaks": 0.0}


def make_tile(value: float | np.ndarray = 0.2, channels: int = 2, label: int = 0) -> Tile:
    image = np.broadcast_to(np.asarray(value, dtype=np.float32), (channels, SIZE, SIZE)).copy()
    mask = np.zeros((SIZE, SIZE), dtype=np.float32)
    return Tile(image, mask, label, -1 if label == 0 else 0, "scan", "random", 0, 0)


def random_tile(rng: np.random.Generator, channels: int) -> Tile:
    tile = make_tile(rng.uniform(0, 1, (channels, SIZE, SIZE)), channels)
    tile.mask[10:30, 5:25] = 1.0
    return tile


def brick(channels: int = 2) -> ThreatObject:
    image = np.full((channels, 12, 20), 0.15, dtype=np.float32)
    image[:, :, :5] = 0.3  # asymmetric, so flips and turns show
    return ThreatObject(image, category=1)


# -- threat image projection ------------------------------------------------------------------


def test_projection_adds_exactly_the_attenuation_where_it_lands() -> None:
    tile = make_tile(np.linspace(0.0, 0.95, SIZE, dtype=np.float32)[None, :])
    threat = brick().image
    out = ThreatProjector.project(tile, threat, y=30, x=40, depth=1.5, category=1)

    expected = tile.image.copy()
    expected[:, 30:42, 40:60] = np.minimum(expected[:, 30:42, 40:60] + 1.5 * threat, 1.0)
    np.testing.assert_array_equal(out.image, expected)
    assert out.image.max() == 1.0  # a dense place saturates instead of leaving [0, 1]
    assert (out.label, out.category, out.source) == (1, 1, "tip")
    assert out.mask.sum() == 12 * 20 and out.mask[30:42, 40:60].all()
    assert tile.label == 0 and tile.mask.sum() == 0  # the input tile is left alone


def test_projector_turns_clean_tiles_positive_and_leaves_positives_alone() -> None:
    projector = ThreatProjector([brick()], rate=1.0, depth_range=(0.5, 1.5))
    rng = np.random.default_rng(0)
    for _ in range(20):
        tile = make_tile(0.2)
        out = projector(tile, rng)
        added = out.image - tile.image
        assert out.label == 1 and out.category == 1 and out.source == "tip"
        assert np.all(added >= 0) and np.all(added[:, out.mask == 0] == 0)
        assert out.mask.sum() == 12 * 20  # the object, flipped or turned, fits whole
        depth = added.max() / 0.3
        assert 0.5 - 1e-5 <= depth <= 1.5 + 1e-5
        values = added[added > 0] / depth  # the object's two densities, scaled by the depth
        thin, thick = np.isclose(values, 0.15, atol=1e-4), np.isclose(values, 0.3, atol=1e-4)
        assert np.all(thin | thick) and thin.any() and thick.any()
    positive = make_tile(0.2, label=1)
    assert projector(positive, rng) is positive
    mined = replace(make_tile(0.2), source="hard")
    assert projector(mined, rng) is mined
    assert ThreatProjector([brick()], rate=0.0)(make_tile(), rng).label == 0


def test_projector_crops_objects_larger_than_the_tile() -> None:
    large = ThreatObject(np.full((1, 100, 30), 0.1, dtype=np.float32), category=0)
    tile = make_tile(0.2, channels=1)
    out = ThreatProjector([large], rate=1.0)(tile, np.random.default_rng(1))
    added = out.image - tile.image
    assert out.label == 1 and out.mask.sum() in (SIZE * 30, 30 * SIZE)
    np.testing.assert_allclose(added[0][out.mask == 1] / added.max(), 1.0, rtol=1e-5)


def test_projector_places_objects_in_cargo_never_in_air_and_skips_invisible_ones() -> None:
    rng = np.random.default_rng(0)
    projector = ThreatProjector([brick()], rate=1.0, depth_range=(1.0, 1.0))
    assert projector(make_tile(0.0), rng).label == 0  # open air everywhere: left clean
    half = make_tile(0.0)
    half.image[:, SIZE // 2 :, :] = 0.2  # cargo in the lower half only
    for _ in range(20):
        out = projector(half, rng)
        if out.label:
            rows = np.nonzero(out.mask.any(axis=1))[0]
            assert np.median(half.image[0][out.mask == 1]) >= 0.5 / ATTENUATION_SCALE
            assert rows.max() >= SIZE // 2
    faint = ThreatObject(np.full((2, 8, 8), 0.001, dtype=np.float32), category=0)
    assert ThreatProjector([faint], rate=1.0)(make_tile(0.2), rng).label == 0


def test_cut_objects_remove_a_linearly_varying_background() -> None:
    rows, cols = np.mgrid[0:80, 0:120].astype(np.float32)
    background = 0.1 + 0.002 * rows + 0.001 * cols
    image = np.stack([background, 0.5 * background])
    image[:, 20:35, 50:90] += np.array([0.2, 0.1], dtype=np.float32)[:, None, None]
    image[:, 70:80, 0:10] += 0.05  # a box at the image corner: one ring side each way
    scan = PreparedScan(
        "s",
        image,
        np.array([[50, 20, 40, 15], [0, 70, 10, 10]], dtype=np.float32),
        np.array([2, 0]),
    )
    inside, corner = cut_threat_objects(scan)
    assert inside.category == 2 and inside.image.shape == (2, 15, 40)
    np.testing.assert_allclose(inside.image[0], 0.2, atol=1e-5)
    np.testing.assert_allclose(inside.image[1], 0.1, atol=1e-5)
    assert corner.category == 0 and np.all(corner.image >= 0)
    np.testing.assert_allclose(corner.image, 0.05, atol=0.02)


def test_generated_objects_match_the_model_channels_and_categories() -> None:
    pre = Preprocessing(channels=("high", "low"), spacing_mm=8.0)
    categories = ["drugs", "unknown-to-the-simulator", "cigarettes"]
    objects = generate_threat_objects(pre, categories, 4, seed=0)
    assert len(objects) == 4
    assert {o.category for o in objects} == {0, 2}
    for threat in objects:
        assert threat.image.dtype == np.float32 and threat.image.shape[0] == 2
        assert threat.image.min() >= 0 and 0 < threat.image.max() <= 1
    again = generate_threat_objects(pre, categories, 4, seed=0)
    assert all(np.array_equal(a.image, b.image) for a, b in zip(objects, again, strict=True))
    assert generate_threat_objects(pre, ["unknown"], 4, seed=0) == []


@pytest.fixture
def dataset_dir(tmp_path: Path) -> Path:
    """Three ``.npy`` scans at 4 mm: one clean, three objects 1.2 denser than the cargo."""
    scans, images, annotations = [], [], []
    for index, boxes in enumerate([[], [(10, 10, 20, 12)], [(40, 30, 16, 16), (70, 5, 8, 30)]]):
        array = np.full((1, 60, 100), 2.4, dtype=np.float32)
        for x, y, w, h in boxes:
            array[:, y : y + h, x : x + w] += 1.2
            annotation = {"image_id": index, "category_id": 7, "bbox": [x, y, w, h]}
            annotations.append({"id": len(annotations) + 1, **annotation})
        write_scan(Scan(array, (4.0, 4.0), ["high"]), tmp_path / f"s{index}.npy")
        scans.append(f"s{index},s{index}.npy,{int(bool(boxes))},antwerp,4.0")
        images.append({"id": index, "file_name": f"s{index}.npy", "width": 100, "height": 60})
    manifest = "scan_id,path,label,site,spacing_mm\n" + "\n".join(scans)
    (tmp_path / "manifest.csv").write_text(manifest)
    coco = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 7, "name": "drugs"}],
    }
    (tmp_path / "annotations.json").write_text(json.dumps(coco))
    return tmp_path


PRE = Preprocessing(channels=("high",), spacing_mm=4.0)


def test_projector_from_dataset_cuts_every_annotated_object(dataset_dir: Path) -> None:
    projector = ThreatProjector.from_dataset(
        load_dataset(dataset_dir), PRE, rate=0.5, synthetic_fraction=0.5, n_generated=3
    )
    assert len(projector.objects) == 3 and len(projector.generated) == 3
    for threat in projector.objects:
        np.testing.assert_allclose(threat.image, 1.2 / ATTENUATION_SCALE, atol=1e-5)
    cut_only = ThreatProjector.from_dataset(load_dataset(dataset_dir), PRE, synthetic_fraction=0.0)
    assert cut_only.generated == [] and cut_only.synthetic_fraction == 0.0


def test_augmented_tiles_are_the_same_through_worker_processes(dataset_dir: Path) -> None:
    dataset = load_dataset(dataset_dir)
    tip = ThreatProjector.from_dataset(dataset, PRE, rate=0.5, n_generated=4)
    transform = TrainTransform(tip=tip, noise=1.0)
    sampler = TileSampler(tile_size=32, tiles_per_scan=8)
    tiles = TileDataset(dataset, PRE, sampler, transform=transform, seed=3)
    serial = list(DataLoader(tiles, batch_size=4, collate_fn=tiles.collate))
    parallel = list(DataLoader(tiles, batch_size=4, num_workers=2, collate_fn=tiles.collate))

    def fingerprints(batches: list[dict]) -> list[tuple]:
        return sorted(
            (scan_id, source, round(float(image.sum()), 3), float(label))
            for batch in batches
            for scan_id, source, image, label in zip(
                batch["scan_id"], batch["source"], batch["image"], batch["label"], strict=True
            )
        )

    assert fingerprints(serial) == fingerprints(parallel)
    assert {s for b in serial for s in b["source"]} >= {"tip", "positive"}
    assert all(float(b["image"].min()) >= 0 and float(b["image"].max()) <= 1 for b in serial)


# -- TrainTransform ---------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 2])
def test_every_output_is_float32_in_range_with_its_shape(channels: int) -> None:
    transform = TrainTransform(
        tip=ThreatProjector([brick(channels)], rate=0.5),
        hflip=0.5,
        scale_range=(0.8, 1.2),
        gain_range=(0.5, 1.5),
        offset_range=(-1.0, 1.0),
        noise=1.0,
        i0_range=(1e2, 1e3),  # absurdly noisy, to push values out of range
        blur=1.0,
        row_streaks=1.0,
        streak_std=(0.5, 1.0),
    )
    rng = np.random.default_rng(0)
    tiles = [make_tile(0.0, channels), make_tile(1.0, channels)]
    tiles += [random_tile(rng, channels) for _ in range(30)]
    for tile in tiles:
        out = transform(tile, rng)
        assert out.image.dtype == np.float32 and out.image.shape == (channels, SIZE, SIZE)
        assert out.image.flags.c_contiguous and out.mask.shape == (SIZE, SIZE)
        assert out.image.min() >= 0.0 and out.image.max() <= 1.0
        assert set(np.unique(out.mask)) <= {0.0, 1.0}


def test_masks_follow_flips() -> None:
    tile = random_tile(np.random.default_rng(0), 2)
    rng = np.random.default_rng(0)
    flipped = TrainTransform(**OFF | {"hflip": 1.0})(tile, rng)
    np.testing.assert_array_equal(flipped.image, tile.image[:, :, ::-1])
    np.testing.assert_array_equal(flipped.mask, tile.mask[:, ::-1])
    upside_down = TrainTransform(**OFF | {"vflip": 1.0})(tile, rng)
    np.testing.assert_array_equal(upside_down.mask, tile.mask[::-1, :])


def test_scaling_moves_mask_and_image_together() -> None:
    tile = make_tile(0.1, channels=1)
    tile.image[:, 20:40, 24:40] = 0.6
    tile.mask[20:40, 24:40] = 1.0
    transform = TrainTransform(**OFF | {"scale_range": (0.8, 1.2)})
    rng = np.random.default_rng(3)
    for _ in range(10):
        out = transform(tile, rng)
        dense = out.image[0] > 0.35
        assert np.mean(out.mask[dense] == 1) > 0.95 and np.mean(dense[out.mask == 1]) > 0.95


def test_noise_grows_with_attenuation_as_photon_statistics_say() -> None:
    i0 = 1e5
    transform = TrainTransform(**OFF | {"noise": 1.0, "i0_range": (i0, i0)})
    rng = np.random.default_rng(0)
    for attenuation in (1.2, 6.0):
        tile = make_tile(attenuation / ATTENUATION_SCALE, channels=2)
        noise = (transform(tile, rng).image - tile.image) * ATTENUATION_SCALE
        expected = np.exp(attenuation / 2) / np.sqrt(i0)
        assert abs(noise.std() / expected - 1) < 0.05 and abs(noise.mean()) < 0.05 * expected


def test_row_streaks_are_offsets_constant_along_each_row() -> None:
    transform = TrainTransform(**OFF | {"row_streaks": 1.0, "streak_std": (0.1, 0.1)})
    tile = make_tile(0.3, channels=2)
    offsets = (transform(tile, np.random.default_rng(0)).image - tile.image) * ATTENUATION_SCALE
    np.testing.assert_allclose(offsets, offsets[:1, :, :1] * np.ones_like(offsets), atol=1e-5)
    assert 0.05 < offsets[0, :, 0].std() < 0.2


def test_augmentation_is_fixed_by_the_seed_and_survives_pickling() -> None:
    transform = TrainTransform(tip=ThreatProjector([brick()], rate=0.5), noise=1.0, blur=0.5)
    copy = pickle.loads(pickle.dumps(transform))
    tile = random_tile(np.random.default_rng(0), 2)
    first = [transform(tile, np.random.default_rng(seed)) for seed in range(5)]
    again = [copy(tile, np.random.default_rng(seed)) for seed in range(5)]
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.mask, b.mask)
        assert a.label == b.label
    assert not np.array_equal(first[0].image, first[1].image)


def test_eval_transform_is_the_identity() -> None:
    tile = random_tile(np.random.default_rng(0), 2)
    assert EvalTransform()(tile, np.random.default_rng(0)) is tile


def test_a_simulated_dataset_flows_through_the_augmenting_loader(tmp_path: Path) -> None:
    """DICOS scans from the simulator, at their own spacings, onto a coarser model grid."""
    generate_dataset(
        tmp_path,
        4,
        seed=1,
        sites=["antwerp", "rotterdam"],
        lengths=("20ft",),
        workers=1,
        progress=False,
    )
    dataset = load_dataset(tmp_path)
    pre = Preprocessing(channels=("high",), spacing_mm=16.0)
    tip = ThreatProjector.from_dataset(dataset, pre, rate=0.5, n_generated=4)
    sampler = TileSampler(tile_size=32, tiles_per_scan=16)
    tiles = TileDataset(dataset, pre, sampler, transform=TrainTransform(tip=tip))
    emitted = list(tiles)

    assert tiles.stats.reads.tolist() == [1, 1, 1, 1] and len(emitted) == len(tiles)
    assert {t.source for t in emitted} >= {"positive", "structure", "random", "tip"}
    for tile in emitted:
        assert tile.image.dtype == np.float32 and 0 <= tile.image.min() <= tile.image.max() <= 1
        assert (tile.mask.sum() > 0) == (tile.label == 1)


def test_beam_profile_is_a_smooth_row_offset_of_the_drawn_amplitude() -> None:
    transform = TrainTransform(
        **OFF | {"beam_profile": 1.0, "beam_profile_amplitude": (0.04, 0.04)}
    )
    tile = make_tile(0.3, channels=2)
    for seed in range(5):
        offsets = (transform(tile, np.random.default_rng(seed)).image - tile.image)[0]
        offsets *= ATTENUATION_SCALE
        np.testing.assert_allclose(offsets, offsets[:, :1] * np.ones_like(offsets), atol=1e-5)
        profile = offsets[:, 0]
        assert abs(np.abs(profile).max() - 0.04) < 1e-4  # a 4 % profile at its peak
        assert np.abs(np.diff(profile, 2)).max() < 1e-3  # smooth: no streaks


def test_saturation_clips_attenuation_at_the_drawn_level() -> None:
    transform = TrainTransform(**OFF | {"saturation": 1.0, "saturation_range": (6.0, 6.0)})
    tile = make_tile(np.linspace(0, 1, SIZE, dtype=np.float32)[None, :], channels=1)
    out = transform(tile, np.random.default_rng(0)).image * ATTENUATION_SCALE
    assert out.max() == pytest.approx(6.0, abs=1e-5)
    below = tile.image * ATTENUATION_SCALE < 6.0
    np.testing.assert_allclose(out[below], (tile.image * ATTENUATION_SCALE)[below], atol=1e-5)
