"""The network and its bundle on disk.

A scanml model is a torchvision backbone whose global pooling and classifier
are replaced by a 1x1 convolution on the last feature map, so that it yields
a logit for every location of the scan: dense logits ``[N, 1 + K, h, w]``,
channel 0 the anomaly logit and channels 1..K the category logits. A tile's
logit is the mean of its dense logits (:meth:`DenseLogitNet.tile_logits`),
so the network trains on tiles and scores a whole scan in one
fully-convolutional pass (:mod:`scanml.predict`) without being a different
network in the two places. The backbones it is built on are in
:mod:`scanml.backbones`.

A :class:`ModelBundle` is that network plus everything scoring needs to
reproduce training (preprocessing, class names, thresholds). On disk it is a
folder with ``model.safetensors`` (tensors only) and ``model.json``
(everything else): loading never unpickles anything, so a model received
from another agency cannot run code.
"""

from __future__ import annotations

import json
import logging
import os
import re
import urllib.parse
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, overload

import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import load_file, save_file
from torch import nn

from scanml import __version__
from scanml.backbones import (
    FAMILIES,
    SUPPORTED_ARCHITECTURES,
    OutputGrid,
    adapt_first_conv,
    dilate,
    layer_count,
    probe,
    replace_first_conv,
    supported_output_strides,
    supported_stages,
)
from scanml.fsutil import write_atomically, write_text_atomically
from scanml.preprocess import Preprocessing

__all__ = [
    "SUPPORTED_ARCHITECTURES",
    "DenseLogitNet",
    "ModelBundle",
    "OutputGrid",
    "contrast_windows",
    "create_model",
    "local_contrast",
    "supported_output_strides",
    "supported_stages",
]

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "model.json"
_BUNDLE_FORMAT = "scanml-model-bundle"
_BUNDLE_FORMAT_VERSION = 1

# The anomaly logit's initial bias: sigmoid(-4) = 0.018, about the share of
# anomalous locations. With a 0 bias every one of the many clean locations
# would start at p = 0.5 and their loss would swamp the first updates (the
# RetinaNet prior of Lin et al., 2017); and an untrained model's scan score,
# the maximum over thousands of locations, would sit at 1 for every scan.
ANOMALY_PRIOR_LOGIT = -4.0


def create_model(
    name: str,
    in_channels: int,
    weights: str | os.PathLike[str] | None = None,
    *,
    num_categories: int = 4,
    output_stride: int = 32,
    stages: int | None = None,
    input_contrast: int | Sequence[int] | None = None,
    amount_head: bool = False,
) -> DenseLogitNet:
    """A dense-logit network over torchvision's ``name`` taking ``in_channels`` energy channels.

    ``weights`` (never downloaded: scanners' networks are offline):

    - ``None``: random initialisation;
    - a torchvision weights name of ``name`` (``"DEFAULT"``, ``"IMAGENET1K_V1"``,
      ``"ResNet18_Weights.IMAGENET1K_V1"``), read from the local torch hub
      cache (``torch.hub.get_dir()/checkpoints``); when the file is missing the
      error names where to put it and where to fetch it;
    - a ``.safetensors`` file, or a ``.pt``/``.pth`` state dict (read with
      ``weights_only=True``; a training checkpoint's ``"model"`` entry is
      used), holding a torchvision classifier or a :class:`DenseLogitNet`;
    - a model bundle folder or an MLflow model URI (``runs:/...``,
      ``models:/NAME/VERSION``, ``models:/NAME@alias``), to fine-tune a model
      another site trained.

    Weights made for another number of input channels are adapted (see
    :func:`~scanml.backbones.adapt_first_conv`); a head made for another number of categories
    is left at its initialisation. ``output_stride`` 16 (or 8) trades the
    last stride (or two) of a ResNet for dilation: a heat map twice (four
    times) as fine, for 4x the compute of each stage that loses its stride.

    ``stages`` keeps only the first residual stages of a ResNet (``3``: up to
    ``layer3``, native stride 16, a receptive field of about 200 pixels
    instead of 400, and well under half the compute of a stride-16 network
    with a dilated ``layer4``). A smaller receptive field is what a detector
    of compact objects needs: each logit judges an object against its
    surroundings, not against the layout of a whole container, which
    differs between scanners and simulators. ``None`` keeps every stage.

    ``input_contrast`` (an odd window in pixels, or several) adds, beside
    each energy channel, its local contrast over each window
    (:func:`local_contrast`): fixed channels the first convolution reads
    with the attenuation itself.

    ``amount_head`` adds a second 1x1 convolution that regresses, per output
    cell, the net attenuation a concealment changed there (a training target
    beside the mask, ``train.amount_loss_weight``); scoring does not read it.
    """
    if name not in FAMILIES:
        raise ValueError(
            f"unknown architecture {name!r}; supported: {list(SUPPORTED_ARCHITECTURES)}"
        )
    windows = contrast_windows(input_contrast)
    if in_channels < 1 or num_categories < 1:
        raise ValueError(
            f"need at least one input channel and one category, got {in_channels} and {num_categories}"
        )
    # Weights first: a wrong or missing file fails before seconds of building.
    state, source = _read_weights(name, os.fspath(weights)) if weights is not None else ({}, "")
    family = FAMILIES[name]
    layers = family.feature_layers(torchvision.models.get_model(name, weights=None))
    if stages is not None:
        layers = layers[: layer_count(name, stages)]
    backbone = nn.Sequential(OrderedDict(layers))
    dilate(backbone, name, output_stride, stages)
    backbone_channels = in_channels * (1 + len(windows))
    replace_first_conv(backbone, family.first_conv, backbone_channels)
    grid, feature_channels = probe(backbone, backbone_channels)
    if windows:  # each input pixel already pools a window around it
        grid = replace(grid, receptive_field=grid.receptive_field + max(windows) - 1)
    network = DenseLogitNet(
        backbone,
        architecture=name,
        in_channels=in_channels,
        feature_channels=feature_channels,
        num_categories=num_categories,
        grid=grid,
        stages=stages,
        input_contrast=input_contrast,
        amount_head=amount_head,
    )
    if weights is not None:
        _load_weights(network, state, source)
    return network


