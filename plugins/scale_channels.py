"""Scale-channel network: Gaussian-derivative filters at many scales, max over scales.

Lindeberg's scale-covariant Gaussian derivative network: each layer applies, at
every scale channel σ_i = σ0·r^i, the scale-normalised 2-jet (L, σLx, σLy, σ²Lxx,
σ²Lxy, σ²Lyy) of the previous layer's features at σ_i, one fixed random 1×1
combination shared by all scales, and a ReLU; a layer's output is the maximum over
scale channels. A zoom by r^m shifts the scale channels by m, so the features are
approximately invariant to scaling (within the scale range). The combinations are
not rotation invariant. Stride 1.
"""

from __future__ import annotations

from typing import Annotated

from torch import nn

from featalign.nets import ScaleChannelNet, seeded
from featalign.plugins import Range, network


@network(
    name="scale_channels",
    description="Scale-normalised Gaussian-derivative (2-jet) layers at scales 1, 1.41, 2, "
    "2.83 px, "
    "shared random combinations, max over scales (Lindeberg); stride 1; approximately scale "
    "invariant.",
    layers=["block1", "block2"],
    invariant_to=["scaling"],
    in_channels=3,
    strides={"block1": 1, "block2": 1},
)
def build(
    width: Annotated[int, Range(min=1)] = 8,
    sigma0: Annotated[float, Range(above=0)] = 1.0,
    ratio: Annotated[float, Range(above=0)] = 2**0.5,
    n_scales: Annotated[int, Range(min=1)] = 4,
    seed: int = 0,
) -> nn.Module:
    """Build the network.

    Args:
        width: channels of block1 (block2 has 1.5× as many).
        sigma0: the finest scale in pixels.
        ratio: ratio between neighbouring scale channels.
        n_scales: number of scale channels.
        seed: seed of the random 1×1 combinations.

    Returns:
        A module mapping (N, 3, H, W) to {block1: (N, w, H, W), block2: (N, 1.5w, H, W)}.
    """
    w = int(width)
    sigmas = [float(sigma0) * float(ratio) ** i for i in range(int(n_scales))]
    with seeded(int(seed)):
        return ScaleChannelNet(3, (w, (3 * w) // 2), sigmas, ("block1", "block2"))
