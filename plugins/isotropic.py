"""Isotropic network: radially symmetric filters only.

Every filter is a random combination of a delta and isotropic Gaussians (each a
function of the radius only, cut off at 4σ so that the square support does not
show), followed by a pointwise ReLU; channels mix only through 1×1 convolutions;
downsampling is a Gaussian blur then centred 2×2 average pooling. The features
are rotation and reflection invariant up to sampling (exactly so on 90°
rotations and flips).
"""

from __future__ import annotations

from typing import Annotated

from torch import nn

from featalign.nets import BlurPool2d, RadialConv2d, Tapped, seeded
from featalign.plugins import Range, network


@network(
    name="isotropic",
    description="Radially symmetric filters (delta + Gaussians of 1-3 px, 1-2 and 1 grid steps in "
    "the three blocks, cut at 4 sigma), "
    "ReLU, 1x1 mixing, blur + centred average pooling; layers at stride 1, 2, 4; rotation and "
    "reflection invariant up to sampling.",
    layers=["block1", "block2", "block3"],
    invariant_to=["rotation", "reflection"],
    in_channels=3,
    strides={"block1": 1, "block2": 2, "block3": 4},
)
def build(width: Annotated[int, Range(min=1)] = 16, seed: int = 0) -> nn.Module:
    """Build the network.

    Args:
        width: channels of block1 (block2 and block3 have twice as many).
        seed: seed of the random 1×1 mixing weights.

    Returns:
        A module mapping (N, 3, H, W), H and W divisible by 4, to
        {block1: (N, w, H, W), block2: (N, 2w, H/2, W/2), block3: (N, 2w, H/4, W/4)}.
    """
    w = int(width)
    with seeded(int(seed)):
        return Tapped(
            [
                ("block1", nn.Sequential(RadialConv2d(3, w, (1.0, 2.0, 3.0)), nn.ReLU())),
                (
                    "block2",
                    nn.Sequential(BlurPool2d(1.0), RadialConv2d(w, 2 * w, (1.0, 2.0)), nn.ReLU()),
                ),
                (
                    "block3",
                    nn.Sequential(BlurPool2d(1.0), RadialConv2d(2 * w, 2 * w, (1.0,)), nn.ReLU()),
                ),
            ]
        )
