"""Figure: the best affine warp's error against the oracle's, one point per problem."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from featalign.figures.style import (
    LOG_FLOOR,
    distinct_evaluations,
    evaluation_label,
    facet_axes,
    family_label,
    family_palette,
    label_exposed_axes,
    save,
    style,
)
from featalign.names import EVALUATION_ORDER
from featalign.summary.excess import problem_excess
from featalign.summary.families import CLAIM_FAMILIES
from featalign.summary.tables import ordered

__all__ = ["EVALUATION_MARKERS", "plot_affine_vs_oracle"]

#: The marker of each evaluation.
EVALUATION_MARKERS: dict[str, str] = {"dense": "o", "as_built": "X"}


def plot_affine_vs_oracle(
    errors: pd.DataFrame, png: str | Path, pdf: str | Path, *, col_wrap: int = 3
) -> Figure:
    """The best affine warp's error against the oracle's, one point per problem.

    Log–log scatter with the diagonal y = x, hue by claim family, marker by
    evaluation (:data:`EVALUATION_MARKERS`; a layer with one set of maps, stride 1,
    once, as dense: :func:`~featalign.figures.style.distinct_evaluations`), one facet
    per network (all datasets and layers together). Points below
    the diagonal are problems where the optimiser beat the inverse warp; errors
    ≤ 1e-6 are drawn at 1e-6.

    Args:
        errors: the tidy errors table.
        png: output PNG path.
        pdf: output PDF path.
        col_wrap: facets per row.

    Returns:
        The (closed) figure.

    Raises:
        ValueError: if the table has no affine or no oracle errors.
    """
    wide = problem_excess(errors)
    if "oracle" not in wide or wide[["affine", "oracle"]].isna().all().any():
        raise ValueError("the errors table needs both 'affine' and 'oracle' measures")
    wide = distinct_evaluations(wide.dropna(subset=["affine", "oracle"])).copy()
    for m in ("affine", "oracle"):
        wide[m] = wide[m].clip(lower=LOG_FLOOR)
    networks = sorted(wide["network"].unique())
    families = ordered(wide["claim_family"].unique().tolist(), CLAIM_FAMILIES)
    evaluations = ordered(wide["evaluation"].unique().tolist(), EVALUATION_ORDER)
    markers = {e: EVALUATION_MARKERS.get(e, "s") for e in evaluations}
    palette = family_palette()
    lo = float(min(wide["affine"].min(), wide["oracle"].min())) / 1.5
    hi = float(max(wide["affine"].max(), wide["oracle"].max())) * 1.5
    with style():
        fig, axes, ncols = facet_axes(len(networks), col_wrap, facet=(2.8, 2.7), extra=(1.0, 0.8))
        flat = axes.ravel()
        for k, net in enumerate(networks):
            ax = flat[k]
            sns.scatterplot(
                data=wide[wide["network"] == net],
                x="oracle",
                y="affine",
                hue="claim_family",
                hue_order=families,
                palette=palette,
                style="evaluation",
                style_order=evaluations,
                markers=markers,
                s=12,
                alpha=0.8,
                linewidth=0,
                ax=ax,
                legend=False,
            )
            ax.plot([lo, hi], [lo, hi], color="0.3", linestyle="--", linewidth=0.8)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlim(lo, hi)
            ax.set_ylim(lo, hi)
            ax.set_aspect("equal")
            ax.set_title(net)
            ax.set_ylabel("best affine warp error" if k % ncols == 0 else "")
        label_exposed_axes(axes, len(networks), ncols, "oracle error, $T_g^{-1}\\Gamma(T_g f)$")
        handles = [
            Line2D(
                [],
                [],
                color=palette.get(f, "0.5"),
                marker="o",
                linestyle="",
                markersize=5,
                label=family_label(f),
            )
            for f in families
        ]
        handles += [
            Line2D(
                [],
                [],
                color="0.3",
                marker=markers[e],
                linestyle="",
                markersize=5,
                label=evaluation_label(e),
            )
            for e in evaluations
        ]
        handles.append(Line2D([], [], color="0.3", linestyle="--", label="y = x"))
        fig.legend(
            handles=handles,
            loc="outside right center",
            title="claim family, evaluation",
            frameon=False,
        )
        fig.suptitle("What the optimiser gains over the inverse warp (relative errors)")
    return save(fig, png, pdf)
