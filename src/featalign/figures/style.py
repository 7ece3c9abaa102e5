"""The look every figure shares: fonts, palettes, labels, saving, lines with bands.

**Print size**: figures are sized in inches for the page they are meant for and
never rescaled; every font is at least 8 pt at that size (:data:`RC`). Layouts
are matplotlib's constrained layout, saved with a tight bounding box.

**Colours** are colour-blind safe: measures, claim families and networks use
seaborn's ``colorblind`` palette, verdicts the Okabe–Ito colours of
:data:`VERDICT_COLOURS`. A claim family keeps its colour in every figure.

**Evaluations** (``dense``, ``as_built``; :data:`EVALUATION_LABELS`) come dense
first: dense maps judge the theorem, maps as built show aliasing too.

**Saving**: :func:`save` writes a figure as a PNG and a PDF, each atomically
(through :func:`featalign.io.atomic_path`), closes it and returns it, so that
tests can inspect its axes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.patches import Polygon

from featalign.io import atomic_path
from featalign.names import MEASURES
from featalign.summary.claims import OUTCOMES
from featalign.summary.families import CLAIM_FAMILIES

__all__ = [
    "DISAGREEMENT_MARK",
    "ERROR_LABEL",
    "EVALUATION_LABELS",
    "EXCESS_LABEL",
    "FAMILY_LABELS",
    "LOG_FLOOR",
    "MAGNITUDE_LABELS",
    "MEASURE_LABELS",
    "RC",
    "UNRESOLVED_MARK",
    "VERDICT_COLOURS",
    "distinct_evaluations",
    "evaluation_label",
    "family_label",
    "facet_axes",
    "family_palette",
    "interval_label",
    "label_exposed_axes",
    "band",
    "line_with_band",
    "marker",
    "measure_palette",
    "save",
    "style",
    "units_label",
]

log = logging.getLogger(__name__)

#: Matplotlib settings of every figure: fonts ≥ 8 pt at the saved size, embeddable PDF text.
RC: dict[str, Any] = {
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "legend.title_fontsize": 8,
    "figure.titlesize": 10,
    "pdf.fonttype": 42,
    "savefig.dpi": 200,
}

#: Verdict colours (Okabe–Ito: blue, vermillion, reddish purple, yellow; grey for no
#: verdict); a prediction (aligned, not aligned) takes its verdict's colour.
VERDICT_COLOURS: dict[str, str] = dict(
    zip(OUTCOMES, ("#0072B2", "#D55E00", "#CC79A7", "#F0E442", "#BBBBBB"), strict=True)
)

#: The mark drawn on a verdict-grid cell whose verdict disagrees with the prediction.
DISAGREEMENT_MARK = "✗"

#: The mark drawn on a verdict-grid cell whose verdict is ``unresolved`` (besides its colour).
UNRESOLVED_MARK = "∅"

#: How figures name the evaluations (dense first).
EVALUATION_LABELS: dict[str, str] = {
    "dense": "dense (shift-and-stitch)",
    "as_built": "as built (strided)",
}

#: x-axis label of each transformation family's magnitude (see geometry.from_family).
MAGNITUDE_LABELS: dict[str, str] = {
    "translation": "shift in x and y (pixel)",
    "rotation": "rotation angle (degree)",
    "reflection": "reflection axis angle (degree)",
    "scaling": "scale factor",
    "anisotropic_scaling": "scale factor along x (1/m along y)",
    "shear": "shear coefficient (x += k y)",
    "affine": "distance from the identity",
}

#: Display names of the claim families.
FAMILY_LABELS: dict[str, str] = {
    "translation": "translation (stride multiple)",
    "translation_substride": "translation (sub-stride)",
    "rotation90": "rotation (90° multiple)",
    "rotation": "rotation",
    "flip": "flip (grid symmetry)",
    "reflection": "reflection",
    "scaling": "scaling",
    "anisotropic_scaling": "anisotropic scaling",
    "shear": "shear",
    "affine": "general affine",
}

#: Legend names of the measures.
MEASURE_LABELS: dict[str, str] = {
    "none": "none: Γ(T_g f)",
    "oracle": "oracle: T_g⁻¹ Γ(T_g f)",
    "affine": "best affine warp",
    "dense": "best dense warp",
    "mixing": "oracle + channel mixing",
    "input": "input realigned (floor)",
    "constant": "constant (baseline)",
}

ERROR_LABEL = "relative error"
EXCESS_LABEL = "excess error: min(affine, dense) − input"
#: Errors at or below this are drawn at it on logarithmic axes.
LOG_FLOOR = 1e-6


def family_palette() -> dict[str, tuple[float, float, float]]:
    """One colour per claim family, the same in every figure."""
    colours = sns.color_palette("colorblind", len(CLAIM_FAMILIES))
    return dict(zip(CLAIM_FAMILIES, colours))


def measure_palette() -> dict[str, tuple[float, float, float]]:
    """One colour per measure, the same in every figure."""
    colours = sns.color_palette("colorblind", len(MEASURES))
    return dict(zip(MEASURES, colours))


def style() -> Any:
    """The rc context of every figure: seaborn's whitegrid style with :data:`RC` fonts."""
    return plt.rc_context({**sns.axes_style("whitegrid"), **RC})


