"""The claims table as Markdown, for ``claims_summary.md``, the README and the note.

Every sentence about a claim is computed from its row of ``claims.csv``: the
counts, the cross-tab, the separation (:mod:`featalign.summary.separation`) and,
for every disagreement, its measured quantities and the branch of the verdict
rule (:mod:`featalign.summary.claims`) that decided it (:func:`disagreement_reason`).
"""

from __future__ import annotations

import math

import pandas as pd

from featalign.names import EVALUATION_ORDER
from featalign.summary.claims import EVALUATION_LABELS, OUTCOMES
from featalign.summary.families import CLAIM_FAMILIES
from featalign.summary.separation import separation_table
from featalign.summary.tables import check_columns, ordered

__all__ = [
    "claims_summary_markdown",
    "disagreement_reason",
    "invariance_clause",
    "verdict_grid_markdown",
]

_SYMBOL = {"aligned": "A", "not aligned": "N", "unresolved": "U", "inconclusive": "?"}

#: The columns :func:`claims_summary_markdown` reads.
_NEEDED = (
    "dataset",
    "network",
    "layer",
    "evaluation",
    "family",
    "prediction",
    "verdict",
    "agreement",
    "effect",
    "effect_low",
    "effect_high",
    "floor",
    "resolution",
    "magnitudes",
    "largest_magnitude",
)


def _evaluation_label(evaluation: str) -> str:
    return EVALUATION_LABELS.get(evaluation, str(evaluation))


def verdict_grid_markdown(claims: pd.DataFrame, dataset: str, evaluation: str | None = None) -> str:
    """The verdict grid of one dataset (and evaluation) as a Markdown table.

    Cells: ``A`` aligned, ``N`` not aligned, ``U`` unresolved, ``?`` inconclusive;
    a cell that disagrees with the network's declared prediction is bold; ``·``
    no such case.

    Args:
        claims: the claims table.
        dataset: which dataset.
        evaluation: which evaluation (``dense``, ``as_built``); None: every row of
            the dataset (a table with one evaluation).

    Example:
        >>> c = pd.DataFrame([dict(dataset="d", network="n", layer="l", depth=0,
        ...     evaluation="dense", family="shear", verdict="unresolved", agreement="no")])
        >>> print(verdict_grid_markdown(c, "d", "dense"))
        | network / layer | shear |
        |---|:-:|
        | n / l | **U** |
    """
    sub = claims[claims["dataset"] == dataset]
    if evaluation is not None:
        sub = sub[sub["evaluation"] == evaluation]
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


def invariance_clause(row: pd.Series | dict) -> str:
    """What the inverse warp says about the features' invariance at the largest magnitude.

    ``oracle_effect`` (with its interval) is the excess of T_g⁻¹ Γ(T_g f) over the floor:
    measured on the claim's own problems, it tells whether the features themselves are
    invariant (covariant) there, apart from whether the optimiser finds a warp. Empty
    where the table has no such columns (from before they existed) or no finite value.

    Example:
        >>> invariance_clause(dict(oracle_effect=0.02, oracle_effect_low=0.015,
        ...     oracle_effect_high=0.03, resolution=0.002))
        'the features are not invariant there: the inverse warp itself leaves 0.02 [0.015, 0.03] above the floor (> resolution 0.002)'
        >>> invariance_clause(dict(oracle_effect=0.0001, oracle_effect_low=-0.0002,
        ...     oracle_effect_high=0.0004, resolution=0.002))
        'the features are invariant there within the floor: the inverse warp leaves 0.0001 [-0.0002, 0.0004] (≤ resolution 0.002)'
    """
    try:
        o, lo, hi, r = (
            float(row[k]) for k in ("oracle_effect", "oracle_effect_low", "oracle_effect_high",
                                    "resolution")
        )
    except (KeyError, TypeError, ValueError):
        return ""
    if not all(math.isfinite(x) for x in (o, lo, hi, r)):
        return ""
    shown = f"{o:.3g} [{lo:.3g}, {hi:.3g}]"
    if lo > r:
        return (
            f"the features are not invariant there: the inverse warp itself leaves {shown} "
            f"above the floor (> resolution {r:.3g})"
        )
    if hi <= r:
        return (
            f"the features are invariant there within the floor: the inverse warp leaves "
            f"{shown} (≤ resolution {r:.3g})"
        )
    return f"the inverse warp leaves {shown} above the floor, straddling resolution {r:.3g}"


