"""Orientation-pooled network: every filter in rotated and mirrored copies, max-pooled.

Each filter is a smooth random kernel on a disk; it is applied in ``orientations``
rotated copies (resampled bilinearly in the first quadrant, exact ``rot90`` for the
other three) and in the same copies of its mirror image, and the response is the
maximum over all of them. The set of copies is closed exactly under 90° rotations
and flips, so the features are exactly invariant there, and approximately invariant
to every rotation and reflection (up to the angular step and resampling).
"""

from __future__ import annotations

from typing import Annotated

import torch
from torch import nn

from featalign.nets import (
    BlurPool2d,
    GroupPooledConv2d,
    Tapped,
    random_disk_kernels,
    rotated_copies,
    seeded,
)
from featalign.plugins import Range, network


def _pooled(cin: int, cout: int, size: int, orientations: int) -> nn.Module:
    copies = rotated_copies(random_disk_kernels(cout, cin, size), orientations, reflections=True)
    return nn.Sequential(GroupPooledConv2d(copies, torch.zeros(cout), pool="max"), nn.ReLU())


@network(
    name="rotation_pooled",
    description="Smooth random 7x7 filters in N rotated copies (N=8) and their mirror images, max "
    "over all copies, blur + centred average pooling; layers at stride 1, 2, 4; rotation and "
    "reflection invariant up to the angular step (exactly for 90 deg and flips).",
    layers=["block1", "block2", "block3"],
    invariant_to=["rotation", "reflection"],
    in_channels=3,
    strides={"block1": 1, "block2": 2, "block3": 4},
)
def build(
    width: Annotated[int, Range(min=1)] = 8,
    orientations: Annotated[int, Range(min=4, step=4)] = 8,
    kernel_size: Annotated[int, Range(min=1, step=2)] = 7,
    seed: int = 0,
) -> nn.Module:
    """Build the network.

    Args:
        width: channels of block1 (block2 and block3 have twice as many).
        orientations: rotated copies per filter, a multiple of 4.
        kernel_size: odd filter size.
        seed: seed of the random filters.

    Returns:
        A module mapping (N, 3, H, W), H and W divisible by 4, to
        {block1: (N, w, H, W), block2: (N, 2w, H/2, W/2), block3: (N, 2w, H/4, W/4)}.
    """
    w, n, k = int(width), int(orientations), int(kernel_size)
    with seeded(int(seed)):
        return Tapped(
            [
                ("block1", _pooled(3, w, k, n)),
                ("block2", nn.Sequential(BlurPool2d(1.0), _pooled(w, 2 * w, k, n))),
                ("block3", nn.Sequential(BlurPool2d(1.0), _pooled(2 * w, 2 * w, k, n))),
            ]
        )
