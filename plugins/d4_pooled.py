"""D4-pooled network: exactly invariant to 90° rotations and flips of the pixel grid.

Every 3×3 filter is applied in its 8 images under the symmetries of the square
(``torch.rot90`` and ``flip`` of the kernel, which keep the centre tap fixed) and
the responses are max-pooled; downsampling is an odd symmetric blur then centred
2×2 average pooling. On a square canvas divisible by 4 the features commute with
the 8 grid symmetries to float precision; other rotations are not covered.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from torch import nn

from featalign.nets import BlurPool2d, GroupPooledConv2d, Tapped, d4_copies, seeded
from featalign.plugins import Range, network


def _pooled(cin: int, cout: int, pool: str) -> nn.Module:
    w = torch.randn(cout, cin, 3, 3) * (2.0 / (9 * cin)) ** 0.5
    return nn.Sequential(GroupPooledConv2d(d4_copies(w), 0.1 * torch.randn(cout), pool), nn.ReLU())


@network(
    name="d4_pooled",
    description="3x3 filters pooled (max) over the 8 symmetries of the pixel grid, blur + centred "
    "average pooling; layers at stride 1, 2, 4; exactly invariant to 90 deg rotations and flips.",
    layers=["block1", "block2", "block3"],
    invariant_to=["rotation90", "flip"],
    in_channels=3,
    strides={"block1": 1, "block2": 2, "block3": 4},
)
def build(
    width: Annotated[int, Range(min=1)] = 16,
    pool: Literal["max", "mean"] = "max",
    seed: int = 0,
) -> nn.Module:
    """Build the network.

    Args:
        width: channels of block1 (block2 and block3 have twice as many).
        pool: ``"max"`` or ``"mean"`` over the 8 filter copies.
        seed: seed of the random filters.

    Returns:
        A module mapping (N, 3, H, W), H and W divisible by 4, to
        {block1: (N, w, H, W), block2: (N, 2w, H/2, W/2), block3: (N, 2w, H/4, W/4)}.
    """
    w = int(width)
    with seeded(int(seed)):
        return Tapped(
            [
                ("block1", _pooled(3, w, pool)),
                ("block2", nn.Sequential(BlurPool2d(1.0), _pooled(w, 2 * w, pool))),
                ("block3", nn.Sequential(BlurPool2d(1.0), _pooled(2 * w, 2 * w, pool))),
            ]
        )
