"""torchvision's ResNet-18: seeded random init, or a local weight file."""

from __future__ import annotations

from pathlib import Path

import torch

from featalign.plugins import network
from featalign.pretrained import resnet18


def stages(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """The network up to layer2 as a chain (for the stage-by-stage dense evaluation):
    each residual block is one step, so a stage runs once per phase of its own stride."""
    return [
        ("conv1", model.conv1),
        ("bn1", model.bn1),
        ("relu", model.relu),
        ("maxpool", model.maxpool),
        ("layer1", model.layer1),
        ("layer2", model.layer2),
    ]


@network(
    name="resnet18",
    description=(
        "torchvision ResNet-18 (random init with option seed, or option weights: a local "
        "file such as resnet18-f37072fd.pth); stem 7x7/2 conv and 3x3/2 max-pool are "
        "padded, so grids are offset (measured, not assumed)."
    ),
    layers=["relu", "layer1", "layer2"],
    invariant_to=[],
    in_channels=3,
    # strides 2, 4, 8; each layer's last graph node (the registry wants exact node names)
    nodes={"relu": "relu", "layer1": "layer1.1.relu_1", "layer2": "layer2.1.relu_1"},
    strides={"relu": 2, "layer1": 4, "layer2": 8},
    stages=stages,
)
def build(*, seed: int = 0, weights: str | Path | None = None) -> torch.nn.Module:
    """Images (N, 3, H, W) -> logits; the registry extracts the layers by node name."""
    return resnet18(seed=seed, weights=weights)