# Below this local spread (0.24 in attenuation at the model's 1/12 scale) a window counts
# as flat: air and photon noise are not blown up into contrast.
CONTRAST_FLOOR = 0.02


def contrast_windows(input_contrast: int | Sequence[int] | None) -> tuple[int, ...]:
    """The local-contrast windows ``input_contrast`` names: ``()`` for None, else odd sizes >= 3.

    Raises ValueError naming the value otherwise.
    """
    if input_contrast is None:
        return ()
    windows = (input_contrast,) if isinstance(input_contrast, int) else tuple(input_contrast)
    if not windows or any(
        isinstance(w, bool) or not isinstance(w, int) or w < 3 or w % 2 == 0 for w in windows
    ):
        raise ValueError(
            f"input_contrast is an odd window of 3 px or more, or a list of them, "
            f"got {input_contrast!r}"
        )
    return windows


def local_contrast(
    images: torch.Tensor, window: int, floor: float = CONTRAST_FLOOR
) -> torch.Tensor:
    """Each pixel's deviation from the mean of the ``window`` x ``window`` pixels around it,
    in units of their standard deviation (floored at ``floor``): ``[N, C, H, W]`` as given.

    A 0.1 substitution in attenuation is a change of about 0.01 in the model's
    input, beside walls and cargo that span its whole range; BatchNorm scales
    whole feature maps and cannot bring it up locally. In a quiet window the
    floor sets the scale, so this channel is the deviation from the local
    mean magnified 50 times; in a busy one, the deviation against the
    clutter around it. Fixed, not learnt: two separable box filters, edges
    mirrored (replicated for inputs smaller than half the window).
    """
    half = window // 2
    mode = "reflect" if min(images.shape[-2:]) > half else "replicate"

    def box(values: torch.Tensor) -> torch.Tensor:
        rows = F.avg_pool2d(values, (1, window), stride=1)
        return F.avg_pool2d(rows, (window, 1), stride=1)

    # float32 even under autocast: the variance is a difference of two close means.
    with torch.autocast(images.device.type, enabled=False):
        images = images.float()
        padded = F.pad(images, [half] * 4, mode=mode)
        mean = box(padded)
        variance = (box(padded * padded) - mean * mean).clamp_min(0.0)
        return (images - mean) / torch.sqrt(variance + floor * floor)


