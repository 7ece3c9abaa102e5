"""MTCNN's R-Net, pretrained, convolutional trunk only (weights ship in facenet-pytorch)."""

from __future__ import annotations

import torch

from featalign.plugins import network
from featalign.pretrained import ConvTrunk, mtcnn


@network(
    name="mtcnn_rnet",
    description=(
        "MTCNN R-Net face detector (facenet-pytorch's data/rnet.pt), conv trunk up to the "
        "last PReLU before the heads; unpadded convs, ceil-mode max-pools; strides 1, 2, 4."
    ),
    layers=["prelu1", "prelu2", "prelu3"],
    invariant_to=[],
    in_channels=3,
    strides={"prelu1": 1, "prelu2": 2, "prelu3": 4},
    stages=ConvTrunk.stages,  # the trunk is a plain chain: stage by stage
)
def build() -> torch.nn.Module:
    """Images (N, 3, H, W) in [0, 1] -> {layer: (N, C, H_l, W_l)}."""
    return mtcnn("rnet")
