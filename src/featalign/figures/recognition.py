"""Figure: what a classifier decides after each alignment of layer k, against magnitude.

One panel per (transformation family, layer): the agreement of the top-1 decision with
the untransformed image's against the magnitude (the accuracy, where the samples have
labels, is in ``recognition.csv``), one line per alignment (``none``, ``oracle``,
``affine``, ``dense``, ``input``) with its Wilson interval as a band; each alignment on
its own sample set (:data:`featalign.names.PRIMARY_SET`: ``affine`` and ``dense``
on the dataset's samples, the others on the larger recognition set). A dotted line marks 1.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from featalign.figures.style import band, marker, save, style
from featalign.names import ALIGNMENTS, PRIMARY_SET

__all__ = ["ALIGNMENT_COLOURS", "ALIGNMENT_LABELS", "plot_recognition"]

#: Legend labels of the alignments: what a spatial transformer at layer k would be.
ALIGNMENT_LABELS: dict[str, str] = {
    "none": "none: body_k(T_g f)",
    "oracle": "oracle: T_g⁻¹ body_k(T_g f)",
    "affine": "affine: best affine warp of body_k(T_g f)",
    "dense": "dense: best smooth dense warp of body_k(T_g f)",
    "input": "input: body_k(T_g⁻¹ T_g f)",
}


#: Colour of each alignment (index into seaborn's colour-blind palette): no transformer in
#: grey, the fitted warps in green and blue, far from the oracle's orange.
ALIGNMENT_COLOURS: dict[str, int] = {"none": 7, "oracle": 1, "affine": 2, "dense": 0, "input": 4}


def plot_recognition(
    table: pd.DataFrame, png: str | Path, pdf: str | Path, *, confidence: float = 0.95
) -> Figure:
    """Draw the recognition figure of one classifier on one dataset.

    Args:
        table: :func:`featalign.summary.recognition.recognition_table` rows of one dataset and
            network.
        png: output PNG path.
        pdf: output PDF path.
        confidence: of the intervals (for the legend).

    Returns:
        The figure (closed).

    Raises:
        ValueError: if ``table`` is empty.
    """
    if table.empty:
        raise ValueError("no recognition rows to draw")
    y, what = "agreement", "agreement with the untransformed image's decision"
    rows = table[table["sample_set"] == table["alignment"].map(PRIMARY_SET)]
    layers = rows[["layer", "depth"]].drop_duplicates().sort_values("depth")["layer"].tolist()
    families = [f for f in dict.fromkeys(rows["family"]) if f]
    colours = sns.color_palette("colorblind", 10)
    palette = {a: colours[ALIGNMENT_COLOURS.get(a, 5)] for a in ALIGNMENTS}
    counts = {a: int(rows.loc[rows["alignment"] == a, "n"].max()) for a in ALIGNMENTS
              if (rows["alignment"] == a).any()}  # fmt: skip
    with style():
        fig, axes = plt.subplots(
            len(families), len(layers), figsize=(1.0 + 2.6 * len(layers), 0.6 + 1.9 * len(families)),
            squeeze=False, sharey=True, layout="constrained",
        )  # fmt: skip
        for i, family in enumerate(families):
            for j, layer in enumerate(layers):
                ax = axes[i, j]
                here = rows[(rows["family"] == family) & (rows["layer"] == layer)]
                for k, a in enumerate(ALIGNMENTS):
                    line = here[here["alignment"] == a].sort_values("magnitude")
                    if line.empty:
                        continue
                    band(ax, line["magnitude"], line[f"{y}_low"], line[f"{y}_high"],
                         color=palette[a], alpha=0.15)  # fmt: skip
                    ax.plot(line["magnitude"], line[y], color=palette[a], marker=marker(k),
                            markersize=3.5, linewidth=1.1,
                            label=f"{ALIGNMENT_LABELS[a]} (n = {counts[a]} per point)")  # fmt: skip
                ax.axhline(1.0, color="0.6", linewidth=0.6, linestyle=":")
                ax.set_ylim(-0.03, 1.03)
                if i == 0:
                    stride = int(here["stride"].iloc[0]) if not here.empty else 0
                    ax.set_title(f"{layer} (stride {stride})")
                if j == 0:
                    ax.set_ylabel(f"{family.replace('_', ' ')}\n{y}")
                if i == len(families) - 1:
                    ax.set_xlabel("magnitude")
        handles, labels = axes[0, 0].get_legend_handles_labels()
        net, ds = rows["network"].iloc[0], rows["dataset"].iloc[0]
        fig.suptitle(f"{net} on {ds}: {what} after aligning layer k "
                     f"(bands: {100 * confidence:g} % Wilson intervals)")  # fmt: skip
        fig.legend(handles, labels, loc="outside lower center", ncols=2, frameon=False)
    return save(fig, png, pdf)
