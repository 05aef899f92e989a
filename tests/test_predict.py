"""Predictor: blockwise equals whole-scan, and everything comes back in the scan's pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from scanml.bench_inference import inference_benchmark
from scanml.io import Scan
from scanml.models import DenseLogitNet, ModelBundle, OutputGrid, create_model
from scanml.predict import Predictor
from scanml.preprocess import Preprocessing

CLASSES = ["drugs", "weapon", "cigarettes", "other"]
PRE = Preprocessing(channels=("high",), spacing_mm=8.0)
# 5 mm rows and 4 mm columns: the scan's grid differs from the model's on both axes.
SPACING = (5.0, 4.0)


@pytest.fixture(scope="module")
def resnet_bundle() -> ModelBundle:
    torch.manual_seed(0)
    return ModelBundle(create_model("resnet18", 1), "resnet18", PRE, CLASSES)


def local_mean_bundle() -> ModelBundle:
    """A hand-set network whose anomaly logit rises with the mean attenuation of each 32 px cell.

    Its backbone averages 32 x 32 model pixels (cell centres at 16 + 32 i);
    the head maps air to a logit of about -8 and attenuation 12 (x = 1) to
    about +9, and makes "weapon" the top category everywhere.
    """
    network = DenseLogitNet(
        nn.AvgPool2d(32),
        architecture="local-mean",
        in_channels=1,
        feature_channels=1,
        num_categories=len(CLASSES),
        grid=OutputGrid(stride=32, offset=16.0, receptive_field=32),
    )
    with torch.no_grad():
        network.head.weight.zero_()
        network.head.weight[0, 0] = 4.0
        network.head.bias.copy_(torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0]))
    return ModelBundle(network, "local-mean", PRE, CLASSES, threshold=0.9, region_threshold=0.5)


def scan_with_objects(objects: list[tuple[slice, slice, float]], shape=(1024, 1600)) -> Scan:
    attenuation = np.zeros((1, *shape), dtype=np.float32)
    for rows, cols, value in objects:
        attenuation[0, rows, cols] = value
    return Scan(attenuation, spacing_mm=SPACING, channels=["high"], meta={"scan_id": "s"})


@pytest.mark.parametrize("input_contrast", [None, 33])
def test_blockwise_equals_the_whole_scan_pass(
    resnet_bundle: ModelBundle, input_contrast: int | None
) -> None:
    if input_contrast:  # the window widens what each block must see around its centre
        torch.manual_seed(0)
        network = create_model(  # the default preset's network
            "resnet18", 1, output_stride=16, stages=3, input_contrast=input_contrast
        )
        resnet_bundle = ModelBundle(network, "resnet18", PRE, CLASSES)
    image = np.random.default_rng(0).random((1, 704, 960), dtype=np.float32)
    whole = Predictor(resnet_bundle).predict_array(image)
    blocked = Predictor(resnet_bundle, max_block_pixels=60_000 if input_contrast else 100_000)

    row_spans, col_spans = blocked._plan(image.shape[-2:])
    assert len(row_spans) >= 2 and len(col_spans) >= 2  # really cut, along both axes
    np.testing.assert_allclose(
        blocked.predict_array(image).dense_logits, whole.dense_logits, atol=1e-4
    )


def test_a_batch_of_different_scans_equals_one_at_a_time(resnet_bundle: ModelBundle) -> None:
    rng = np.random.default_rng(1)
    scans = [
        Scan(rng.random((1, 200, w), dtype=np.float32) * 6, SPACING, ["high"])
        for w in (300, 420, 300)
    ]
    predictor = Predictor(resnet_bundle, batch_size=2)

    batched = predictor.predict_batch(scans)

    for scan, prediction in zip(scans, batched, strict=True):
        alone = predictor.predict(scan)
        np.testing.assert_allclose(prediction.dense_logits, alone.dense_logits, atol=1e-5)
        assert prediction.heatmap.shape == scan.attenuation.shape[1:]


def test_predicting_restores_the_training_flag(resnet_bundle: ModelBundle) -> None:
    resnet_bundle.network.train()
    Predictor(resnet_bundle).predict_array(np.zeros((1, 64, 64), dtype=np.float32))

    assert resnet_bundle.network.training
    resnet_bundle.network.eval()


def test_a_dense_object_becomes_a_region_in_the_scans_pixels() -> None:
    # Model-grid cells 5..9 (rows) x 10..14 (columns) = model pixels [160, 320) x [320, 480)
    # = scan rows [256, 512) (5 mm) and columns [640, 960) (4 mm).
    bright = (slice(256, 512), slice(640, 960), 12.0)
    faint = (slice(768, 896), slice(128, 256), 6.0)
    scan = scan_with_objects([bright, faint])

    prediction = Predictor(local_mean_bundle()).predict(scan)

    assert prediction.heatmap.shape == (1024, 1600)
    assert prediction.heatmap.dtype == np.float32
    assert prediction.dense_logits.shape == (5, 20, 25)
    assert prediction.score > 0.99 and prediction.flagged
    [strong, weak] = prediction.regions
    assert (strong.x, strong.y, strong.w, strong.h) == pytest.approx((640, 256, 320, 256), abs=1e-6)
    assert strong.category == "weapon" and strong.score > 0.99
    assert 0.5 <= weak.score < strong.score
    assert 640 <= prediction.peak_xy[0] <= 960 and 256 <= prediction.peak_xy[1] <= 512


def test_the_heat_map_is_placed_at_the_true_cell_centres() -> None:
    scan = scan_with_objects([(slice(256, 512), slice(640, 960), 12.0)])

    heatmap = Predictor(local_mean_bundle()).predict(scan).heatmap

    # Bright and dark cells alternate at the object's edges, so interpolating
    # between their centres crosses 0.5 exactly on the edges.
    row = heatmap[384]
    crossings = np.flatnonzero(np.diff(row > 0.5))
    np.testing.assert_allclose(crossings + 1, [640, 960], atol=1)
    column = heatmap[:, 800]
    np.testing.assert_allclose(np.flatnonzero(np.diff(column > 0.5)) + 1, [256, 512], atol=1)
    assert heatmap.max() == pytest.approx(1.0, abs=1e-3) and heatmap.min() < 1e-3


def test_a_clean_scan_has_no_region_and_is_not_flagged() -> None:
    prediction = Predictor(local_mean_bundle()).predict(scan_with_objects([]))

    assert prediction.regions == [] and not prediction.flagged
    assert prediction.score < 0.01


def test_predict_array_reports_on_the_model_grid_or_the_given_scan_grid() -> None:
    image = np.zeros((1, 640, 800), dtype=np.float32)
    image[0, 160:320, 320:480] = 1.0
    predictor = Predictor(local_mean_bundle())

    on_model = predictor.predict_array(image).regions[0]
    on_scan = predictor.predict_array(image, scan_shape_hw=(1024, 1600), scan_spacing_mm=SPACING)

    assert (on_model.x, on_model.y, on_model.w, on_model.h) == pytest.approx((320, 160, 160, 160))
    assert on_scan.heatmap.shape == (1024, 1600)
    assert on_scan.regions[0].x == pytest.approx(640)


def test_bfloat16_autocast_keeps_the_regions() -> None:
    scan = scan_with_objects([(slice(256, 512), slice(640, 960), 12.0)])

    exact = Predictor(local_mean_bundle()).predict(scan)
    fast = Predictor(local_mean_bundle(), amp=True).predict(scan)

    assert [(r.x, r.y, r.w, r.h) for r in fast.regions] == [
        (r.x, r.y, r.w, r.h) for r in exact.regions
    ]
    assert fast.score == pytest.approx(exact.score, abs=1e-2)


def test_inference_benchmark_reports_what_scanml_bench_prints() -> None:
    [row] = inference_benchmark("mobilenet_v3_small", quick=True, scans_m={"tiny": (1.0, 0.5)})

    assert row["scan"] == "tiny" and row["pixels"] == "125 x 62" and row["windows"] == 4 * 2
    for key in ("whole_scans_per_s", "whole_megapixels_per_s", "window_scans_per_s", "speedup"):
        assert row[key] > 0
    assert row["flops_per_s"] > 0 and row["gflop_per_scan"] > 0
