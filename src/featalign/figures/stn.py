"""Figures of the STN study: accuracy and invariance against placement, the predicted
warp against the applied transformation, and the training curves."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from featalign.figures.style import band, save, style
from featalign.io import open_dataset
from featalign.stn.summary import REBUILD

__all__ = ["plot_stn_accuracy", "plot_stn_curves", "plot_stn_predicted"]

MEASURE_LABELS = {"test_accuracy": "test accuracy (%)", "invariance": "invariance (%)"}
UNIT_LABELS = {"rotation": "angle (°)", "scaling": "log2 scale factor"}


def _open(paths: Iterable[str | Path]) -> list:
    return [open_dataset(p, kind="stn result", rebuild=REBUILD,
                         variables=("view_applied", "view_predicted", "test_accuracy_curve"),
                         attrs=("variant", "stn_dataset")) for p in paths]  # fmt: skip


def plot_stn_accuracy(
    runs: pd.DataFrame, table: pd.DataFrame, png: str | Path, pdf: str | Path
) -> Figure:
    """Test accuracy and invariance against placement, one column per dataset: the mean
    over seeds with its interval (error bars) and each seed (dots).

    Args:
        runs: :func:`featalign.stn.summary.runs_table`.
        table: :func:`featalign.stn.summary.summary_table` of the same runs.
        png: output PNG path.
        pdf: output PDF path.

    Returns:
        The (closed) figure.
    """
    datasets = list(dict.fromkeys(runs["dataset"]))
    variants = list(dict.fromkeys(runs["variant"]))
    x = {v: i for i, v in enumerate(variants)}
    colour = sns.color_palette("colorblind")[0]
    with style():
        fig, axes = plt.subplots(2, len(datasets), figsize=(3.2 * len(datasets), 4.6),
                                 squeeze=False, sharex=True, layout="constrained")  # fmt: skip
        for j, dataset in enumerate(datasets):
            for i, measure in enumerate(MEASURE_LABELS):
                ax = axes[i, j]
                seeds = runs[runs["dataset"] == dataset]
                ax.scatter(seeds["variant"].map(x) + 0.12, 100 * seeds[measure], s=8,
                           color="0.55", label="one seed", zorder=2)  # fmt: skip
                rows = table[(table["dataset"] == dataset) & (table["measure"] == measure)]
                mean, low, high = (100 * rows[c].to_numpy() for c in ("mean", "low", "high"))
                err = np.vstack([mean - low, high - mean])
                ax.errorbar(rows["variant"].map(x), mean, yerr=np.nan_to_num(err), fmt="o",
                            color=colour, capsize=3, label="mean, interval over seeds", zorder=3)  # fmt: skip
                ax.set_ylabel(MEASURE_LABELS[measure])
                if i == 0:
                    family = seeds["family"].iloc[0]
                    ax.set_title(dataset if dataset == family else f"{dataset} ({family})")
            axes[-1, j].set_xticks(range(len(variants)), variants)
            axes[-1, j].set_xlabel("placement of the transformer")
        axes[0, 0].legend(loc="lower left", fontsize="small")
    return save(fig, png, pdf)


def plot_stn_predicted(paths: Iterable[str | Path], png: str | Path, pdf: str | Path) -> Figure:
    """The predicted warp's parameter against the applied transformation's, one row per
    dataset and one column per placement with a transformer: the mean over test digits
    and seeds per view, a band of ± one standard deviation, and the line of a warp that
    undoes the transformation exactly (slope −1).

    Args:
        paths: result files of ``stn_train``.
        png: output PNG path.
        pdf: output PDF path.

    Returns:
        The (closed) figure.
    """
    rows = []
    for ds in _open(paths):
        if ds.attrs["variant"] == "none":
            continue
        applied = np.broadcast_to(ds["view_applied"].values, ds["view_predicted"].shape)
        rows.append(pd.DataFrame({
            "dataset": ds.attrs["stn_dataset"], "family": ds.attrs["family"],
            "variant": ds.attrs["variant"], "seed": int(ds.attrs["seed"]),
            "applied": applied.ravel(), "predicted": ds["view_predicted"].values.ravel(),
        }))  # fmt: skip
    frame = pd.concat(rows, ignore_index=True)
    datasets = list(dict.fromkeys(frame["dataset"]))
    variants = list(dict.fromkeys(frame["variant"]))
    colour = sns.color_palette("colorblind")[1]
    with style():
        fig, axes = plt.subplots(len(datasets), len(variants), squeeze=False,
                                 figsize=(1.9 * len(variants) + 0.6, 2.0 * len(datasets) + 0.4),
                                 layout="constrained")  # fmt: skip
        for i, dataset in enumerate(datasets):
            for j, variant in enumerate(variants):
                ax = axes[i, j]
                sub = frame[(frame["dataset"] == dataset) & (frame["variant"] == variant)]
                if sub.empty:
                    ax.set_axis_off()
                    continue
                stats = sub.groupby("applied")["predicted"].agg(["mean", "std"]).reset_index()
                band(ax, stats["applied"], stats["mean"] - stats["std"],
                     stats["mean"] + stats["std"], color=colour, alpha=0.25)  # fmt: skip
                ax.plot(stats["applied"], stats["mean"], marker="o", ms=3, color=colour)
                ax.plot(stats["applied"], -stats["applied"], ls="--", color="0.3", lw=1)
                slope = np.polyfit(sub["applied"], sub["predicted"], 1)[0]
                ax.text(0.04, 0.05, f"slope {slope:+.2f}", transform=ax.transAxes, fontsize=8)
                ax.set_title(f"{variant}", fontsize=9)
                unit = UNIT_LABELS[sub["family"].iloc[0]]
                ax.set_xlabel(f"applied {unit}", fontsize=8)
                if j == 0:
                    ax.set_ylabel(f"{dataset}: predicted {unit}", fontsize=8)
    return save(fig, png, pdf)


def plot_stn_curves(paths: Iterable[str | Path], png: str | Path, pdf: str | Path) -> Figure:
    """Test accuracy after each epoch, mean over seeds, one line per placement and one
    panel per dataset.

    Args:
        paths: result files of ``stn_train``.
        png: output PNG path.
        pdf: output PDF path.

    Returns:
        The (closed) figure.
    """
    rows = [pd.DataFrame({"dataset": ds.attrs["stn_dataset"], "variant": ds.attrs["variant"],
                          "epoch": ds["epoch"].values,
                          "accuracy": 100 * ds["test_accuracy_curve"].values})
            for ds in _open(paths)]  # fmt: skip
    frame = pd.concat(rows, ignore_index=True)
    datasets = list(dict.fromkeys(frame["dataset"]))
    variants = list(dict.fromkeys(frame["variant"]))
    palette = dict(zip(variants, sns.color_palette("colorblind", len(variants))))
    with style():
        fig, axes = plt.subplots(1, len(datasets), figsize=(3.2 * len(datasets), 2.8),
                                 squeeze=False, sharey=True, layout="constrained")  # fmt: skip
        for ax, dataset in zip(axes[0], datasets):
            sub = frame[frame["dataset"] == dataset]
            for variant in variants:
                mean = sub[sub["variant"] == variant].groupby("epoch")["accuracy"].mean()
                ax.plot(mean.index, mean.values, marker="o", ms=3, color=palette[variant],
                        label=variant)  # fmt: skip
            ax.set_title(dataset)
            ax.set_xlabel("epoch")
        axes[0, 0].set_ylabel("test accuracy (%)")
        axes[0, -1].legend(fontsize="small", title="placement")
    return save(fig, png, pdf)