def disagreement_reason(row: pd.Series | dict) -> str:
    """Why a claim's verdict is what it is, from its measured quantities (one line).

    The branch of the verdict rule that decided, stated with the numbers of the
    largest magnitude (``effect``, ``effect_low``, ``effect_high``, ``resolution``);
    where the decisive level is a smaller magnitude, the line says so (claims.csv
    keeps only the largest level's numbers).

    Example:
        >>> disagreement_reason(dict(verdict="inconclusive", effect=0.002,
        ...     effect_low=0.0005, effect_high=0.004, resolution=0.0015))
        'effect within resolution at the largest magnitude (effect_low 0.0005 ≤ resolution 0.0015)'
        >>> disagreement_reason(dict(verdict="unresolved", effect=-0.03,
        ...     effect_low=-0.05, effect_high=-0.01, resolution=0.002, margin=0.001))
        'the best warp beats realigning the input at the largest magnitude (effect_high -0.01 < -tau -0.001): the input alignment is no floor here'
    """
    v = row["verdict"]
    e, lo, hi, r = (float(row[k]) for k in ("effect", "effect_low", "effect_high", "resolution"))
    if not all(math.isfinite(x) for x in (e, lo, hi, r)):
        return "no finite excess or floor at the largest magnitude"
    if v == "unresolved":  # rule 1: some level's interval lies below −τ (README erratum)
        tau = float(row.get("margin", math.nan))
        if math.isfinite(tau) and hi < -tau:
            return (
                f"the best warp beats realigning the input at the largest magnitude "
                f"(effect_high {hi:.3g} < -tau {-tau:.3g}): the input alignment is no floor here"
            )
        return (
            "the best warp beats realigning the input at a smaller magnitude (its interval "
            "below -tau): the input alignment is no floor there"
        )
    if v == "aligned":
        return (
            f"effect within resolution at every magnitude "
            f"(at the largest: effect_high {hi:.3g} ≤ resolution {r:.3g})"
        )
    if v == "not aligned":
        return (
            f"effect clearly above the resolution at the largest magnitude "
            f"(effect_low {lo:.3g} > resolution {r:.3g}) and not below the smallest's"
        )
    # inconclusive: neither every interval within the resolution nor a rising, clear effect
    if lo > r:
        return (
            f"excess does not rise with magnitude (effect_low {lo:.3g} > resolution {r:.3g}, "
            "but the mean at the smallest magnitude is larger)"
        )
    if hi > r:
        return (
            f"effect within resolution at the largest magnitude "
            f"(effect_low {lo:.3g} ≤ resolution {r:.3g})"
        )
    return (
        f"effect within resolution at the largest magnitude (effect_high {hi:.3g} ≤ "
        f"resolution {r:.3g}) but above it at a smaller one"
    )


def _counts_line(sub: pd.DataFrame) -> str:
    agree = sub["agreement"]
    yes = int((agree == "yes").sum())
    no = agree == "no"
    opposite = int((no & sub["verdict"].isin(["aligned", "not aligned"])).sum())
    inconclusive = int((no & (sub["verdict"] == "inconclusive")).sum())
    unresolved = int((no & (sub["verdict"] == "unresolved")).sum())
    na = int((agree == "n/a").sum())
    predicted = yes + int(no.sum())
    share = f" ({100 * yes / predicted:.1f} %)" if predicted else ""
    return (
        f"{len(sub)} claims, {predicted} with a prediction: **agree {yes}**{share}, "
        f"**disagree {opposite}** (the opposite verdict), **inconclusive {inconclusive}**, "
        f"**unresolved {unresolved}**; n/a {na} (no prediction)."
    )


def _crosstab(sub: pd.DataFrame) -> list[str]:
    verdict_order = ordered(sub["verdict"].unique().tolist(), OUTCOMES)
    pred_order = ordered(sub["prediction"].unique().tolist(), OUTCOMES)
    tab = pd.crosstab(sub["verdict"], sub["prediction"]).reindex(
        index=verdict_order, columns=pred_order, fill_value=0
    )
    lines = ["| verdict \\ prediction | " + " | ".join(pred_order) + " |"]
    lines.append("|---|" + "---:|" * len(pred_order))
    for v in verdict_order:
        lines.append(f"| {v} | " + " | ".join(str(int(tab.loc[v, p])) for p in pred_order) + " |")
    return lines


