"""Tiny CPU-only networks for the tests (load with plugin_dirs=[tests/plugins]).

``tiny`` returns a dict itself; ``tiny_nodes`` is a plain ``nn.Sequential`` whose
layers are picked by torchvision graph node names.
"""

from __future__ import annotations

import torch
from torch import nn

from featalign.plugins import network


class _Tiny(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3, padding=1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        c = torch.relu(self.conv(x))
        return {"conv": c, "pool": nn.functional.avg_pool2d(c, 2)}


@network(
    name="tiny",
    description="One random 3x3 conv + ReLU, then 2x2 average pooling (tests only).",
    layers=["conv", "pool"],
    invariant_to=[],
    in_channels=1,
)
def build(width: int = 2, seed: int = 0) -> nn.Module:
    """Return a module mapping (N, 1, H, W) to {conv: (N, w, H, W), pool: (N, w, H/2, W/2)}.

    Args:
        width: output channels.
        seed: seed of the random weights.
    """
    gen = torch.Generator().manual_seed(int(seed))
    net = _Tiny(int(width))
    with torch.no_grad():
        net.conv.weight.copy_(torch.randn(net.conv.weight.shape, generator=gen) / 3)
        net.conv.bias.copy_(torch.randn(net.conv.bias.shape, generator=gen) / 10)
    return net


@network(
    name="tiny_nodes",
    description="The same layers as tiny, as an nn.Sequential picked by graph node names "
    "(tests only).",
    layers=["conv", "pool"],
    invariant_to=[],
    in_channels=1,
    nodes={"conv": "1", "pool": "2"},
)
def build_nodes(width: int = 2, seed: int = 0) -> nn.Module:
    """Return nn.Sequential(conv, relu, avgpool): node '1' is the ReLU, node '2' the pooling."""
    gen = torch.Generator().manual_seed(int(seed))
    net = nn.Sequential(nn.Conv2d(1, int(width), 3, padding=1), nn.ReLU(), nn.AvgPool2d(2))
    with torch.no_grad():
        net[0].weight.copy_(torch.randn(net[0].weight.shape, generator=gen) / 3)
        net[0].bias.copy_(torch.randn(net[0].bias.shape, generator=gen) / 10)
    return net
