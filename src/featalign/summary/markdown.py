"""The claims table as Markdown, for ``claims_summary.md``, the README and the note."""

from __future__ import annotations

import pandas as pd

from featalign.summary.claims import OUTCOMES
from featalign.summary.families import CLAIM_FAMILIES
from featalign.summary.tables import check_columns, ordered

__all__ = ["claims_summary_markdown", "verdict_grid_markdown"]

_SYMBOL = {"aligned": "A", "not aligned": "N", "inconclusive": "?"}


def verdict_grid_markdown(claims: pd.DataFrame, dataset: str) -> str:
    """The verdict grid of one dataset as a Markdown table (for the README and the note).

    Cells: ``A`` aligned, ``N`` not aligned, ``?`` inconclusive; a cell that
    disagrees with the network's declared prediction is bold; ``·`` no such case.

    Example:
        >>> c = pd.DataFrame([dict(dataset="d", network="n", layer="l", depth=0,
        ...     family="shear", verdict="aligned", agreement="no")])
        >>> print(verdict_grid_markdown(c, "d"))
        | network / layer | shear |
        |---|:-:|
        | n / l | **A** |
    """
    sub = claims[claims["dataset"] == dataset]
    fams = [f for f in CLAIM_FAMILIES if f in set(sub["family"])]
    lines = [
        "| network / layer | " + " | ".join(fams) + " |",
        "|---|" + ":-:|" * len(fams),
    ]
    rows = sub.sort_values(["network", "depth"])[["network", "layer"]].drop_duplicates()
    for network, layer in rows.itertuples(index=False):
        cells = []
        for fam in fams:
            hit = sub[(sub.network == network) & (sub.layer == layer) & (sub.family == fam)]
            if hit.empty:
                cells.append("·")
                continue
            r = hit.iloc[0]
            sym = _SYMBOL.get(r["verdict"], "?")
            cells.append(f"**{sym}**" if r["agreement"] == "no" else sym)
        lines.append(f"| {network} / {layer} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def claims_summary_markdown(claims: pd.DataFrame) -> str:
    """A short Markdown summary of the claims table, for the README and the report.

    Args:
        claims: the claims table (:data:`featalign.summary.tables.CLAIMS_COLUMNS`).

    Returns:
        Markdown: counts of agreement (yes / no / n/a), the verdict × prediction
        cross-tab, and one line per disagreement.

    Example:
        >>> c = pd.DataFrame([dict(dataset="d", network="n", layer="l", depth=0,
        ...     family="shear", prediction="not aligned", verdict="aligned",
        ...     excess_mean=0.001, ci_low=0.0, ci_high=0.002, margin=0.005, agreement="no")])
        >>> print(claims_summary_markdown(c).splitlines()[-1])
        - n l shear (d): aligned (predicted not aligned), excess mean 0.001 [0, 0.002]
    """
    check_columns(
        claims,
        [
            "dataset",
            "network",
            "layer",
            "family",
            "prediction",
            "verdict",
            "excess_mean",
            "ci_low",
            "ci_high",
            "agreement",
        ],
        "claims",
    )
    counts = claims["agreement"].value_counts()
    yes, no, na = (int(counts.get(k, 0)) for k in ("yes", "no", "n/a"))
    margins = sorted(set(claims["margin"].dropna())) if "margin" in claims else []
    margin = f", margin τ = {', '.join(f'{m:g}' for m in margins)}" if margins else ""
    lines = [
        (
            f"**{len(claims)} claims** ({claims['network'].nunique()} networks, "
            f"{claims['dataset'].nunique()} datasets{margin}): "
            f"agreement with the theory **yes {yes}**, **no {no}**, n/a {na} "
            "(no prediction)."
        ),
        "",
    ]
    verdict_order = ordered(claims["verdict"].unique().tolist(), OUTCOMES)
    pred_order = ordered(claims["prediction"].unique().tolist(), OUTCOMES)
    tab = pd.crosstab(claims["verdict"], claims["prediction"]).reindex(
        index=verdict_order, columns=pred_order, fill_value=0
    )
    lines.append("| verdict \\ prediction | " + " | ".join(pred_order) + " |")
    lines.append("|---|" + "---:|" * len(pred_order))
    for v in verdict_order:
        lines.append(f"| {v} | " + " | ".join(str(int(tab.loc[v, p])) for p in pred_order) + " |")
    lines.append("")
    bad = claims[claims["agreement"] == "no"]
    if bad.empty:
        lines.append("No disagreements.")
    else:
        lines.append(f"**Disagreements** ({len(bad)}):")
        lines.append("")
        for _, r in bad.iterrows():
            lines.append(
                f"- {r['network']} {r['layer']} {r['family']} ({r['dataset']}): {r['verdict']} "
                f"(predicted {r['prediction']}), excess mean {r['excess_mean']:.3g} "
                f"[{r['ci_low']:.3g}, {r['ci_high']:.3g}]"
            )
    return "\n".join(lines) + "\n"
