"""create_model over real torchvision backbones, offline weight loading, the bundle on disk."""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors import safe_open
from torch import nn

from scanml.models import (
    CONTRAST_FLOOR,
    SUPPORTED_ARCHITECTURES,
    DenseLogitNet,
    ModelBundle,
    create_model,
    local_contrast,
)
from scanml.preprocess import Preprocessing

CLASSES = ["drugs", "weapon", "cigarettes", "other"]
# Seconds each to build and run even on tiny inputs: marked slow (still run by `make test`).
HEAVY = {
    "resnet50",
    "resnet101",
    "resnext50_32x4d",
    "wide_resnet50_2",
    "convnext_tiny",
    "convnext_small",
    "efficientnet_v2_s",
}


@pytest.fixture
def hub_dir(tmp_path: Path) -> Iterator[Path]:
    """A private torch hub cache, restored afterwards."""
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield tmp_path / "hub"
    torch.hub.set_dir(previous)


@pytest.mark.parametrize(
    ("name", "in_channels"),
    [
        pytest.param(name, channels, marks=[pytest.mark.slow] if name in HEAVY else [])
        for name in SUPPORTED_ARCHITECTURES
        for channels in (1, 2)
    ],
)
def test_every_architecture_gives_dense_logits_at_its_stride(name: str, in_channels: int) -> None:
    network = create_model(name, in_channels, num_categories=3).eval()
    with torch.no_grad():
        dense = network(torch.rand(2, in_channels, 64, 96))

    assert network.output_stride == 32
    assert dense.shape == (2, 1 + 3, 2, 3)
    assert DenseLogitNet.tile_logits(dense).shape == (2,)
    assert DenseLogitNet.tile_category_logits(dense).shape == (2, 3)


def test_tile_logit_is_the_mean_of_the_dense_anomaly_logits() -> None:
    dense = torch.randn(3, 5, 4, 6)

    torch.testing.assert_close(DenseLogitNet.tile_logits(dense), dense[:, 0].mean(dim=(1, 2)))


def test_untrained_head_starts_at_a_low_anomaly_prior() -> None:
    network = create_model("mobilenet_v3_small", 1).eval()
    with torch.no_grad():
        probability = torch.sigmoid(network(torch.rand(1, 1, 96, 96))[:, 0])

    assert float(probability.max()) < 0.05


def test_output_grid_is_measured_from_the_layers() -> None:
    # Receptive fields worked out by hand from torchvision's layer lists.
    resnet18 = create_model("resnet18", 1).grid
    convnext = create_model("convnext_tiny", 1).grid

    assert (resnet18.stride, resnet18.offset, resnet18.receptive_field) == (32, 0.5, 435)
    # ConvNeXt's stem cuts 4x4 patches: cells sit at patch centres, not pixel 0.
    assert (convnext.stride, convnext.offset) == (32, 16.0)


@pytest.mark.parametrize(("output_stride", "cells"), [(16, (4, 6)), (8, (8, 12))])
def test_resnets_trade_stride_for_dilation(output_stride: int, cells: tuple[int, int]) -> None:
    network = create_model("resnet18", 1, output_stride=output_stride).eval()
    with torch.no_grad():
        dense = network(torch.rand(1, 1, 64, 96))

    assert network.output_stride == output_stride
    assert dense.shape[-2:] == cells