def _separation_lines(separation: pd.DataFrame) -> list[str]:
    evals = ordered(separation["evaluation"].unique().tolist(), EVALUATION_ORDER)
    fams = ordered(separation["family"].unique().tolist(), CLAIM_FAMILIES)
    lines = [
        "| claim family | " + " | ".join(_evaluation_label(e) for e in evals) + " |",
        "|---|" + "---:|" * len(evals),
    ]
    for fam in fams:
        cells = []
        for ev in evals:
            hit = separation[(separation["family"] == fam) & (separation["evaluation"] == ev)]
            if hit.empty:
                cells.append("·")
                continue
            s = hit.iloc[0]
            value = "n/a" if not math.isfinite(float(s["auc"])) else f"{float(s['auc']):.3f}"
            cells.append(f"{value} ({int(s['not_aligned'])} / {int(s['aligned'])})")
        lines.append(f"| {fam} | " + " | ".join(cells) + " |")
    return lines


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _disagreement_line(r: pd.Series) -> str:
    invariance = invariance_clause(r)
    return (
        f"- {r['network']} {r['layer']} {r['family']} ({r['dataset']}): **{r['verdict']}** "
        f"(predicted {r['prediction']}); effect {r['effect']:.3g} "
        f"[{r['effect_low']:.3g}, {r['effect_high']:.3g}] at magnitude "
        f"{r['largest_magnitude']:g} ({_plural(int(r['magnitudes']), 'magnitude')}), floor "
        f"{r['floor']:.3g}, resolution {r['resolution']:.3g}: {disagreement_reason(r)}"
        + (f"; {invariance}" if invariance else "")
    )


def claims_summary_markdown(claims: pd.DataFrame, separation: pd.DataFrame | None = None) -> str:
    """A Markdown summary of the claims table, per evaluation (dense first).

    Args:
        claims: the claims table (:data:`featalign.summary.claims.CLAIMS_COLUMNS`).
        separation: its separation table (:func:`featalign.summary.separation.separation_table`);
            computed from ``claims`` when None.

    Returns:
        Markdown: per evaluation, the agreement counts (agree; disagree, inconclusive
        and unresolved counted apart; n/a) and the verdict × prediction cross-tab;
        the separation per claim family × evaluation; every disagreement
        (``agreement == "no"``) with its effect and interval, floor, resolution,
        largest magnitude, verdict, prediction and :func:`disagreement_reason`.

    Raises:
        ValueError: if the table lacks a column.
    """
    check_columns(claims, list(_NEEDED), "claims")
    if separation is None:
        separation = separation_table(claims)
    margins = sorted(set(claims["margin"].dropna())) if "margin" in claims else []
    margin = f", τ = {', '.join(f'{m:g}' for m in margins)}" if margins else ""
    lines = [
        (
            f"**{len(claims)} claims** ({_plural(claims['network'].nunique(), 'network')}, "
            f"{_plural(claims['dataset'].nunique(), 'dataset')}{margin}); dense verdicts judge the "
            "theorem, as-built verdicts what a spatial transformer on the real network faces."
        ),
        "",
    ]
    evals = ordered(claims["evaluation"].unique().tolist(), EVALUATION_ORDER)
    for ev in evals:
        sub = claims[claims["evaluation"] == ev]
        lines += [f"#### {_evaluation_label(ev)}", "", _counts_line(sub), ""]
        lines += _crosstab(sub)
        lines.append("")
    lines += [
        "#### Separation",
        "",
        "AUC of effect − resolution between the claims predicted not aligned and those "
        "predicted aligned (1: perfect, 0.5: none; in brackets: not aligned / aligned "
        "claims; n/a: one population is empty).",
        "",
    ]
    lines += _separation_lines(separation)
    lines.append("")
    bad = claims[claims["agreement"] == "no"]
    if bad.empty:
        lines.append("No disagreements.")
    for ev in evals:
        here = bad[bad["evaluation"] == ev]
        if here.empty:
            continue
        lines += [f"**Disagreements, {_evaluation_label(ev)}** ({len(here)}):", ""]
        lines += [_disagreement_line(r) for _, r in here.iterrows()]
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"
