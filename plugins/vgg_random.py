"""VGG-like random-init CNN: the generic network with no invariance.

3×3 convolutions with padding 1 and ReLUs, downsampling by centred 2×2 average
pooling (so layer offsets are (s − 1)/2 and 90° rotations map the grids onto
themselves). Its features are not invariant to rotation, reflection or scaling,
so the theory predicts that no warp of its feature maps undoes those.
"""

from __future__ import annotations

from typing import Annotated

from torch import nn

from featalign.nets import Tapped, seeded
from featalign.plugins import Range, network


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(cout, cout, 3, padding=1),
        nn.ReLU(),
    )


@network(
    name="vgg_random",
    description="VGG-like random-init CNN: two 3x3 convs + ReLU per block, centred 2x2 average "
    "pooling; layers at stride 1, 2, 4; no invariance beyond translation.",
    layers=["block1", "block2", "block3"],
    invariant_to=[],
    in_channels=3,
    strides={"block1": 1, "block2": 2, "block3": 4},
)
def build(width: Annotated[int, Range(min=1)] = 16, seed: int = 0) -> nn.Module:
    """Build the network.

    Args:
        width: channels of block1 (block2 and block3 have 2× and 4×).
        seed: seed of the random init.

    Returns:
        A module mapping (N, 3, H, W), H and W divisible by 4, to
        {block1: (N, w, H, W), block2: (N, 2w, H/2, W/2), block3: (N, 4w, H/4, W/4)}.
    """
    w = int(width)
    with seeded(int(seed)):
        return Tapped(
            [
                ("block1", _block(3, w)),
                ("block2", nn.Sequential(nn.AvgPool2d(2), _block(w, 2 * w))),
                ("block3", nn.Sequential(nn.AvgPool2d(2), _block(2 * w, 4 * w))),
            ]
        )
