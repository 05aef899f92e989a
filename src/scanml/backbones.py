"""The torchvision backbones a scanml network is built on.

Each supported classifier family is cut into a dense feature extractor (its
pooling and classifier dropped; ResNets optionally with fewer stages, and
with dilated last stages for a finer output grid), its first convolution
replaced for the scan's energy channels, and probed for where its output
cells sit on the input (:class:`OutputGrid`).
:func:`scanml.models.create_model` puts the 1x1 head on it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

__all__ = [
    "FAMILIES",
    "SUPPORTED_ARCHITECTURES",
    "InputConv2d",
    "OutputGrid",
    "adapt_first_conv",
    "dilate",
    "layer_count",
    "probe",
    "replace_first_conv",
    "supported_output_strides",
    "supported_stages",
]


@dataclass(frozen=True)
class OutputGrid:
    """Where a network's output cells sit on its input grid.

    Cell ``i`` (along either axis) is centred at input coordinate
    ``offset + stride * i`` (continuous coordinates, pixel edges at
    integers) and depends on at most the ``receptive_field`` input pixels
    around that centre. ResNets centre cell 0 on the first pixel (offset
    0.5), ConvNeXt's patchifying stem on its first patch (offset stride/2):
    heat maps and boxes are placed with this, not with an assumed convention.
    """

    stride: int
    offset: float
    receptive_field: int


@dataclass(frozen=True)
class _Family:
    """How to cut one family of torchvision classifiers into a dense feature extractor.

    ``feature_layers`` picks the layers up to the last feature map, under
    their torchvision names, so a torchvision state dict loads into them
    unchanged; ``first_conv`` is the path of the input convolution among
    them; ``dilatable`` lists the stages whose stride can become dilation.
    """

    feature_layers: Callable[[nn.Module], list[tuple[str, nn.Module]]]
    first_conv: str
    dilatable: tuple[str, ...] = ()


_RESNET_LAYER_NAMES = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")


def _resnet_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, getattr(model, name)) for name in _RESNET_LAYER_NAMES]


def _features_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [("features", model.features)]


def _convnext_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    # ConvNeXt normalises its last feature map inside the classifier. That
    # LayerNorm2d acts per location, so it belongs to a dense network; it
    # keeps its torchvision name (classifier.0) so pretrained weights load.
    return [("features", model.features), ("classifier", nn.Sequential(model.classifier[0]))]


def _regnet_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [("stem", model.stem), ("trunk_output", model.trunk_output)]


_RESNET = _Family(_resnet_layers, "conv1", dilatable=("layer3", "layer4"))
_FEATURES = _Family(_features_layers, "features.0.0")
_CONVNEXT = _Family(_convnext_layers, "features.0.0")
_REGNET = _Family(_regnet_layers, "stem.0")

FAMILIES: dict[str, _Family] = {
    "resnet18": _RESNET,
    "resnet34": _RESNET,
    "resnet50": _RESNET,
    "resnet101": _RESNET,
    "resnext50_32x4d": _RESNET,
    "wide_resnet50_2": _RESNET,
    "convnext_tiny": _CONVNEXT,
    "convnext_small": _CONVNEXT,
    "regnet_x_400mf": _REGNET,
    "regnet_y_400mf": _REGNET,
    "efficientnet_b0": _FEATURES,
    "efficientnet_b1": _FEATURES,
    "efficientnet_v2_s": _FEATURES,
    "mobilenet_v2": _FEATURES,
    "mobilenet_v3_small": _FEATURES,
    "mobilenet_v3_large": _FEATURES,
}

# Architectures create_model builds. The ResNets, ConvNeXts and regnet_x
# are strictly local: a location's logit depends only on its receptive
# field, so scoring a tile and scoring a whole scan agree exactly. The
# EfficientNets, MobileNetV3s and regnet_y use squeeze-and-excitation,
# whose gates average each feature map over the whole input: their dense
# logits depend a little on everything else in the tile or scan.
SUPPORTED_ARCHITECTURES: tuple[str, ...] = tuple(FAMILIES)


def supported_output_strides(name: str, stages: int | None = None) -> list[int]:
    """The output strides ``create_model(name, ..., output_stride=..., stages=...)`` accepts.

    A whole backbone ends at stride 32; a ResNet cut after ``stages`` stages
    ends at ``2 ** (stages + 1)``, and each of its kept dilatable stages can
    halve that.
    """
    family = FAMILIES[name]
    native = 32 >> (4 - stages) if stages is not None else 32
    dilatable = [stage for stage in family.dilatable if _kept(name, stage, stages)]
    return [native >> n for n in range(len(dilatable) + 1)]


def supported_stages(name: str) -> list[int]:
    """The ``stages`` values ``create_model(name, ...)`` accepts besides None (ResNets: 2-4)."""
    return [2, 3, 4] if FAMILIES[name] is _RESNET else []


def layer_count(name: str, stages: int) -> int:
    """How many of a ResNet's feature layers a network cut after ``stages`` stages keeps."""
    if stages not in supported_stages(name):
        raise ValueError(
            f"{name} cannot be cut to {stages} stages; "
            f"supported: {supported_stages(name) or 'none (only ResNets can be cut)'}"
        )
    return _RESNET_LAYER_NAMES.index(f"layer{stages}") + 1


def _kept(name: str, stage: str, stages: int | None) -> bool:
    return stages is None or _RESNET_LAYER_NAMES.index(stage) < layer_count(name, stages)


