"""Figure (the report's headline): how the measured excess separates the theory's predictions.

Per claim family and evaluation one panel: every claim predicted ``aligned`` and
every claim predicted ``not aligned``, one point per magnitude of its sweep at
Ē_m − r_m, its mean excess over the resolution there (floor + τ; README
"Verdicts"). 0 is the resolution: the rule calls a claim aligned when its whole
interval stays below it at every magnitude, not aligned when it lies clearly
above it at the largest. The title gives the family's separation, the AUC of
Ē_M − r_M at the largest magnitude (:func:`featalign.summary.separation.separation_table`).

:func:`separation_points` computes what the figure shows with the claims table's
own estimator (:func:`featalign.summary.claims.magnitude_levels`): at each claim's
largest magnitude a point is ``effect − resolution`` of ``claims.csv``.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from featalign.figures.style import (
    MAGNITUDE_LABELS,
    VERDICT_COLOURS,
    evaluation_label,
    family_label,
    save,
    style,
)
from featalign.names import EVALUATION_ORDER
from featalign.summary.claims import magnitude_levels
from featalign.summary.excess import problem_excess
from featalign.summary.families import CLAIM_FAMILIES, transform_family
from featalign.summary.separation import separation_table
from featalign.summary.tables import check_columns, ordered

__all__ = ["PREDICTIONS", "STATISTIC_LABEL", "plot_separation", "separation_points"]

#: The two populations, in drawing order.
PREDICTIONS: tuple[str, ...] = ("aligned", "not aligned")

STATISTIC_LABEL = "excess over the resolution, Ē_m − (floor + τ)"

#: The columns that name a claim in both tables (claims.csv's ``family`` is the claim family).
_JOIN = ("dataset", "network", "layer", "evaluation")


def separation_points(
    errors: pd.DataFrame,
    claims: pd.DataFrame,
    *,
    margin: float,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """Every claim's Ē_m − r_m at every level of its sweep, with the claim's prediction.

    Args:
        errors: the tidy errors table.
        claims: its claims table (for the predictions).
        margin: τ (``claims.margin``).
        confidence: of the levels' intervals (``claims.confidence``).
        resamples: bootstrap resamples (``claims.bootstrap``).
        seed: bootstrap seed (``seed``).

    Returns:
        :func:`~featalign.summary.claims.magnitude_levels`'s rows of the claims
        predicted ``aligned`` or ``not aligned``, with ``prediction``, ``statistic``
        (``mean − resolution``) and ``largest`` (the claim's largest level).
    """
    check_columns(claims, [*_JOIN, "family", "prediction"], "claims")
    levels = magnitude_levels(
        problem_excess(errors),
        margin=margin,
        confidence=confidence,
        resamples=resamples,
        seed=seed,
    )
    preds = claims[[*_JOIN, "family", "prediction"]].rename(columns={"family": "claim_family"})
    out = levels.merge(preds, on=[*_JOIN, "claim_family"], how="inner", validate="many_to_one")
    out = out[out["prediction"].isin(PREDICTIONS)].copy()
    out["statistic"] = out["mean"] - out["resolution"]
    top = out.groupby([*_JOIN, "claim_family"], sort=False)["level"].transform("max")
    out["largest"] = out["level"] == top
    return out.reset_index(drop=True)


def _positions(cell: pd.DataFrame) -> tuple[dict[float, int], list[str]]:
    """x position of each deformation size of a family, and the tick labels (magnitudes)."""
    members: dict[float, set[float]] = {}
    for size, text in zip(cell["size"], cell["members"]):
        members.setdefault(float(size), set()).update(float(m) for m in str(text).split(", "))
    sizes = sorted(members)
    labels = [", ".join(f"{m:g}" for m in sorted(members[s])) for s in sizes]
    return {s: k for k, s in enumerate(sizes)}, labels


def plot_separation(
    errors: pd.DataFrame,
    claims: pd.DataFrame,
    png: str | Path,
    pdf: str | Path,
    *,
    margin: float,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
    col_wrap: int = 2,
) -> Figure:
    """Both populations' excess over the resolution against magnitude, per family and evaluation.

    One panel per claim family × evaluation (the evaluations of a family side by
    side, dense first; ``col_wrap`` families per row), for the claim families with
    a prediction. In a panel, each claim predicted aligned (blue) or not aligned
    (vermillion) is one point per level of its sweep at Ē_m − r_m
    (:func:`separation_points`), the two populations side by side at each level,
    a claim's largest level drawn filled and its smaller ones hollow. The x axis
    holds the family's magnitudes ordered by deformation (pooled magnitudes share a
    tick); the y axis, shared, is symmetric-logarithmic, linear within ± τ; the
    line at 0 is the resolution. The title gives the AUC of the filled points
    (:func:`~featalign.summary.separation.separation_table`) and the populations'
    sizes (not aligned / aligned). Axes carry the gid ``"family|evaluation"``,
    point collections their prediction and ``"largest"`` or ``"smaller"``.

    Args:
        errors: the tidy errors table.
        claims: its claims table (``claims.csv``, same config).
        png: output PNG path.
        pdf: output PDF path.
        margin: τ (``claims.margin``).
        confidence: ``claims.confidence``.
        resamples: ``claims.bootstrap``.
        seed: ``seed``.
        col_wrap: families per row.

    Returns:
        The (closed) figure.

    Raises:
        ValueError: if no claim carries a prediction.
    """
    points = separation_points(
        errors, claims, margin=margin, confidence=confidence, resamples=resamples, seed=seed
    )
    if points.empty:
        raise ValueError("no claim predicted aligned or not aligned: nothing to separate")
    sep = separation_table(claims)
    families = ordered(points["claim_family"].unique().tolist(), CLAIM_FAMILIES)
    evaluations = ordered(points["evaluation"].unique().tolist(), EVALUATION_ORDER)
    n_eval = len(evaluations)
    rng = np.random.default_rng(0)
    offsets = {"aligned": -0.17, "not aligned": 0.17}
    with style():
        # the y axis is shared; x is each family's own magnitudes
        ncols = min(col_wrap, len(families)) * n_eval
        nrows = math.ceil(len(families) * n_eval / ncols)
        fig, axes = plt.subplots(
            nrows,
            ncols,
            figsize=(1.3 + 2.2 * ncols, 1.4 + 2.3 * nrows),
            squeeze=False,
            sharey=True,
            layout="constrained",
        )
        flat = axes.ravel()
        for f, fam in enumerate(families):
            fam_points = points[points["claim_family"] == fam]
            where, ticks = _positions(fam_points)
            for e, ev in enumerate(evaluations):
                ax = flat[f * n_eval + e]
                ax.set_gid(f"{fam}|{ev}")
                cell = fam_points[fam_points["evaluation"] == ev]
                for pred in PREDICTIONS:
                    pop = cell[cell["prediction"] == pred]
                    for largest in (False, True):
                        part = pop[pop["largest"] == largest]
                        if part.empty:
                            continue
                        x = np.array([where[float(s)] for s in part["size"]], dtype=float)
                        x += offsets[pred] + rng.uniform(-0.09, 0.09, size=x.size)
                        colour = VERDICT_COLOURS[pred]
                        coll = ax.scatter(
                            x,
                            part["statistic"],
                            s=14 if largest else 10,
                            facecolors=colour if largest else "none",
                            edgecolors=colour,
                            linewidths=0.8,
                            alpha=0.8,
                        )
                        coll.set_gid(f"{pred}|{'largest' if largest else 'smaller'}")
                ax.axhline(0.0, color="0.2", linestyle="--", linewidth=0.9)
                ax.set_yscale("symlog", linthresh=margin if margin > 0 else 1e-3)
                ax.set_xticks(range(len(ticks)))
                ax.set_xticklabels(ticks, rotation=30 if len(ticks) > 3 else 0)
                ax.set_xlim(-0.6, len(ticks) - 0.4)
                ax.set_xlabel(MAGNITUDE_LABELS.get(transform_family(fam), "magnitude"))
                hit = sep[(sep["family"] == fam) & (sep["evaluation"] == ev)]
                value = float(hit["auc"].iloc[0]) if not hit.empty else math.nan
                n_na = int(hit["not_aligned"].iloc[0]) if not hit.empty else 0
                n_a = int(hit["aligned"].iloc[0]) if not hit.empty else 0
                auc_text = "n/a" if not math.isfinite(value) else f"{value:.2f}"
                ax.set_title(
                    f"{family_label(fam)}, {evaluation_label(ev).split(' (')[0]}\n"
                    f"AUC {auc_text} ({n_na} / {n_a})"
                )
        for ax in flat[len(families) * n_eval :]:
            ax.set_visible(False)
        fig.supylabel(STATISTIC_LABEL)
        handles = [
            Line2D(
                [],
                [],
                color=VERDICT_COLOURS[p],
                marker="o",
                linestyle="",
                markersize=5,
                label=f"predicted {p}",
            )
            for p in PREDICTIONS
        ]
        handles += [
            Line2D(
                [],
                [],
                color="0.3",
                marker="o",
                markerfacecolor="none",
                linestyle="",
                markersize=5,
                label="smaller magnitudes",
            ),
            Line2D([], [], color="0.3", marker="o", linestyle="", markersize=5, label="largest"),
            Line2D([], [], color="0.2", linestyle="--", label="resolution (floor + τ)"),
        ]
        fig.legend(handles=handles, loc="outside lower center", ncols=5, frameon=False)
        fig.suptitle(
            "Separation of the theory's predictions: excess over the resolution per claim and "
            "magnitude\n(AUC of the largest magnitude's points, not aligned vs aligned; "
            "in brackets: not aligned / aligned claims)"
        )
    return save(fig, png, pdf)