@pytest.mark.slow
def test_dilation_matches_torchvisions_own_for_bottleneck_resnets() -> None:
    ours = create_model("resnet50", 3, output_stride=16).eval()
    reference = torchvision.models.resnet50(replace_stride_with_dilation=[False, False, True])
    reference.load_state_dict(ours.backbone.state_dict(), strict=False)  # no classifier here
    reference_features = nn.Sequential(*list(reference.children())[:-2]).eval()
    images = torch.rand(1, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(
            ours.backbone(images), reference_features(images), rtol=1e-4, atol=1e-4
        )


def test_other_output_strides_are_refused_clearly() -> None:
    with pytest.raises(ValueError, match=r"mobilenet_v3_small supports output_stride \[32\]"):
        create_model("mobilenet_v3_small", 1, output_stride=16)
    with pytest.raises(ValueError, match="unknown architecture 'vgg_unknown'"):
        create_model("vgg_unknown", 1)


@pytest.mark.parametrize("in_channels", [1, 2])
def test_pretrained_rgb_filters_are_averaged_so_a_grey_image_responds_the_same(
    hub_dir: Path, in_channels: int
) -> None:
    """A fake 'pretrained' checkpoint in a private hub cache exercises the real offline path."""
    torch.manual_seed(0)
    classifier = torchvision.models.resnet18()
    checkpoint = hub_dir / "checkpoints" / "resnet18-f37072fd.pth"
    checkpoint.parent.mkdir(parents=True)
    torch.save(classifier.state_dict(), checkpoint)

    network = create_model("resnet18", in_channels, weights="DEFAULT").eval()
    same = create_model("resnet18", in_channels, weights="ResNet18_Weights.IMAGENET1K_V1").eval()

    grey = torch.rand(1, 1, 96, 128)
    standardised = (grey - DenseLogitNet.INPUT_MEAN) / DenseLogitNet.INPUT_STD
    features = nn.Sequential(*list(classifier.children())[:-2]).eval()
    with torch.no_grad():
        expected = features(standardised.repeat(1, 3, 1, 1))
        torch.testing.assert_close(
            network.backbone(standardised.repeat(1, in_channels, 1, 1)),
            expected,
            rtol=1e-4,
            atol=1e-4,
        )
    # The full weight name reads the same file.
    torch.testing.assert_close(same.backbone.state_dict(), network.backbone.state_dict())


def test_missing_pretrained_weights_name_the_path_and_the_url(hub_dir: Path) -> None:
    expected = hub_dir / "checkpoints" / "resnet18-f37072fd.pth"

    with pytest.raises(FileNotFoundError) as error:
        create_model("resnet18", 1, weights="IMAGENET1K_V1")

    assert str(expected) in str(error.value)
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in str(error.value)


def test_unknown_weights_are_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match=r"IMAGENET1K_V1.*DEFAULT"):
        create_model("resnet18", 1, weights="no/such/file.pt")


def test_bundle_round_trip_is_safetensors_and_json_and_loads_without_pickle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = _bundle(channels=("high", "low"))
    bundle.save(tmp_path / "bundle")

    assert sorted(p.name for p in (tmp_path / "bundle").iterdir()) == [
        "model.json",
        "model.safetensors",
    ]
    with safe_open(tmp_path / "bundle" / "model.safetensors", framework="pt") as tensors:
        assert "head.weight" in tensors.keys()  # noqa: SIM118 (a safetensors handle, not a dict)
    assert (
        json.loads((tmp_path / "bundle" / "model.json").read_text())["architecture"] == "resnet18"
    )

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a bundle must load without unpickling")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    loaded = ModelBundle.load(tmp_path / "bundle")

    assert (loaded.architecture, loaded.preprocessing, loaded.class_names) == (
        "resnet18",
        bundle.preprocessing,
        CLASSES,
    )
    assert (loaded.threshold, loaded.region_threshold, loaded.metadata) == (
        0.83,
        0.4,
        {"run_id": "abc"},
    )
    images = torch.rand(1, 2, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.network.eval()(images), bundle.network.eval()(images), rtol=0, atol=0
        )


def test_state_dict_files_load_with_weights_only(tmp_path: Path) -> None:
    source = create_model("resnet18", 1)
    checkpoint = tmp_path / "checkpoint.pt"
    torch.save({"model": source.state_dict(), "epoch": 3}, checkpoint)

    network = create_model("resnet18", 1, weights=checkpoint)

    torch.testing.assert_close(network.state_dict(), source.state_dict())

    # weights_only=True refuses anything that would need arbitrary unpickling.
    torch.save({"note": _NotATensor()}, tmp_path / "evil.pt")
    with pytest.raises(pickle.UnpicklingError):
        create_model("resnet18", 1, weights=tmp_path / "evil.pt")


