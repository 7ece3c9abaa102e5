"""Figure: relative error against transformation magnitude, per layer and family, per measure.

A strided layer gets two rows, dense first (shift-and-stitch, then the maps as
built); a stride-1 layer one, where both evaluations are the same maps.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from featalign.figures.style import (
    ERROR_LABEL,
    LOG_FLOOR,
    MAGNITUDE_LABELS,
    MEASURE_LABELS,
    family_label,
    interval_label,
    line_with_band,
    marker,
    measure_palette,
    save,
    style,
)
from featalign.names import EVALUATION_ORDER, FAMILIES, MEASURES
from featalign.summary.excess import DEFAULT_EVALUATION, mean_interval
from featalign.summary.tables import check_columns, ordered

__all__ = ["figure_rows", "plot_error_vs_magnitude"]


def figure_rows(errors: pd.DataFrame) -> list[tuple[str, str, str]]:
    """The figure's rows: (layer, evaluation, label), by depth, dense first.

    A layer whose dense maps have the as-built stride (stride 1, or ``features.dense``
    off) has one set of maps: it gets one row (dense), labelled with its name alone;
    a strided layer one row per evaluation present.

    Example:
        >>> e = pd.DataFrame(dict(layer=["a", "a", "b", "b"], depth=[0, 0, 1, 1],
        ...     evaluation=["as_built", "dense"] * 2, stride=[1, 1, 2, 1]))
        >>> figure_rows(e)
        [('a', 'dense', 'a'), ('b', 'dense', 'b, dense'), ('b', 'as_built', 'b, as built (stride 2)')]
    """
    out = []
    layers = errors[["layer", "depth"]].drop_duplicates().sort_values(["depth", "layer"])
    for layer in layers["layer"]:
        here = errors[errors["layer"] == layer]
        strides = here.groupby("evaluation")["stride"].max().to_dict()
        evals = ordered(list(strides), EVALUATION_ORDER)
        if strides.get("as_built", strides.get("dense")) == strides.get("dense"):
            evals = ["dense"]  # one set of maps: the dense evaluation is the as-built one
        for ev in evals:
            if len(evals) == 1:
                label = str(layer)
            elif ev == "as_built":
                label = f"{layer}, as built (stride {int(strides[ev])})"
            else:
                label = f"{layer}, {ev}"
            out.append((layer, ev, label))
    return out


def plot_error_vs_magnitude(
    errors: pd.DataFrame,
    dataset: str,
    network: str,
    png: str | Path,
    pdf: str | Path,
    *,
    measures: Sequence[str] = MEASURES,
    confidence: float = 0.95,
    resamples: int = 1000,
    seed: int = 0,
) -> Figure:
    """Error against magnitude per family, one line per measure with a bootstrap interval.

    Rows are the network's layers in depth order, a strided layer's dense maps
    above its maps as built (:func:`figure_rows`), columns the transformation
    families present (in :data:`featalign.names.FAMILIES` order). Lines are the
    mean over samples (and affine draws), bands the percentile-bootstrap interval
    of that mean (:func:`featalign.summary.excess.mean_interval`). The y axis is
    logarithmic (the errors span the input floor, ~1e-4, to the constant baseline, 1);
    errors ≤ 1e-6 are drawn at 1e-6. The errors are not the judged excess: the
    interval's settings are this figure's own.

    Args:
        errors: the tidy errors table.
        dataset: which dataset.
        network: which network.
        png: output PNG path.
        pdf: output PDF path.
        measures: which measures to draw, in legend order.
        confidence: of each interval.
        resamples: bootstrap resamples of each interval.
        seed: bootstrap seed.

    Returns:
        The (closed) figure.

    Raises:
        ValueError: if the table has no rows for (dataset, network).
    """
    check_columns(
        errors,
        ["dataset", "network", "layer", "depth", "family", "magnitude", "measure", "error"],
        "errors",
    )
    sub = errors[(errors["dataset"] == dataset) & (errors["network"] == network)]
    sub = sub[sub["measure"].isin(measures)].copy()
    if sub.empty:
        have = sorted(set(zip(errors["dataset"], errors["network"])))
        raise ValueError(f"no errors for dataset {dataset!r}, network {network!r}; have {have}")
    sub["error"] = sub["error"].clip(lower=LOG_FLOOR)
    if "evaluation" not in sub:
        sub["evaluation"] = DEFAULT_EVALUATION
    rows = figure_rows(sub)
    families = ordered(sub["family"].unique().tolist(), FAMILIES)
    order = [m for m in measures if m in set(sub["measure"])]
    palette = measure_palette()
    summary = mean_interval(
        sub,
        ["layer", "evaluation", "family", "measure", "magnitude"],
        "error",
        confidence=confidence,
        resamples=resamples,
        seed=seed,
    )
    nrows, ncols = len(rows), len(families)
    with style():
        fig, axes = plt.subplots(
            nrows,
            ncols,
            figsize=(1.5 + 2.1 * ncols, 0.9 + 1.9 * nrows),
            squeeze=False,
            sharey=True,
            layout="constrained",
        )
        for i, (layer, evaluation, label) in enumerate(rows):
            row = summary[(summary["layer"] == layer) & (summary["evaluation"] == evaluation)]
            for j, fam in enumerate(families):
                ax = axes[i, j]
                cell = row[row["family"] == fam]
                for k, m in enumerate(order):
                    line = cell[cell["measure"] == m]
                    if not line.empty:
                        line_with_band(
                            ax,
                            line,
                            "magnitude",
                            color=palette[m],
                            marker=marker(k),
                            label=MEASURE_LABELS.get(m, m),
                        )
                ax.set_yscale("log")
                ax.set_xlabel(MAGNITUDE_LABELS.get(fam, "magnitude") if i == nrows - 1 else "")
                ax.set_ylabel(f"{label}\n{ERROR_LABEL}" if j == 0 else "")
                if i == 0:
                    ax.set_title(family_label(fam))
        handles = [
            Line2D(
                [],
                [],
                color=palette[m],
                marker=marker(k),
                markersize=4,
                linewidth=1.2,
                label=MEASURE_LABELS.get(m, m),
            )
            for k, m in enumerate(order)
        ]
        fig.legend(
            handles=handles,
            loc="outside lower center",
            ncols=min(len(order), 4),
            title=f"measure (line: mean over samples, band: {interval_label(confidence)})",
            frameon=False,
        )
        fig.suptitle(f"Relative error against transformation magnitude: {network} on {dataset}")
    return save(fig, png, pdf)
