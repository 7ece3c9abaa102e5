"""The recognition files read back: one row per decision (:func:`problem_table`), rates
with intervals (:func:`recognition_table`, ``recognition.csv``), the theory's predictions
about decisions judged like the alignment claims (:func:`recognition_claims`) and their
section of ``claims_summary.md`` (:func:`recognition_markdown`). No torch: the summarize
and figure jobs read results only."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from featalign.names import FITTED, PRIMARY_SET, RECOGNITION_EVALUATION
from featalign.summary.claims import CLAIM_KEYS, CLAIMS_COLUMNS, magnitude_levels, verdict
from featalign.summary.excess import bootstrap_interval
from featalign.summary.families import claim_family, predicted

__all__ = [
    "RECOGNITION_COLUMNS",
    "problem_table",
    "recognition_claims",
    "recognition_markdown",
    "recognition_table",
    "wilson_interval",
]


def wilson_interval(successes: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion (NaN for n = 0).

    Example:
        >>> [round(v, 4) for v in wilson_interval(10, 10)]
        [0.7225, 1.0]
    """
    if n <= 0:
        return (math.nan, math.nan)
    from scipy.stats import norm

    z = float(norm.ppf(0.5 + confidence / 2))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def problem_table(path_or_ds: str | Path | xr.Dataset) -> pd.DataFrame:
    """One row per layer × alignment × sample × transform of a recognition file, where
    computed: ``agree`` (1 if the top-1 is the reference's), ``correct`` (1/0, NaN
    without label), ``divergence``, with the claim keys of the alignment claims."""
    ds = path_or_ds if isinstance(path_or_ds, xr.Dataset) else xr.open_dataset(path_or_ds)
    pred = ds.prediction.values
    ref = ds.reference.values[:, None, :, None]
    label = ds.label.values[None, None, :, None]
    li, ai, si, ti = np.nonzero(pred >= 0)
    stride = ds.layer_stride.values[li]
    fam = ds.family.values[ti]
    mag = ds.magnitude.values[ti]
    frame = pd.DataFrame({
        "dataset": ds.attrs["dataset"],
        "network": ds.attrs["network"],
        "layer": ds.layer.values[li],
        "depth": ds.layer_depth.values[li],
        "stride": stride,
        "alignment": ds.alignment.values[ai],
        "sample_set": ds.sample_set.values[si],
        "sample": si,
        "transform": ds.transform.values[ti],
        "family": fam,
        "magnitude": mag,
        "claim_family": [claim_family(str(f), float(m), int(s))
                         for f, m, s in zip(fam, mag, stride, strict=True)],
        "agree": (pred == ref)[li, ai, si, ti].astype(np.float64),
        "correct": np.where(label[0, 0, si, 0] >= 0,
                            (pred == label)[li, ai, si, ti], np.nan).astype(np.float64),
        "divergence": ds.divergence.values[li, ai, si, ti].astype(np.float64),
    })  # fmt: skip
    return frame


#: Columns of ``recognition.csv`` (:func:`recognition_table`).
RECOGNITION_COLUMNS: tuple[str, ...] = (
    "dataset", "network", "layer", "depth", "stride", "alignment", "sample_set", "family",
    "magnitude", "n", "agreement", "agreement_low", "agreement_high", "labelled", "accuracy",
    "accuracy_low", "accuracy_high", "divergence", "divergence_low", "divergence_high",
)  # fmt: skip


def recognition_table(
    problems: pd.DataFrame, *, confidence: float = 0.95, resamples: int = 2000, seed: int = 0
) -> pd.DataFrame:
    """Per dataset × network × layer × alignment × sample set × family × magnitude: the
    agreement and accuracy with Wilson intervals, the mean divergence with a bootstrap one.

    Args:
        problems: :func:`problem_table`'s rows (several files concatenated).
        confidence: of every interval.
        resamples: bootstrap resamples of the divergence.
        seed: bootstrap seed.

    Returns:
        The table, columns :data:`RECOGNITION_COLUMNS`.
    """
    keys = ["dataset", "network", "layer", "depth", "stride", "alignment", "sample_set",
            "family", "magnitude"]  # fmt: skip
    rows: list[tuple] = []
    if problems.empty:
        return pd.DataFrame(rows, columns=list(RECOGNITION_COLUMNS))
    for key, grp in problems.groupby(keys, sort=True):
        n = len(grp)
        agree = float(grp["agree"].sum())
        labelled = grp["correct"].dropna()
        correct = float(labelled.sum())
        div = bootstrap_interval(grp["divergence"].to_numpy(), confidence=confidence,
                                 resamples=resamples, seed=seed)  # fmt: skip
        rows.append((*key, n, agree / n, *wilson_interval(agree, n, confidence), len(labelled),
                     correct / len(labelled) if len(labelled) else math.nan,
                     *wilson_interval(correct, len(labelled), confidence), *div))  # fmt: skip
    return pd.DataFrame(rows, columns=list(RECOGNITION_COLUMNS))


# --------------------------------------------------------------------------- claims

#: How a recognition claim names the alignment claims' outcomes.
_RESTORED = {"aligned": "restored", "not aligned": "not restored"}