def test_fine_tuning_from_a_bundle_adapts_channels_and_keeps_a_matching_head(
    tmp_path: Path,
) -> None:
    bundle = _bundle(channels=("high",))
    bundle.save(tmp_path / "site-a")

    same = create_model("resnet18", 1, weights=tmp_path / "site-a").eval()
    dual = create_model("resnet18", 2, weights=tmp_path / "site-a").eval()
    fewer_classes = create_model("resnet18", 1, weights=tmp_path / "site-a", num_categories=2)

    images = torch.rand(1, 1, 96, 96)
    with torch.no_grad():
        expected = bundle.network.eval()(images)
        torch.testing.assert_close(same(images), expected)
        # Both energies equal: the dual-energy model responds as the single-energy one.
        torch.testing.assert_close(dual(images.repeat(1, 2, 1, 1)), expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(
        fewer_classes.backbone.state_dict(), bundle.network.backbone.state_dict()
    )
    with pytest.raises(ValueError, match="holds a resnet18 model, not resnet34"):
        create_model("resnet34", 1, weights=tmp_path / "site-a")


@pytest.mark.slow
def test_bundles_load_from_mlflow_uris(tmp_path: Path, mlflow_uri: str) -> None:
    """A logged pyfunc keeps the bundle under artifacts/bundle/: the download is searched."""
    import mlflow

    bundle = _bundle(channels=("high",))
    folder = bundle.save(tmp_path / "bundle")
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(folder), artifact_path="model/artifacts/bundle")
    uri = f"runs:/{run.info.run_id}/model"

    loaded = ModelBundle.load(uri)
    fine_tuned = create_model("resnet18", 1, weights=uri)

    torch.testing.assert_close(loaded.network.state_dict(), bundle.network.state_dict())
    torch.testing.assert_close(fine_tuned.state_dict(), bundle.network.state_dict())


def _bundle(channels: tuple[str, ...]) -> ModelBundle:
    torch.manual_seed(1)
    return ModelBundle(
        network=create_model("resnet18", len(channels)),
        architecture="resnet18",
        preprocessing=Preprocessing(channels=channels, spacing_mm=8.0),
        class_names=CLASSES,
        threshold=0.83,
        region_threshold=0.4,
        metadata={"run_id": "abc"},
    )


class _NotATensor:
    """Anything a weights-only load must refuse to construct."""


def test_resnets_cut_after_a_stage_have_its_stride_and_a_smaller_receptive_field(
    tmp_path: Path,
) -> None:
    whole = create_model("resnet18", 1, output_stride=16)
    cut = create_model("resnet18", 1, output_stride=16, stages=3)

    assert cut.grid.stride == 16 and cut.grid.receptive_field < whole.grid.receptive_field / 1.8
    assert not any(name.startswith("layer4") for name, _ in cut.backbone.named_children())
    assert cut.head.in_channels == 256  # layer3's width
    with torch.no_grad():
        assert cut.eval()(torch.rand(1, 1, 64, 96)).shape[-2:] == (4, 6)
    # The cut is saved with the bundle and rebuilt on load.
    bundle = ModelBundle(cut, "resnet18", Preprocessing(("high",), 8.0), ["a", "b", "c", "d"])
    loaded = ModelBundle.load(bundle.save(tmp_path / "cut"))
    assert loaded.network.stages == 3 and loaded.network.grid == cut.grid


def test_stages_are_refused_where_they_do_not_apply() -> None:
    with pytest.raises(ValueError, match="mobilenet_v2 cannot be cut to 3 stages"):
        create_model("mobilenet_v2", 1, stages=3)
    with pytest.raises(ValueError, match=r"supports output_stride \[16, 8\], got 32"):
        create_model("resnet18", 1, stages=3, output_stride=32)


