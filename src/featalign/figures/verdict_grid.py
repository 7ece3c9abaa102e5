"""Figure: the verdicts as grids, one per evaluation (dense first); rows dataset / network /
layer, columns claim families."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from featalign.figures.style import (
    DISAGREEMENT_MARK,
    UNRESOLVED_MARK,
    VERDICT_COLOURS,
    evaluation_label,
    family_label,
    save,
    style,
)
from featalign.names import EVALUATION_ORDER
from featalign.summary.claims import claims_about
from featalign.summary.excess import DEFAULT_EVALUATION
from featalign.summary.families import CLAIM_FAMILIES
from featalign.summary.tables import check_columns, ordered

__all__ = ["RECOGNITION_PANELS", "plot_verdict_grid", "recognition_panels"]

#: The recognition claims' alignments, one panel each after the evaluations, in this order.
RECOGNITION_PANELS: tuple[str, ...] = ("oracle", "affine", "dense", "input")

#: A recognition verdict drawn in the colour of the alignment verdict it mirrors.
_AS_ALIGNMENT = {"restored": "aligned", "not restored": "not aligned"}


def recognition_panels(claims: pd.DataFrame) -> pd.DataFrame:
    """The claims with each recognition claim (``about == "recognition"``) moved to a panel
    of its own: ``evaluation`` becomes ``recognition: <alignment>`` and its verdict and
    prediction the alignment words of the same colour (restored -> aligned).

    Example:
        >>> c = pd.DataFrame(dict(evaluation=["dense", "as_built"], verdict=["aligned",
        ...     "restored"], prediction=["aligned", "not restored"], about=["alignment",
        ...     "recognition"], alignment=[None, "oracle"]))
        >>> recognition_panels(c)[["evaluation", "verdict", "prediction"]].values.tolist()
        [['dense', 'aligned', 'aligned'], ['recognition: oracle', 'aligned', 'not aligned']]
    """
    rec = claims_about(claims, "recognition")
    if rec.empty:
        return claims_about(claims, "alignment")
    rec = rec.assign(
        evaluation="recognition: " + rec["alignment"].astype(str),
        verdict=rec["verdict"].replace(_AS_ALIGNMENT),
        prediction=rec["prediction"].replace(_AS_ALIGNMENT),
    )
    return pd.concat([claims_about(claims, "alignment"), rec], ignore_index=True)


def _row_key(r: pd.Series) -> tuple[str, str, str]:
    return (str(r["dataset"]), str(r["network"]), str(r["layer"]))


def _draw_grid(
    ax: Any,
    claims: pd.DataFrame,
    rows: list[tuple[str, str, str]],
    cols: list[str],
    *,
    row_labels: bool,
) -> tuple[int, int, bool]:
    """One evaluation's grid on ``ax``; returns (predictions, disagreements, any n/a)."""
    verdicts = list(VERDICT_COLOURS)
    codes = np.full((len(rows), len(cols)), np.nan)
    row_index = {k: i for i, k in enumerate(rows)}
    col_index = {f: j for j, f in enumerate(cols)}
    marks: list[tuple[int, int]] = []
    unresolved: list[tuple[int, int]] = []
    unpredicted: list[tuple[int, int]] = []
    for _, r in claims.iterrows():
        i, j = row_index[_row_key(r)], col_index[r["family"]]
        codes[i, j] = verdicts.index(r["verdict"])
        if r["verdict"] == "unresolved":
            unresolved.append((i, j))
        if str(r["agreement"]) == "no":
            marks.append((i, j))
        elif str(r["agreement"]) == "n/a":
            unpredicted.append((i, j))
    n_rows, n_cols = len(rows), len(cols)
    cmap = ListedColormap([VERDICT_COLOURS[v] for v in verdicts]).with_extremes(bad="white")
    ax.imshow(
        np.ma.masked_invalid(codes),
        cmap=cmap,
        vmin=-0.5,
        vmax=len(verdicts) - 0.5,
        aspect="auto",
        interpolation="nearest",
    )
    ax.grid(False)
    ax.set_xticks(np.arange(n_cols - 1) + 0.5, minor=True)
    ax.set_yticks(np.arange(n_rows - 1) + 0.5, minor=True)
    ax.grid(which="minor", color="white", linewidth=0.8)
    ax.tick_params(which="minor", length=0)
    ax.set_xticks(np.arange(n_cols))
    ax.set_xticklabels(
        [family_label(c) for c in cols], rotation=40, ha="left", rotation_mode="anchor"
    )
    ax.xaxis.tick_top()
    ax.xaxis.set_label_position("top")
    ax.set_xlabel("claim family")
    ax.set_yticks(np.arange(n_rows))
    if row_labels:
        ax.set_yticklabels([f"{d} / {n} / {lay}" for d, n, lay in rows])
        ax.set_ylabel("dataset / network / layer")
    else:
        ax.tick_params(axis="y", labelleft=False)
    for i in range(1, n_rows):
        if rows[i][:2] != rows[i - 1][:2]:
            ax.axhline(i - 0.5, color="black", linewidth=1.4)
    for i, j in unpredicted:
        ax.add_patch(
            Rectangle(
                (j - 0.5, i - 0.5),
                1,
                1,
                fill=False,
                hatch="////",
                edgecolor=(1.0, 1.0, 1.0, 0.7),
                linewidth=0,
                gid="no-prediction",
            )
        )
    marked, unresolved_cells = set(marks), set(unresolved)
    for i, j in unresolved:  # beside a disagreement mark when both
        x = j - 0.2 if (i, j) in marked else j
        ax.text(x, i, UNRESOLVED_MARK, ha="center", va="center", fontsize=9, gid="unresolved")
    for i, j in marks:
        ax.add_patch(
            Rectangle(
                (j - 0.5, i - 0.5),
                1,
                1,
                fill=False,
                edgecolor="black",
                linewidth=1.5,
                gid="disagreement-border",
            )
        )
        x = j + 0.22 if (i, j) in unresolved_cells else j
        ax.text(
            x,
            i,
            DISAGREEMENT_MARK,
            ha="center",
            va="center",
            fontsize=10,
            fontweight="bold",
            color="black",
            gid="disagreement",
        )
    n_pred = int((claims["agreement"] != "n/a").sum())
    return n_pred, len(marks), bool(unpredicted)