def dilate(
    backbone: nn.Sequential, name: str, output_stride: int, stages: int | None = None
) -> None:
    """Trade the strides of the last stages for dilation, as DeepLab does.

    The same surgery as torchvision's ``replace_stride_with_dilation``
    (strides to 1; the stage's first block keeps the previous dilation, the
    others get the new one), done on the convolutions themselves so that it
    also works for the basic-block ResNets torchvision refuses to dilate.
    """
    dilatable = [stage for stage in FAMILIES[name].dilatable if _kept(name, stage, stages)]
    choices = supported_output_strides(name, stages)
    if output_stride not in choices:
        raise ValueError(f"{name} supports output_stride {choices}, got {output_stride}")
    previous = 1
    for stage_name in dilatable[len(dilatable) - choices.index(output_stride) :]:
        dilation = previous * 2
        for index, block in enumerate(backbone.get_submodule(stage_name)):
            block_dilation = previous if index == 0 else dilation
            for conv in block.modules():
                if isinstance(conv, nn.Conv2d):
                    conv.stride = (1, 1)
                    if conv.kernel_size[0] > 1:
                        conv.dilation = (block_dilation, block_dilation)
                        conv.padding = (block_dilation, block_dilation)
        previous = dilation


class InputConv2d(nn.Conv2d):
    """The network's input convolution: float32 even under autocast.

    Its input is attenuation in physical units, where a 0.1 substitution of
    cargo is a ~1 % change beside walls that span the whole range; bfloat16
    (an 8-bit mantissa, steps of 0.4-0.8 %) would quantise it away before
    the first filter sees it. This layer is ~5 % of the network's compute;
    the layers after it read features, not raw attenuation.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        device = x.device.type
        if not (torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device)):
            return super().forward(x)
        with torch.autocast(device, enabled=False):
            return super().forward(x.float())


def replace_first_conv(backbone: nn.Module, path: str, in_channels: int) -> None:
    """Swap the input convolution for one taking ``in_channels``, its weights adapted."""
    parent_path, _, attribute = path.rpartition(".")
    parent = backbone.get_submodule(parent_path)
    old = getattr(parent, attribute)
    new = InputConv2d(
        in_channels,
        old.out_channels,
        old.kernel_size,
        stride=old.stride,
        padding=old.padding,
        dilation=old.dilation,
        groups=old.groups,
        bias=old.bias is not None,
    )
    with torch.no_grad():
        new.weight.copy_(adapt_first_conv(old.weight, in_channels))
        if old.bias is not None:
            new.bias.copy_(old.bias)
    setattr(parent, attribute, new)


def adapt_first_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Input-convolution weights ``[O, C_in, k, k]`` made for ``in_channels`` inputs.

    Each new channel gets the sum of the old filters divided by the new
    channel count (the RGB mean scaled by 3/C), so an image with the same
    value in every channel (grey, or a dual-energy pair over air) gives the
    same response as before: what the pretrained network learned about
    intensity patterns carries over unchanged. A no-op when counts match.
    """
    if weight.shape[1] == in_channels:
        return weight
    return weight.sum(dim=1, keepdim=True).div(in_channels).repeat(1, in_channels, 1, 1)


def probe(backbone: nn.Module, in_channels: int) -> tuple[OutputGrid, int]:
    """The backbone's output grid and feature width, read off its layers.

    One forward pass on the meta device (shapes only: no memory, no
    arithmetic) records every convolution and pooling in execution order.
    With ``jump`` the input stride of a layer (kernel k, stride s, padding
    p, dilation d), the receptive field grows by ``(k - 1) * d * jump`` and
    cell 0's centre moves by ``((k - 1) * d / 2 - p) * jump`` (Araujo et al.,
    Distill 2019). A layer's jump is looked up by the size of its input, so
    the 1x1 shortcut projections that run beside a residual block's main
    path count neither twice nor in the wrong place. Pointwise layers,
    squeeze-excitation's among them, are skipped: they add no extent.
    """
    size = 1024
    layers: list[tuple[nn.Module, int, int]] = []

    def record(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        layers.append((module, inputs[0].shape[-1], output.shape[-1]))

    hooks = [
        module.register_forward_hook(record)
        for module in backbone.modules()
        if isinstance(module, nn.Conv2d | nn.MaxPool2d | nn.AvgPool2d)
    ]
    tensors = {
        key: torch.empty_like(value, device="meta")
        for key, value in (*backbone.named_parameters(), *backbone.named_buffers())
    }
    try:
        output = functional_call(
            backbone, tensors, (torch.empty(1, in_channels, size, size, device="meta"),)
        )
    finally:
        for hook in hooks:
            hook.remove()
    jumps, receptive_field, centre = {size: 1}, 1, 0.0
    for module, size_in, size_out in layers:
        kernel, stride, padding, dilation = (
            _first(getattr(module, attribute, 1))
            for attribute in ("kernel_size", "stride", "padding", "dilation")
        )
        if kernel == 1 and stride == 1:
            continue
        jump = jumps[size_in]
        jumps[size_out] = jump * stride
        receptive_field += (kernel - 1) * dilation * jump
        centre += ((kernel - 1) * dilation / 2 - padding) * jump
    grid = OutputGrid(
        stride=jumps[output.shape[-1]], offset=centre + 0.5, receptive_field=receptive_field
    )
    return grid, output.shape[1]


def _first(value: int | tuple[int, ...]) -> int:
    """One axis of a square kernel, stride or padding (given as an int or a pair)."""
    return value[0] if isinstance(value, tuple) else value