def save(fig: Figure, png: str | Path, pdf: str | Path) -> Figure:
    """Write ``fig`` as PNG and PDF (atomically), close it and return it.

    The layout is computed once, for the PNG; the PDF reuses it (a constrained layout
    of a figure with a hundred panels took as long as drawing it).
    """
    try:
        for path, fmt in ((png, "png"), (pdf, "pdf")):
            with atomic_path(path) as tmp:
                fig.savefig(
                    tmp, format=fmt, dpi=RC["savefig.dpi"], bbox_inches="tight", pad_inches=0.05
                )
            log.info("wrote %s", path)
            fig.set_layout_engine("none")  # keeps the axes where the layout put them
    finally:
        plt.close(fig)
    return fig


def family_label(family: str) -> str:
    """The display name of a claim family (:data:`FAMILY_LABELS`).

    Example:
        >>> family_label("rotation90"), family_label("new_family")
        ('rotation (90° multiple)', 'new family')
    """
    return FAMILY_LABELS.get(family, family.replace("_", " "))


def evaluation_label(evaluation: str) -> str:
    """The display name of an evaluation (:data:`EVALUATION_LABELS`).

    Example:
        >>> evaluation_label("as_built"), evaluation_label("other")
        ('as built (strided)', 'other')
    """
    return EVALUATION_LABELS.get(evaluation, str(evaluation))