class DenseLogitNet(nn.Module):
    """A feature extractor and a 1x1 convolution: dense logits ``[N, 1 + K, h, w]``.

    Input: float32 ``[N, C, H, W]`` physical log-attenuation in [0, 1] (see
    :func:`scanml.preprocess.prepare`). The network standardises it with one
    fixed affine, ImageNet's per-channel mean and std averaged over RGB, so
    that pretrained filters (whose RGB weights are averaged into each
    channel) see inputs in the range they were trained on. The affine is a
    constant, not a statistic of the image, for the same reason the
    attenuation scale is: density differences between scans must survive.

    With ``amount_head``, ``forward(images, with_amount=True)`` also returns
    ``[N, 1, h, w]``: the net attenuation each cell's concealment changed,
    regressed beside the logits during training.

    Build with :func:`create_model`.
    """

    INPUT_MEAN = 0.449
    INPUT_STD = 0.226

    def __init__(
        self,
        backbone: nn.Module,
        *,
        architecture: str,
        in_channels: int,
        feature_channels: int,
        num_categories: int,
        grid: OutputGrid,
        stages: int | None = None,
        input_contrast: int | Sequence[int] | None = None,
        amount_head: bool = False,
    ) -> None:
        super().__init__()
        self.architecture = architecture
        self.stages = stages
        self.contrast_windows = contrast_windows(input_contrast)
        self.in_channels = in_channels
        self.num_categories = num_categories
        self.grid = grid
        self.backbone = backbone
        self.head = nn.Conv2d(feature_channels, 1 + num_categories, kernel_size=1)
        nn.init.normal_(self.head.weight, std=0.01)
        with torch.no_grad():
            self.head.bias.zero_()
            self.head.bias[0] = ANOMALY_PRIOR_LOGIT
        self.amount_head = nn.Conv2d(feature_channels, 1, kernel_size=1) if amount_head else None
        if self.amount_head is not None:
            nn.init.normal_(self.amount_head.weight, std=0.01)
            nn.init.zeros_(self.amount_head.bias)

    @property
    def input_contrast(self) -> int | list[int] | None:
        """The windows as configured (and as the bundle records them): one int, a list, or None."""
        windows = self.contrast_windows
        return None if not windows else windows[0] if len(windows) == 1 else list(windows)

    @property
    def output_stride(self) -> int:
        """Input pixels per output cell."""
        return self.grid.stride

    @overload
    def forward(self, images: torch.Tensor, with_amount: Literal[False] = ...) -> torch.Tensor: ...

    @overload
    def forward(
        self, images: torch.Tensor, with_amount: Literal[True]
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def forward(
        self, images: torch.Tensor, with_amount: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Dense logits ``[N, 1 + K, h, w]`` for images ``[N, C, H, W]`` in [0, 1].

        ``with_amount``: also the amount head's ``[N, 1, h, w]``, as a pair.
        """
        features = (images - self.INPUT_MEAN) / self.INPUT_STD
        if self.contrast_windows:
            contrast = [local_contrast(images, window) for window in self.contrast_windows]
            features = torch.cat([features, *contrast], dim=1)
        features = self.backbone(features)
        if not with_amount:
            return self.head(features)
        if self.amount_head is None:
            raise ValueError("this network has no amount head (create_model(amount_head=True))")
        return self.head(features), self.amount_head(features)

    @staticmethod
    def tile_logits(dense_logits: torch.Tensor, pooling: str = "mean") -> torch.Tensor:
        """A tile's anomaly logit ``[N]``: the mean (or ``"max"``) of its dense anomaly logits.

        The mean is the design's tile logit; the maximum is the tile-sized
        version of the scan score, which is a maximum over locations.
        """
        anomaly = dense_logits[:, 0]
        if pooling == "max":
            return anomaly.amax(dim=(-2, -1))
        if pooling != "mean":
            raise ValueError(f"tile pooling is 'mean' or 'max', got {pooling!r}")
        return anomaly.mean(dim=(-2, -1))

    @staticmethod
    def tile_category_logits(dense_logits: torch.Tensor) -> torch.Tensor:
        """A tile's category logits ``[N, K]``: the mean of its dense category logits."""
        return dense_logits[:, 1:].mean(dim=(-2, -1))


@dataclass
class ModelBundle:
    """A network with everything needed to score exactly as it was validated.

    ``threshold`` is the scan-level decision threshold on the score
    (calibrated at a target false-alarm rate), ``region_threshold`` the heat
    map level at which regions are cut, ``class_names`` the K categories in
    the order of the network's category logits. ``metadata`` is free-form
    JSON (training run id, data, ...).
    """

    network: DenseLogitNet
    architecture: str
    preprocessing: Preprocessing
    class_names: list[str]
    threshold: float = 0.5
    region_threshold: float = 0.5
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.class_names = list(self.class_names)
        if self.architecture != self.network.architecture:
            raise ValueError(
                f"architecture {self.architecture!r} but the network is {self.network.architecture!r}"
            )
        if len(self.preprocessing.channels) != self.network.in_channels:
            raise ValueError(
                f"preprocessing reads channels {list(self.preprocessing.channels)} but the "
                f"network takes {self.network.in_channels}"
            )
        if len(self.class_names) != self.network.num_categories:
            raise ValueError(
                f"{len(self.class_names)} class names for {self.network.num_categories} categories"
            )

    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write ``model.safetensors`` and ``model.json`` into ``folder``; returns the folder.

        Each file is written under a temporary name and renamed, weights
        first, so a killed job never leaves a folder that loads half-written.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {
            key: value.detach().to("cpu").contiguous()
            for key, value in self.network.state_dict().items()
        }
        write_atomically(folder / WEIGHTS_FILE, lambda path: save_file(tensors, path))
        config = {
            "format": _BUNDLE_FORMAT,
            "format_version": _BUNDLE_FORMAT_VERSION,
            "scanml_version": __version__,
            "architecture": self.architecture,
            "output_stride": self.network.output_stride,
            "stages": self.network.stages,
            "input_contrast": self.network.input_contrast,
            "amount_head": self.network.amount_head is not None,
            "preprocessing": self.preprocessing.to_dict(),
            "class_names": self.class_names,
            "threshold": self.threshold,
            "region_threshold": self.region_threshold,
            "metadata": self.metadata,
        }
        text = json.dumps(config, indent=2) + "\n"
        write_text_atomically(folder / CONFIG_FILE, text)
        return folder

    @classmethod
    def load(
        cls, folder_or_uri: str | os.PathLike[str], map_location: str | torch.device = "cpu"
    ) -> ModelBundle:
        """Read a bundle folder, or the bundle inside an MLflow model (``runs:/``, ``models:/``).

        The network is rebuilt from its architecture and the tensors are
        loaded into it: no pickled module, no code from the file.
        """
        folder = _bundle_folder(os.fspath(folder_or_uri))
        config = _read_bundle_config(folder)
        preprocessing = Preprocessing.from_dict(config["preprocessing"])
        network = create_model(
            config["architecture"],
            len(preprocessing.channels),
            num_categories=len(config["class_names"]),
            output_stride=int(config["output_stride"]),
            stages=config.get("stages"),  # absent from bundles before stages existed
            input_contrast=config.get("input_contrast"),
            amount_head=bool(config.get("amount_head", False)),
        )
        network.load_state_dict(load_file(folder / WEIGHTS_FILE))
        return cls(
            network=network.to(map_location),
            architecture=config["architecture"],
            preprocessing=preprocessing,
            class_names=config["class_names"],
            threshold=float(config["threshold"]),
            region_threshold=float(config["region_threshold"]),
            metadata=config.get("metadata", {}),
        )


# -- reading weights ----------------------------------------------------------------------


def _read_weights(name: str, weights: str) -> tuple[Mapping[str, torch.Tensor], str]:
    """A state dict from any of :func:`create_model`'s weight sources, and a name for errors."""
    if _is_uri(weights) or Path(weights).is_dir():
        folder = _bundle_folder(weights)
        architecture = _read_bundle_config(folder)["architecture"]
        if architecture != name:
            raise ValueError(f"{weights} holds a {architecture} model, not {name}")
        return load_file(folder / WEIGHTS_FILE), weights
    if Path(weights).is_file():
        return _read_state_dict(Path(weights)), weights
    return _torchvision_weights(name, weights)


def _read_state_dict(path: Path) -> Mapping[str, torch.Tensor]:
    """Tensors from a ``.safetensors`` file or a ``.pt``/``.pth`` file (no arbitrary unpickling)."""
    if path.suffix == ".safetensors":
        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    # A training checkpoint keeps the weights beside the optimizer's state.
    if isinstance(state, Mapping) and isinstance(state.get("model"), Mapping):
        state = state["model"]
    if not isinstance(state, Mapping) or not all(
        isinstance(value, torch.Tensor) for value in state.values()
    ):
        raise ValueError(f"{path} is not a state dict (a mapping of names to tensors)")
    return state


def _torchvision_weights(name: str, weights: str) -> tuple[Mapping[str, torch.Tensor], str]:
    """A torchvision weight of ``name`` from the local torch hub cache, never from the network."""
    choices = torchvision.models.get_model_weights(name)
    try:
        weight = choices.verify(weights)
    except KeyError:
        raise ValueError(
            f"weights={weights!r} is neither a file, a model folder, an MLflow model URI nor a "
            f"torchvision weight of {name} (one of {[w.name for w in choices]} or 'DEFAULT')"
        ) from None
    file_name = Path(urllib.parse.urlparse(weight.url).path).name
    path = Path(torch.hub.get_dir()) / "checkpoints" / file_name
    if not path.is_file():
        raise FileNotFoundError(
            f"{choices.__name__}.{weight.name} is not in the local torch hub cache: place the "
            f"file at {path} (fetch {weight.url} on a connected machine; scanml never downloads)"
        )
    return torch.load(path, map_location="cpu", weights_only=True), str(path)


def _load_weights(network: DenseLogitNet, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load a torchvision classifier's or a DenseLogitNet's weights into ``network``.

    A DenseLogitNet's state (another site's model) has ``backbone.`` and
    ``head.`` keys; a torchvision classifier's has its layers' own names,
    of which the pooling and classifier have no place here.
    """
    state = {key.removeprefix("module."): value for key, value in state.items()}  # DDP saves
    if any(key.startswith("head.") for key in state):
        backbone_state = {
            k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")
        }
        head_state = {k.removeprefix("head."): v for k, v in state.items() if k.startswith("head.")}
    else:
        wanted = network.backbone.state_dict().keys()
        backbone_state = {key: value for key, value in state.items() if key in wanted}
        head_state = {}
    conv_key = f"{FAMILIES[network.architecture].first_conv}.weight"
    if conv_key in backbone_state:
        backbone_state[conv_key] = adapt_first_conv(backbone_state[conv_key], network.in_channels)
    try:
        network.backbone.load_state_dict(backbone_state)
    except RuntimeError as error:
        raise ValueError(
            f"{source} does not hold {network.architecture} weights: {error}"
        ) from None
    if head_state and head_state["weight"].shape == network.head.weight.shape:
        network.head.load_state_dict(head_state)
    elif head_state:
        log.warning(
            "%s has %d categories, the new model %d: its head is not loaded",
            source,
            head_state["weight"].shape[0] - 1,
            network.num_categories,
        )


# -- bundle folders -----------------------------------------------------------------------


def _is_uri(text: str) -> bool:
    """``runs:/``, ``models:/``, ``s3://``...; a scheme of two letters or more, so not ``C:/``."""
    return re.match(r"^[A-Za-z][A-Za-z0-9+.-]+:/", text) is not None


def _bundle_folder(source: str) -> Path:
    """The folder holding ``model.json``: ``source`` itself, or the one bundle found inside it.

    MLflow URIs are downloaded first. A logged pyfunc model keeps the bundle
    in an artifact folder (``artifacts/bundle/``), hence the search.
    """
    if _is_uri(source):
        import mlflow.artifacts  # slow to import; only URIs need it

        from scanml.tracking import resolve_tracking_uri, using_tracking_uri

        # The store the rest of scanml resolves names in ($MLFLOW_TRACKING_URI): a models:/
        # download reads MLflow's process-wide URI, which may still name another store.
        with using_tracking_uri(resolve_tracking_uri()):
            root = Path(mlflow.artifacts.download_artifacts(artifact_uri=source))
    else:
        root = Path(source)
    if root.is_file():
        root = root.parent
    if (root / CONFIG_FILE).is_file():
        return root
    found = sorted(path.parent for path in root.rglob(CONFIG_FILE))
    if len(found) != 1:
        raise FileNotFoundError(
            f"{source}: expected one scanml model folder ({CONFIG_FILE} + {WEIGHTS_FILE}) "
            f"in {root}, found {len(found)}{': ' + ', '.join(map(str, found)) if found else ''}"
        )
    return found[0]


def _read_bundle_config(folder: Path) -> dict[str, Any]:
    config = json.loads((folder / CONFIG_FILE).read_text())
    if (
        config.get("format") != _BUNDLE_FORMAT
        or config.get("format_version", 0) > _BUNDLE_FORMAT_VERSION
    ):
        raise ValueError(
            f"{folder / CONFIG_FILE} is not a scanml model bundle this version can read "
            f"(format {config.get('format')!r}, version {config.get('format_version')!r})"
        )
    return config
