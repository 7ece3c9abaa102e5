"""The STN study's tables: one row per run, means with intervals over seeds, and claims.

**Intervals** are over seeds: the mean of n seeds ± Student's t quantile
(``confidence``, n − 1 degrees of freedom) × the standard error; NaN for one seed.

**Claims.** The theory (Jansson et al., arXiv:2004.14716; the STN papers of
Finnveden et al., arXiv:2001.05858, 2004.11678) predicts that a transformer that warps
the input — ``C0``, or ``SLk``, whose localisation reads the classifier's layer-k
features but warps the input — does at least as well as one that warps the layer-k
feature maps (``Ck``), in accuracy and in invariance, for rotations and scalings;
and that the gap grows with k. Each claim is a *contrast* of placements computed per
seed (seeds pair the runs: the same seed, split and test set) — ``C0 − Ck``,
``SLk − Ck``, and for the growth ``Ck − Ck'`` (= (C0 − Ck') − (C0 − Ck)) and
``(SLk' − Ck') − (SLk − Ck)`` for k < k' — and judged in the spirit of the
workflow's verdict rule (README, "Verdicts"): the contrast's interval over seeds
against a margin τ (``stn.margin``, fixed in the config before results are seen):

* ``greater`` if the interval lies above τ; ``less`` if it lies below −τ;
* ``equal`` if it lies within [−τ, τ]: no difference this experiment can resolve;
* ``inconclusive`` otherwise (it straddles ±τ).

A claim "≥" agrees on ``greater`` and ``equal`` and disagrees on ``less``; a claim
"grows" agrees on ``greater`` only and disagrees on ``less`` and ``equal``;
``inconclusive`` leaves either unresolved.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from featalign.io import open_dataset
from featalign.stn.config import parse_variant

__all__ = [
    "CLAIM_MEASURES",
    "claims_table",
    "contrasts",
    "runs_table",
    "summary_markdown",
    "summary_table",
    "t_interval",
    "verdict",
]

#: Measures the claims are about.
CLAIM_MEASURES = ("test_accuracy", "invariance")

#: Measures the summary table reports, besides the claims' ones.
TABLE_MEASURES = (*CLAIM_MEASURES, "view_accuracy", "slope", "scatter", "correlation")

REBUILD = "snakemake --configfile config/stn.yaml"


def runs_table(paths: Iterable[str | Path]) -> pd.DataFrame:
    """One row per result file of ``stn_train``: its dataset, family, variant, layer,
    seed, epochs, compute seconds and scalar measures.

    Raises:
        featalign.io.FileError: a file that is missing, damaged or not a result file.
    """
    rows = []
    for path in paths:
        ds = open_dataset(path, kind="stn result", rebuild=REBUILD,
                          variables=TABLE_MEASURES, attrs=("variant", "stn_dataset"))  # fmt: skip
        rows.append({
            "dataset": ds.attrs["stn_dataset"],
            "family": ds.attrs["family"],
            "variant": ds.attrs["variant"],
            "layer": int(ds.attrs["layer"]),
            "seed": int(ds.attrs["seed"]),
            "epochs": int(ds.sizes["epoch"]),
            "compute_seconds": float(ds.attrs.get("compute_seconds", float("nan"))),
            **{m: float(ds[m]) for m in TABLE_MEASURES},
        })  # fmt: skip
    return pd.DataFrame(rows)


def t_interval(values: Sequence[float], confidence: float) -> tuple[float, float, float]:
    """Mean and Student-t interval of the mean of ``values`` (NaN bounds for one value).

    Example:
        >>> [round(v, 4) for v in t_interval([1.0, 2.0, 3.0], 0.95)]
        [2.0, -0.4841, 4.4841]
    """
    from scipy import stats

    x = np.asarray(values, float)
    mean = float(x.mean())
    if len(x) < 2:
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf((1 + confidence) / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return mean, mean - half, mean + half


def summary_table(runs: pd.DataFrame, confidence: float) -> pd.DataFrame:
    """Per dataset × variant × measure: seeds, mean, low, high (interval over seeds).

    Variants keep the order of their first appearance in ``runs``.
    """
    rows = []
    for (dataset, variant), group in runs.groupby(["dataset", "variant"], sort=False):
        for measure in TABLE_MEASURES:
            mean, low, high = t_interval(group[measure].to_numpy(), confidence)
            rows.append({"dataset": dataset, "family": group["family"].iloc[0],
                         "variant": variant, "measure": measure, "seeds": len(group),
                         "mean": mean, "low": low, "high": high})  # fmt: skip
    return pd.DataFrame(rows)


def contrasts(variants: Iterable[str]) -> list[tuple[str, str, dict[str, int]]]:
    """The claims' contrasts among ``variants``: (claim, prediction, {variant: coefficient}).

    Example:
        >>> [c[0] for c in contrasts(["none", "C0", "C1", "C2", "SL1"])]
        ['C0 ≥ C1', 'C0 ≥ C2', 'SL1 ≥ C1', 'C0 − C2 > C0 − C1']
    """
    present = set(variants)
    ks = sorted({k for v in present for kind, k in [parse_variant(v)] if k > 0})
    out: list[tuple[str, str, dict[str, int]]] = []
    if "C0" in present:
        out += [(f"C0 ≥ C{k}", "≥", {"C0": 1, f"C{k}": -1}) for k in ks if f"C{k}" in present]
    out += [(f"SL{k} ≥ C{k}", "≥", {f"SL{k}": 1, f"C{k}": -1})
            for k in ks if {f"SL{k}", f"C{k}"} <= present]  # fmt: skip
    for a, b in zip(ks, ks[1:]):
        if {f"C{a}", f"C{b}"} <= present and "C0" in present:
            out.append((f"C0 − C{b} > C0 − C{a}", "grows", {f"C{a}": 1, f"C{b}": -1}))
        if {f"C{a}", f"C{b}", f"SL{a}", f"SL{b}"} <= present:
            out.append((f"SL{b} − C{b} > SL{a} − C{a}", "grows",
                        {f"SL{b}": 1, f"C{b}": -1, f"SL{a}": -1, f"C{a}": 1}))  # fmt: skip
    return out


def verdict(low: float, high: float, margin: float) -> str:
    """``greater``, ``less``, ``equal`` or ``inconclusive`` for an interval and a margin.

    Example:
        >>> [verdict(*i, 0.01) for i in [(0.02, 0.05), (-0.05, -0.02), (-0.005, 0.008),
        ...                              (-0.02, 0.05), (float("nan"), float("nan"))]]
        ['greater', 'less', 'equal', 'inconclusive', 'inconclusive']
    """
    if low > margin:
        return "greater"
    if high < -margin:
        return "less"
    if -margin <= low and high <= margin:
        return "equal"
    return "inconclusive"


def _agreement(prediction: str, outcome: str) -> str:
    if outcome == "inconclusive":
        return "unresolved"
    agrees = outcome == "greater" or (prediction == "≥" and outcome == "equal")
    return "yes" if agrees else "no"


def claims_table(runs: pd.DataFrame, margin: float, confidence: float) -> pd.DataFrame:
    """One row per dataset × measure × claim: the contrast per seed, its mean and
    interval over seeds, the verdict and whether it agrees with the prediction."""
    rows = []
    for dataset, group in runs.groupby("dataset", sort=False):
        for measure in CLAIM_MEASURES:
            wide = group.pivot(index="seed", columns="variant", values=measure)
            for claim, prediction, coef in contrasts(wide.columns):
                per_seed = sum(c * wide[v] for v, c in coef.items()).dropna()
                mean, low, high = t_interval(per_seed.to_numpy(), confidence)
                outcome = verdict(low, high, margin)
                rows.append({
                    "dataset": dataset, "family": group["family"].iloc[0], "measure": measure,
                    "claim": claim, "prediction": prediction,
                    "contrast": " ".join(f"{'+' if c > 0 else '−'} {v}" for v, c in coef.items()),
                    "seeds": len(per_seed), "mean": mean, "low": low, "high": high,
                    "margin": margin, "verdict": outcome,
                    "agreement": _agreement(prediction, outcome),
                })  # fmt: skip
    return pd.DataFrame(rows)


def summary_markdown(table: pd.DataFrame, claims: pd.DataFrame, confidence: float) -> str:
    """The study in Markdown: accuracy, invariance and the warp's slope per dataset ×
    variant (mean ± half-width of the interval over seeds), then the claims."""

    def cell(row: pd.Series) -> str:
        half = (row["high"] - row["low"]) / 2
        return f"{row['mean']:.3f}" + ("" if math.isnan(half) else f" ± {half:.3f}")

    lines = [f"## STN study: mean ± {100 * confidence:g} % t-interval over seeds\n",
             "| dataset | variant | seeds | test accuracy | invariance | slope of the warp |",
             "|---|---|---:|---:|---:|---:|"]  # fmt: skip
    wide = table.set_index(["dataset", "variant", "measure"])
    for (dataset, variant), group in table.groupby(["dataset", "variant"], sort=False):
        cells = [cell(wide.loc[(dataset, variant, m)]) for m in ("test_accuracy", "invariance", "slope")]
        lines.append(f"| {dataset} | {variant} | {group['seeds'].iloc[0]} | " + " | ".join(cells) + " |")
    agree = claims["agreement"].value_counts() if len(claims) else pd.Series(dtype=int)
    lines += ["", f"## Claims: {agree.get('yes', 0)} agree, {agree.get('no', 0)} disagree, "
              f"{agree.get('unresolved', 0)} unresolved (margin {claims['margin'].iloc[0] if len(claims) else float('nan'):g})\n",
              "| dataset | measure | claim | mean [interval] | verdict | agrees |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for _, r in claims.iterrows():
        lines.append(f"| {r['dataset']} | {r['measure']} | {r['claim']} | {r['mean']:+.3f} "
                     f"[{r['low']:+.3f}, {r['high']:+.3f}] | {r['verdict']} | {r['agreement']} |")  # fmt: skip
    return "\n".join(lines) + "\n"