def recognition_claims(
    problems: pd.DataFrame,
    invariances: Mapping[str, Sequence[str]],
    *,
    margin: float,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """The theory's predictions about decisions, judged like the alignment claims.

    A claim is one dataset × network × layer × alignment (``oracle``, ``affine``,
    ``dense``, ``input``) × claim family, on that alignment's sample set (:data:`PRIMARY_SET`).
    Per problem the *excess* is whether the decision changed (1 − agree) after the
    feature-map alignment minus whether it changed after realigning the input (for
    ``input`` itself: whether it changed); the *floor* is the input's rate of changed
    decisions (0 for ``input``), the resolution floor + ``margin``. The verdict is
    :func:`featalign.summary.claims.verdict` on the magnitude levels, named
    ``restored`` / ``not restored``. Predictions: realigning the input restores every
    family; warping layer k's maps restores stride-multiple translations and the
    families the network declares invariance to, and nothing else; sub-stride
    translations have none.

    Args:
        problems: :func:`problem_table`'s rows.
        invariances: network -> declared ``invariant_to``.
        margin: the largest rate of changed decisions that counts as restored
            (``recognition.margin``).
        confidence: of the bootstrap intervals.
        resamples: bootstrap resamples.
        seed: bootstrap seed.

    Returns:
        Rows with :data:`featalign.summary.claims.CLAIMS_COLUMNS` (``evaluation`` is
        ``as_built``: the network as it runs) plus ``about`` = ``recognition`` and
        ``alignment``.
    """
    columns = [*CLAIMS_COLUMNS, "about", "alignment"]
    if problems.empty:
        return pd.DataFrame(columns=columns)
    keys = ["dataset", "network", "layer", "depth", "stride", "sample", "transform"]
    changed = problems.assign(changed=1.0 - problems["agree"])
    primary = changed[changed["sample_set"] == changed["alignment"].map(PRIMARY_SET)]
    inputs = changed[changed["alignment"] == "input"].set_index([*keys, "sample_set"])["changed"]
    rows = []
    for alignment in ("oracle", *FITTED, "input"):
        sub = primary[primary["alignment"] == alignment].copy()
        if sub.empty:
            continue
        floor = inputs.reindex(pd.MultiIndex.from_frame(sub[[*keys, "sample_set"]])).to_numpy()
        floor = np.zeros(len(sub)) if alignment == "input" else floor
        sub["input"] = floor
        sub["excess"] = sub["changed"] - floor
        sub["evaluation"] = alignment  # claims are per alignment: the claim key carries it
        sub = sub.sort_values([*CLAIM_KEYS, "sample", "transform"])
        levels = magnitude_levels(sub, margin=margin, confidence=confidence,
                                  resamples=resamples, seed=seed)  # fmt: skip
        for key, lev in levels.groupby(list(CLAIM_KEYS), sort=True):
            claim = dict(zip(CLAIM_KEYS, key, strict=True))
            grp = sub
            for k, v in claim.items():
                grp = grp[grp[k] == v]
            mean, low, high = bootstrap_interval(grp["excess"].to_numpy(), confidence=confidence,
                                                 resamples=resamples, seed=seed)  # fmt: skip
            top = lev.iloc[-1]
            v = verdict(lev["mean"], lev["low"], lev["high"], lev["resolution"], margin)
            pred = (
                "aligned"
                if alignment == "input"
                else predicted(claim["claim_family"], invariances.get(claim["network"], ()))
            )
            agreement = "n/a" if pred == "none" else ("yes" if v == pred else "no")
            rows.append({
                **{k: claim[k] for k in ("dataset", "network", "layer", "depth", "stride")},
                "evaluation": RECOGNITION_EVALUATION, "family": claim["claim_family"], "problems": len(grp),
                "magnitudes": len(lev), "largest_magnitude": top["magnitude"],
                "prediction": _RESTORED.get(pred, pred), "verdict": _RESTORED.get(v, v),
                "effect": top["mean"], "effect_low": top["low"], "effect_high": top["high"],
                "floor": top["floor"], "resolution": top["resolution"], "excess_mean": mean,
                "ci_low": low, "ci_high": high, "margin": margin, "agreement": agreement,
                "about": "recognition", "alignment": alignment,
            })  # fmt: skip
    return pd.DataFrame(rows, columns=columns)


def recognition_markdown(claims: pd.DataFrame) -> str:
    """The recognition section of ``claims_summary.md``: agreement counts and every claim.

    Example:
        >>> recognition_markdown(pd.DataFrame())
        ''
    """
    if claims.empty:
        return ""
    judged = claims[claims["agreement"] != "n/a"]
    agree = int((judged["agreement"] == "yes").sum())
    lines = [
        "\n## Recognition claims\n",
        f"{agree} of {len(judged)} recognition claims with a prediction agree "
        f"(margin {claims['margin'].iloc[0]:g}; excess = rate of changed decisions minus "
        "the input's; effect at the largest magnitude).\n",
        "| dataset | network | layer | alignment | family | prediction | verdict | effect "
        "[95 % interval] | input's rate | agree |",
        "|---|---|---|---|---|---|---|---|---:|---|",
    ]
    for r in claims.itertuples(index=False):
        lines.append(
            f"| {r.dataset} | {r.network} | {r.layer} | {r.alignment} | {r.family} | "
            f"{r.prediction} | {r.verdict} | {r.effect:.3f} [{r.effect_low:.3f}, "
            f"{r.effect_high:.3f}] | {r.floor:.3f} | {r.agreement} |"
        )
    return "\n".join(lines) + "\n"
