"""Figure: the MNIST network's training loss and held-out accuracy per epoch."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib.pyplot as plt
import matplotlib.ticker
import pandas as pd
import seaborn as sns
import torch
from matplotlib.figure import Figure

from featalign.figures.style import save, style

__all__ = ["plot_training_curve"]


def plot_training_curve(weights_path: str | Path, png: str | Path, pdf: str | Path) -> Figure:
    """The MNIST network's training loss and held-out accuracy per epoch (two panels).

    Only the weight file's ``meta`` is used (``history``, ``heldout_accuracy``).

    Args:
        weights_path: a weight file written by :func:`featalign.train.train_mnist`.
        png: output PNG path.
        pdf: output PDF path.

    Returns:
        The (closed) figure.

    Raises:
        ValueError: if the file has no training history.
    """
    blob = torch.load(weights_path, map_location="cpu", weights_only=True)
    meta = blob.get("meta", {}) if isinstance(blob, Mapping) else {}
    history = pd.DataFrame(meta.get("history", []))
    if history.empty or not {"epoch", "loss", "heldout_accuracy"} <= set(history.columns):
        raise ValueError(
            f"{weights_path} has no training history (meta['history'] with epoch, loss, "
            "heldout_accuracy); was it written by the train rule?"
        )
    final = float(meta.get("heldout_accuracy", history["heldout_accuracy"].iloc[-1]))
    with style():
        fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(6.5, 2.7), layout="constrained")
        ax_loss.plot(
            history["epoch"],
            history["loss"],
            marker="o",
            markersize=4,
            color=sns.color_palette("colorblind")[0],
        )
        ax_loss.set_xlabel("epoch")
        ax_loss.set_ylabel("training loss (cross-entropy)")
        ax_acc.plot(
            history["epoch"],
            100 * history["heldout_accuracy"],
            marker="o",
            markersize=4,
            color=sns.color_palette("colorblind")[2],
        )
        ax_acc.set_xlabel("epoch")
        ax_acc.set_ylabel("held-out accuracy (%)")
        for ax in (ax_loss, ax_acc):
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        n_held = meta.get("n_heldout")
        held = f" on {n_held} digits" if n_held else ""
        fig.suptitle(f"MNIST CNN: final held-out accuracy {100 * final:.1f} %{held}")
    return save(fig, png, pdf)
