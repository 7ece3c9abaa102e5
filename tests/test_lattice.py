"""Tests of featalign.lattice: each layer's stride, grid offset and receptive field."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from featalign.extractor import build_extractor
from featalign.lattice import measure_grid, probe_grid
from featalign.nets import BlurPool2d, Tapped
from featalign.plugins import get_network

REPO_PLUGINS = Path(__file__).resolve().parents[1] / "plugins"


def _extractor(name: str, **options: object) -> nn.Module:
    return build_extractor(get_network(name, [REPO_PLUGINS]), options)


class _Subsample(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., ::2, ::2]


class TestMeasureGrid:
    def test_same_padded_pooled(self) -> None:
        """'same' padding + centred 2×2 pooling: offset (s − 1)/2."""
        net = Tapped(
            [
                ("conv", nn.Conv2d(2, 3, 3, padding=1)),
                ("pool1", nn.Sequential(nn.AvgPool2d(2), nn.ReLU(), nn.Conv2d(3, 3, 3, padding=1))),
                ("pool2", nn.Sequential(BlurPool2d(1.0), nn.Conv2d(3, 3, 3, padding=1))),
                ("pool3", nn.AvgPool2d(2)),
            ]
        )
        grid = measure_grid(net, 2, size=64)
        assert grid == {
            "conv": (1, 0.0, 0.0, 64, 64),
            "pool1": (2, 0.5, 0.5, 32, 32),
            "pool2": (4, 1.5, 1.5, 16, 16),
            "pool3": (8, 3.5, 3.5, 8, 8),
        }

    @pytest.mark.parametrize("k", [3, 5, 7])
    def test_unpadded_conv(self, k: int) -> None:
        """An unpadded k×k conv shrinks the map; its first pixel sits at (k − 1)/2."""
        net = Tapped([("conv", nn.Conv2d(1, 2, k))])
        probe = probe_grid(net, 1, size=32)["conv"]
        assert (probe.stride, probe.offset_y, probe.offset_x) == (1, (k - 1) / 2, (k - 1) / 2)
        assert (probe.height, probe.width) == (33 - k, 33 - k)
        assert probe.extent_y == (-(k - 1) / 2, (k - 1) / 2)

    def test_strided_conv_and_subsampling(self) -> None:
        """Strided convs and x[::2] sample at 0 mod s: half a pixel off the centred grid."""
        net = Tapped(
            [
                ("strided", nn.Conv2d(1, 2, 3, stride=2, padding=1)),
                ("sub", _Subsample()),
            ]
        )
        assert measure_grid(net, 1, size=32) == {
            "strided": (2, 0.0, 0.0, 16, 16),
            "sub": (4, 0.0, 0.0, 8, 8),
        }

    def test_stride_three_unpadded(self) -> None:
        net = Tapped([("c", nn.Conv2d(1, 1, 3, stride=3)), ("d", nn.Conv2d(1, 1, 3, stride=2))])
        grid = measure_grid(net, 1, size=60)
        assert grid["c"] == (3, 1.0, 1.0, 20, 20)
        assert grid["d"][:3] == (6, 4.0, 4.0)

    def test_max_pooling(self) -> None:
        net = Tapped([("pool", nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.MaxPool2d(2)))])
        assert measure_grid(net, 1, size=32)["pool"] == (2, 0.5, 0.5, 16, 16)

    def test_exception(self) -> None:
        class Const(nn.Module):
            def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
                return {"c": torch.zeros_like(x)}

        with pytest.raises(ValueError, match="does not depend on the input"):
            measure_grid(Const(), 1, size=16)

    @pytest.mark.parametrize("name", ["vgg_random", "d4_pooled", "rotation_pooled"])
    def test_builtin_offsets(self, name: str) -> None:
        grid = measure_grid(_extractor(name), 3, size=64)
        for stride, oy, ox, h, w in grid.values():
            assert (oy, ox) == ((stride - 1) / 2, (stride - 1) / 2)
            assert h == w == 64 // stride