def plot_verdict_grid(claims: pd.DataFrame, png: str | Path, pdf: str | Path) -> Figure:
    """Verdicts as grids, one per evaluation side by side (dense first): rows dataset /
    network / layer, columns claim families.

    A cell's colour is its verdict (:data:`VERDICT_COLOURS`); an ``unresolved`` cell
    also carries :data:`UNRESOLVED_MARK` (gid ``"unresolved"``); a cell whose verdict
    disagrees with the prediction (``agreement == "no"``) carries a bold
    :data:`DISAGREEMENT_MARK` (a text artist with gid ``"disagreement"``) and a
    black border; a cell without a prediction (``agreement == "n/a"``) is hatched
    white; empty cells (no problems of that family) stay white. Thick lines
    separate networks. Each grid's axes has its evaluation as gid and the rows of
    every evaluation, so that rows line up; only the first grid labels them. The
    figure's height grows with the number of rows. A table without an
    ``evaluation`` column is one grid (``as_built``).

    Recognition claims (``about == "recognition"``, :func:`recognition_panels`) get one
    panel per alignment after the evaluations, on the same rows: there ``aligned``
    means the classifier's decision is restored.

    Args:
        claims: the claims table (:data:`featalign.summary.CLAIMS_COLUMNS`).
        png: output PNG path.
        pdf: output PDF path.

    Returns:
        The (closed) figure.

    Raises:
        ValueError: on an empty table or unknown verdicts.
    """
    check_columns(
        claims, ["dataset", "network", "layer", "depth", "family", "verdict", "agreement"], "claims"
    )
    if claims.empty:
        raise ValueError("the claims table is empty: nothing to plot")
    claims = recognition_panels(claims)
    unknown = set(claims["verdict"]) - set(VERDICT_COLOURS)
    if unknown:
        raise ValueError(f"unknown verdicts {sorted(unknown)}; known: {list(VERDICT_COLOURS)}")
    if "evaluation" not in claims:
        claims = claims.assign(evaluation=DEFAULT_EVALUATION)
    rows_df = (
        claims[["dataset", "network", "layer", "depth"]]
        .drop_duplicates()
        .sort_values(["dataset", "network", "depth", "layer"])
    )
    rows = [_row_key(r) for _, r in rows_df.iterrows()]
    cols = ordered(claims["family"].unique().tolist(), CLAIM_FAMILIES)
    panels = (*EVALUATION_ORDER, *(f"recognition: {a}" for a in RECOGNITION_PANELS))
    evaluations = ordered(claims["evaluation"].unique().tolist(), panels)
    labels = [f"{d} / {n} / {lay}" for d, n, lay in rows]
    label_width = 0.07 * max(len(s) for s in labels)
    panel_width = 0.55 * len(cols) + 0.3
    any_unpredicted = False
    with style():
        fig, axes = plt.subplots(
            1,
            len(evaluations),
            figsize=(
                label_width + panel_width * len(evaluations) + 2.6,
                max(3.2, 1.9 + 0.24 * len(rows)),
            ),
            squeeze=False,
            layout="constrained",
        )
        for k, ev in enumerate(evaluations):
            ax = axes[0, k]
            ax.set_gid(ev)
            n_pred, n_no, unpredicted = _draw_grid(
                ax, claims[claims["evaluation"] == ev], rows, cols, row_labels=k == 0
            )
            any_unpredicted |= unpredicted
            ax.set_title(
                f"{evaluation_label(ev)}:\n{n_pred - n_no} of {n_pred} predictions confirmed",
                pad=12,
                loc="left",
            )
        present = [v for v in VERDICT_COLOURS if v in set(claims["verdict"])]
        handles: list[Any] = [
            Patch(
                facecolor=VERDICT_COLOURS[v],
                edgecolor="0.5",
                label=f"{v} ({UNRESOLVED_MARK})" if v == "unresolved" else v,
            )
            for v in present
        ]
        handles.append(
            Patch(
                facecolor="white",
                edgecolor="black",
                linewidth=1.5,
                label=f"{DISAGREEMENT_MARK} disagrees with the prediction",
            )
        )
        if any_unpredicted:
            handles.append(
                Patch(
                    facecolor="0.55",
                    edgecolor="white",
                    hatch="////",
                    linewidth=0,
                    label="hatched: no prediction (n/a)",
                )
            )
        recognised = any(str(e).startswith("recognition") for e in evaluations)
        axes[0, -1].legend(
            handles=handles,
            title="measured verdict"
            + ("\n(recognition: aligned = decision\nrestored)" if recognised else ""),
            loc="upper left",
            bbox_to_anchor=(1.02, 1.0),
            frameon=False,
            borderaxespad=0.0,
        )
    return save(fig, png, pdf)