def distinct_evaluations(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` without the ``as_built`` rows of layers whose dense rows have the same stride.

    A layer of stride 1 (or any layer with ``features.dense`` off) has one set of maps:
    its dense evaluation is the as-built one. A figure that draws one mark per problem
    draws them once, as dense.

    Example:
        >>> f = pd.DataFrame(dict(dataset="d", network="n", layer=["a", "a", "b", "b"],
        ...     evaluation=["as_built", "dense"] * 2, stride=[1, 1, 2, 1]))
        >>> distinct_evaluations(f)[["layer", "evaluation"]].values.tolist()
        [['a', 'dense'], ['b', 'as_built'], ['b', 'dense']]
    """
    if "evaluation" not in frame:
        return frame
    keys = ["dataset", "network", "layer"]
    dense = frame.loc[frame["evaluation"] == "dense", [*keys, "stride"]].drop_duplicates()
    same = set(map(tuple, dense.to_numpy().tolist()))
    rows = frame[[*keys, "stride"]].to_numpy().tolist()
    dup = (frame["evaluation"] == "as_built").to_numpy() & np.array(
        [tuple(k) in same for k in rows], dtype=bool
    )
    return frame[~dup]


def units_label(name: str, attrs: Mapping[str, Any]) -> str:
    """``name (units)`` from a variable's attributes; dimensionless units are left out.

    Example:
        >>> units_label("shift", {"units": "pixel"}), units_label("error", {"units": "1"})
        ('shift (pixel)', 'error')
    """
    units = str(attrs.get("units", "")).strip()
    return f"{name} ({units})" if units and units != "1" else name


def interval_label(confidence: float) -> str:
    """How a legend names the interval of the mean.

    Example:
        >>> interval_label(0.95), interval_label(0.9)
        ('95 % bootstrap interval', '90 % bootstrap interval')
    """
    return f"{100 * confidence:g} % bootstrap interval"


def marker(k: int) -> str:
    """The marker of the k-th line."""
    return ("o", "X", "s", "P", "D", "^", "v", "p")[k % 8]


def band(ax: Any, x: Any, low: Any, high: Any, *, color: Any, alpha: float) -> None:
    """A translucent band between ``low`` and ``high`` over ``x`` (sorted), as one polygon
    (one per call, degenerate for fewer than two points).

    What ``ax.fill_between`` draws for finite values (points without both bounds are
    left out), at a fraction of its cost: since Matplotlib 3.11 every
    ``fill_between`` rescales the view of all the axes it shares, which on a figure
    of a hundred shared panels took a third of its time.
    """
    x, low, high = (np.asarray(v, dtype=float) for v in (x, low, high))
    keep = np.isfinite(x) & np.isfinite(low) & np.isfinite(high)
    x, low, high = x[keep], low[keep], high[keep]
    if len(x):  # ax.fill asks for a lazy rescale of the view
        ax.fill(np.r_[x, x[::-1]], np.r_[low, high[::-1]], color=color, alpha=alpha,
                linewidth=0)  # fmt: skip
    else:  # nothing to draw, but one polygon per call all the same
        ax.add_patch(Polygon(np.zeros((0, 2)), facecolor=color, alpha=alpha, linewidth=0))


def line_with_band(
    ax: Any, summary: pd.DataFrame, x: str, *, color: Any, marker: str, label: str
) -> None:
    """A mean line with markers and its interval as a translucent band.

    Args:
        ax: the axes.
        summary: rows of :func:`featalign.summary.excess.mean_interval` (``mean``,
            ``low``, ``high``) with the column ``x``.
        x: the column on the x axis.
        color: the line's colour.
        marker: the line's marker.
        label: the line's legend label.
    """
    summary = summary.sort_values(x)
    band(ax, summary[x], summary["low"], summary["high"], color=color, alpha=0.2)
    ax.plot(
        summary[x],
        summary["mean"],
        color=color,
        marker=marker,
        markersize=4,
        linewidth=1.2,
        label=label,
    )


def facet_axes(
    n: int, col_wrap: int, *, facet: tuple[float, float], extra: tuple[float, float]
) -> tuple[Figure, np.ndarray, int]:
    """A wrapped grid of ``n`` facets with shared axes (call inside :func:`style`).

    Args:
        n: facets.
        col_wrap: facets per row at most.
        facet: (width, height) of one facet in inches.
        extra: (width, height) in inches added for labels and titles.

    Returns:
        (figure, axes of shape (rows, columns), columns); facets past ``n`` are hidden
        by :func:`label_exposed_axes`.
    """
    ncols = min(col_wrap, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(extra[0] + facet[0] * ncols, extra[1] + facet[1] * nrows),
        squeeze=False,
        sharex=True,
        sharey=True,
        layout="constrained",
    )
    return fig, axes, ncols


def label_exposed_axes(axes: np.ndarray, n_used: int, ncols: int, xlabel: str) -> None:
    """In a wrapped facet grid, give x tick labels and the x label to facets with none below."""
    flat = axes.ravel()
    for k in range(n_used):
        exposed = k + ncols >= n_used
        flat[k].xaxis.set_tick_params(labelbottom=exposed)
        flat[k].set_xlabel(xlabel if exposed else "")
    for ax in flat[n_used:]:
        ax.set_visible(False)