def test_local_contrast_is_the_deviation_from_the_window_mean_over_its_spread() -> None:
    flat = torch.full((1, 1, 96, 96), 0.4)
    torch.testing.assert_close(local_contrast(flat, 33), torch.zeros_like(flat))

    # A faint 20 x 20 px block (+0.01: 0.12 in attenuation) in a flat field. At its
    # centre the 33 x 33 window holds a share p = 400/1089 of the block.
    image = flat.clone()
    image[..., 38:58, 38:58] += 0.01
    share = 400 / 1089
    deviation = 0.01 * (1 - share)
    spread = (share * (1 - share) * 0.01**2 + CONTRAST_FLOOR**2) ** 0.5
    contrast = local_contrast(image, 33)
    assert float(contrast[0, 0, 48, 48]) == pytest.approx(deviation / spread, rel=1e-3)
    assert float(contrast[0, 0, 5, 5]) == pytest.approx(0.0, abs=1e-4)  # far from it
    # A hundred times the step: the spread, not the floor, sets the scale; same sign.
    strong = flat.clone()
    strong[..., 38:58, 38:58] += 1.0 - 0.4
    spread = (share * (1 - share) * 0.6**2 + CONTRAST_FLOOR**2) ** 0.5
    assert float(local_contrast(strong, 33)[0, 0, 48, 48]) == pytest.approx(
        0.6 * (1 - share) / spread, rel=1e-3
    )
    # Inputs smaller than half the window keep their shape.
    assert local_contrast(torch.rand(2, 2, 8, 12), 33).shape == (2, 2, 8, 12)


def test_a_contrast_network_reads_both_channels_and_its_bundle_keeps_the_window(
    tmp_path: Path,
) -> None:
    torch.manual_seed(0)
    plain = create_model("resnet18", 1, output_stride=16, stages=3)
    network = create_model("resnet18", 1, output_stride=16, stages=3, input_contrast=33)
    assert network.in_channels == 1 and network.backbone.conv1.in_channels == 2
    assert network.grid.receptive_field == plain.grid.receptive_field + 32
    with pytest.raises(ValueError, match="odd window"):
        create_model("resnet18", 1, input_contrast=32)

    bundle = ModelBundle(network, "resnet18", Preprocessing(("high",), 8.0), CLASSES)
    bundle.save(tmp_path / "bundle")
    loaded = ModelBundle.load(tmp_path / "bundle")
    assert loaded.network.input_contrast == 33
    images = torch.rand(1, 1, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(loaded.network.eval()(images), network.eval()(images))
        # The contrast channel is read: without its weights the network scores otherwise.
        loaded.network.backbone.conv1.weight[:, 1].zero_()
        assert not torch.allclose(loaded.network(images), network(images), atol=1e-3)


def test_several_contrast_windows_give_a_channel_each_in_their_order(tmp_path: Path) -> None:
    torch.manual_seed(0)
    plain = create_model("resnet18", 2, output_stride=16, stages=3)
    network = create_model("resnet18", 2, output_stride=16, stages=3, input_contrast=[17, 65])
    # Two energies, each with its attenuation and two contrasts.
    assert network.backbone.conv1.in_channels == 6
    assert network.contrast_windows == (17, 65)
    assert network.grid.receptive_field == plain.grid.receptive_field + 64  # the widest

    bundle = ModelBundle(network, "resnet18", Preprocessing(("high", "low"), 8.0), CLASSES)
    loaded = ModelBundle.load(bundle.save(tmp_path / "bundle"))
    assert loaded.network.input_contrast == [17, 65]
    images = torch.rand(1, 2, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(loaded.network.eval()(images), network.eval()(images))
        # Channels 4-5 are the 65 px window's: without their weights the scores change.
        loaded.network.backbone.conv1.weight[:, 4:].zero_()
        assert not torch.allclose(loaded.network(images), network(images), atol=1e-3)
    for bad in ([], [17, 32], [1], [True]):
        with pytest.raises(ValueError, match="odd window"):
            create_model("resnet18", 1, input_contrast=bad)
