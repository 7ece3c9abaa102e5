"""Figure: the excess over the input floor against layer depth, per claim family and network.

:func:`excess_by_depth` computes what the figure shows, with the claims table's
estimator (:mod:`featalign.summary.excess`): for the same ``confidence``,
``resamples`` and ``seed``, each point and band is the ``excess_mean``, ``ci_low``
and ``ci_high`` of that claim (dataset × network × layer × evaluation × claim
family) in ``claims.csv``. Dense evaluation is drawn solid, the maps as built
dotted.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from featalign.figures.style import (
    EXCESS_LABEL,
    evaluation_label,
    facet_axes,
    family_label,
    interval_label,
    label_exposed_axes,
    line_with_band,
    save,
    style,
)
from featalign.names import EVALUATION_ORDER
from featalign.summary.excess import mean_interval, problem_excess
from featalign.summary.families import CLAIM_FAMILIES
from featalign.summary.tables import ordered

__all__ = ["LINE_STYLES", "excess_by_depth", "plot_excess_vs_depth"]

#: (line style, marker) of each evaluation.
LINE_STYLES: dict[str, tuple[str, str]] = {"dense": ("-", "o"), "as_built": (":", "s")}


def excess_by_depth(
    errors: pd.DataFrame,
    dataset: str,
    *,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """The mean excess and its bootstrap interval per claim family × network × evaluation × depth.

    Args:
        errors: the tidy errors table.
        dataset: which dataset.
        confidence: of each interval (the config's ``claims.confidence``).
        resamples: bootstrap resamples (``claims.bootstrap``).
        seed: bootstrap seed (``seed``).

    Returns:
        One row per claim family × network × evaluation × depth:
        ``claim_family, network, evaluation, depth, mean, low, high, n, rows``
        (:func:`featalign.summary.excess.mean_interval`); a table without an
        ``evaluation`` column is ``as_built``.

    Raises:
        ValueError: if the table has no rows for the dataset.
    """
    sub = errors[errors["dataset"] == dataset]
    if sub.empty:
        raise ValueError(
            f"no errors for dataset {dataset!r}; have {sorted(errors['dataset'].unique())}"
        )
    return mean_interval(
        problem_excess(sub),
        ["claim_family", "network", "evaluation", "depth"],
        "excess",
        confidence=confidence,
        resamples=resamples,
        seed=seed,
    )


def plot_excess_vs_depth(
    errors: pd.DataFrame,
    dataset: str,
    png: str | Path,
    pdf: str | Path,
    *,
    margin: float | None = None,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
    col_wrap: int = 4,
) -> Figure:
    """The excess over the input floor against layer depth, per network and evaluation, per claim family.

    Lines are the mean excess over the family's problems (samples × transforms, every
    magnitude) at each depth, bands its bootstrap interval (:func:`excess_by_depth`):
    ``excess_mean``, ``ci_low``, ``ci_high`` of ``claims.csv``. One colour per network,
    dense evaluation solid, maps as built dotted (:data:`LINE_STYLES`); each line's
    label is its network, its gid its evaluation. The y axis is symmetric-logarithmic
    (the excess can be slightly negative), linear within ± margin (or ± 1e-3 without
    a margin).

    Args:
        errors: the tidy errors table.
        dataset: which dataset.
        png: output PNG path.
        pdf: output PDF path.
        margin: τ, the optimiser's tolerance; drawn as a dashed horizontal line when
            given (the verdicts compare the excess with the floor + τ, per magnitude).
        confidence: of each interval (the config's ``claims.confidence``).
        resamples: bootstrap resamples (``claims.bootstrap``).
        seed: bootstrap seed (``seed``).
        col_wrap: facets per row.

    Returns:
        The (closed) figure.

    Raises:
        ValueError: if the table has no rows for the dataset.
    """
    summary = excess_by_depth(
        errors, dataset, confidence=confidence, resamples=resamples, seed=seed
    )
    families = ordered(summary["claim_family"].unique().tolist(), CLAIM_FAMILIES)
    networks = sorted(summary["network"].unique())
    palette = dict(zip(networks, sns.color_palette("colorblind", len(networks))))
    evaluations = ordered(summary["evaluation"].unique().tolist(), EVALUATION_ORDER)
    depths = sorted(summary["depth"].unique())
    linthresh = margin if margin and margin > 0 else 1e-3
    with style():
        fig, axes, ncols = facet_axes(len(families), col_wrap, facet=(2.3, 2.0), extra=(1.2, 1.1))
        flat = axes.ravel()
        for k, fam in enumerate(families):
            ax = flat[k]
            cell = summary[summary["claim_family"] == fam]
            for net in networks:
                for ev in evaluations:
                    line = cell[(cell["network"] == net) & (cell["evaluation"] == ev)]
                    if line.empty:
                        continue
                    style_, mark = LINE_STYLES.get(ev, ("--", "^"))
                    line_with_band(ax, line, "depth", color=palette[net], marker=mark, label=net)
                    ax.get_lines()[-1].set_linestyle(style_)
                    ax.get_lines()[-1].set_gid(ev)
            if margin is not None:
                ax.axhline(margin, color="0.2", linestyle="--", linewidth=1.0)
            ax.axhline(0.0, color="0.6", linewidth=0.6)
            ax.set_yscale("symlog", linthresh=linthresh)
            ax.set_xticks(depths)
            ax.set_title(family_label(fam))
        label_exposed_axes(axes, len(families), ncols, "layer depth (0 = first layer)")
        fig.supylabel(EXCESS_LABEL)
        handles = [
            Line2D([], [], color=palette[n], marker="o", markersize=4, label=n) for n in networks
        ]
        for ev in evaluations:
            style_, mark = LINE_STYLES.get(ev, ("--", "^"))
            handles.append(
                Line2D(
                    [],
                    [],
                    color="0.3",
                    linestyle=style_,
                    marker=mark,
                    markersize=4,
                    label=evaluation_label(ev),
                )
            )
        if margin is not None:
            handles.append(Line2D([], [], color="0.2", linestyle="--", label=f"τ = {margin:g}"))
        fig.legend(handles=handles, loc="outside right upper", title="network", frameon=False)
        fig.suptitle(
            f"Excess over the input floor against depth ({dataset}; "
            f"mean and {interval_label(confidence)} over problems)"
        )
    return save(fig, png, pdf)
