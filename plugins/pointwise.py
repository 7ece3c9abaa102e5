"""Pointwise network: 1×1 convolutions and ReLUs only.

Each feature pixel depends on one image pixel, so warping the feature maps
commutes with warping the image for every spatial transformation (up to
interpolation): the positive control for every family.
"""

from __future__ import annotations

from typing import Annotated

from torch import nn

from featalign.nets import Tapped, seeded
from featalign.plugins import FAMILIES, Range, network


@network(
    name="pointwise",
    description="1x1 convolutions and ReLUs only (random init); invariant to every spatial "
    "transformation up to interpolation: the positive control.",
    layers=["conv1", "conv2", "conv3"],
    invariant_to=FAMILIES,
    in_channels=3,
    strides={"conv1": 1, "conv2": 1, "conv3": 1},
)
def build(width: Annotated[int, Range(min=1)] = 16, seed: int = 0) -> nn.Module:
    """Build the network.

    Args:
        width: channels of conv1 (conv2 and conv3 have twice as many).
        seed: seed of the random init.

    Returns:
        A module mapping (N, 3, H, W) to {conv1: (N, width, H, W),
        conv2, conv3: (N, 2·width, H, W)}.
    """
    w = int(width)
    with seeded(int(seed)):
        return Tapped(
            [
                ("conv1", nn.Sequential(nn.Conv2d(3, w, 1), nn.ReLU())),
                ("conv2", nn.Sequential(nn.Conv2d(w, 2 * w, 1), nn.ReLU())),
                ("conv3", nn.Sequential(nn.Conv2d(2 * w, 2 * w, 1), nn.ReLU())),
            ]
        )
