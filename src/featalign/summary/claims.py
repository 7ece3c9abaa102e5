"""Verdicts: one per dataset × network × layer × evaluation × claim family, beside the prediction.

The rule is README "Verdicts", written before any run used it; this module is its
one implementation. For one claim and one magnitude m of its sweep, over the
problems (sample, transform) at that magnitude (:func:`magnitude_levels`):

* the mean excess Ē_m (:func:`featalign.summary.excess.problem_excess`) and its
  percentile-bootstrap interval [lo_m, hi_m]
  (:func:`featalign.summary.excess.bootstrap_interval`);
* the floor F_m, the mean ``input`` error of the same problems;
* the resolution r_m = F_m + τ (τ: ``claims.margin``).

Magnitudes are ordered by their deformation
(:func:`featalign.summary.families.deformation`); magnitudes of equal
deformation are pooled into one level. The verdict (:func:`verdict`), in order:

1. ``unresolved`` if at some level hi_m < −τ (README's erratum: −r_m is unreachable,
   since each excess is ≥ −input);
2. ``aligned`` if at every level hi_m ≤ r_m;
3. ``not aligned`` if at the largest level lo_M > r_M and Ē_M ≥ Ē_1 (the smallest);
4. ``inconclusive`` otherwise.

A comparison with a NaN (a level without a finite excess) is false: such a level
never makes a claim ``unresolved``, and it stops ``aligned`` (not every level is
within the resolution) and, at the largest level, ``not aligned``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from featalign.names import EVALUATION_ORDER
from featalign.summary.excess import PROBLEM_KEYS, mean_interval, problem_excess
from featalign.summary.families import CLAIM_FAMILIES, deformation, predicted

__all__ = [
    "CLAIMS_COLUMNS",
    "CLAIM_KEYS",
    "EVALUATION_LABELS",
    "LEVEL_COLUMNS",
    "OUTCOMES",
    "claims_about",
    "claims_table",
    "magnitude_levels",
    "read_table",
    "verdict",
    "with_recognition",
]

#: The columns that name one claim (a group of problems): a problem's, less its sample
#: and transform.
CLAIM_KEYS: tuple[str, ...] = tuple(k for k in PROBLEM_KEYS if k not in ("sample", "transform"))

#: Verdicts and predictions in display order (``none``: no prediction).
OUTCOMES: tuple[str, ...] = ("aligned", "not aligned", "unresolved", "inconclusive", "none")

#: How tables and figures name the evaluations.
EVALUATION_LABELS: dict[str, str] = {"dense": "dense", "as_built": "as built"}

#: The columns of ``claims.csv``, one row per claim (:func:`claims_table`).
CLAIMS_COLUMNS: tuple[str, ...] = (
    "dataset",
    "network",
    "layer",
    "evaluation",
    "depth",
    "stride",
    "family",
    "problems",
    "magnitudes",
    "largest_magnitude",
    "prediction",
    "verdict",
    "effect",
    "effect_low",
    "effect_high",
    "floor",
    "resolution",
    "oracle_effect",
    "oracle_effect_low",
    "oracle_effect_high",
    "excess_mean",
    "ci_low",
    "ci_high",
    "margin",
    "agreement",
)

#: The columns of :func:`magnitude_levels`, one row per claim × level of its sweep.
LEVEL_COLUMNS: tuple[str, ...] = (
    *CLAIM_KEYS,
    "level",
    "size",
    "magnitude",
    "members",
    "mean",
    "low",
    "high",
    "n",
    "rows",
    "floor",
    "resolution",
    "oracle_mean",
    "oracle_low",
    "oracle_high",
)

#: Deformation sizes closer than this (relative to max(1, size)) are equal: pooled.
_SIZE_TOL = 1e-9


def read_table(path: str | Path) -> pd.DataFrame:
    r"""A table the summarize rule wrote (``errors.csv``, ``claims.csv``, ``separation.csv``).

    Only empty cells (how ``to_csv`` writes NaN) are missing: pandas' default reader
    would also read the agreement ``n/a`` (and names such as ``None`` or ``NA``) as NaN.

    Example:
        >>> import io
        >>> read_table(io.StringIO("agreement,effect\nn/a,\nyes,0.1\n")).values.tolist()
        [['n/a', nan], ['yes', 0.1]]
    """
    return pd.read_csv(path, keep_default_na=False, na_values=[""])


def verdict(
    mean: Sequence[float],
    low: Sequence[float],
    high: Sequence[float],
    resolution: Sequence[float],
    tau: float,
) -> str:
    """The verdict of one claim from its levels, ordered from the smallest deformation up.

    Args:
        mean: Ē_m, the mean excess at each level.
        low: lo_m, the low end of its interval.
        high: hi_m, the high end.
        resolution: r_m = F_m + τ.
        tau: τ, the optimiser's tolerance (``claims.margin``).

    Returns:
        ``unresolved``, ``aligned``, ``not aligned`` or ``inconclusive`` (the module's
        rule, in that order).

    Raises:
        ValueError: if the sequences differ in length or are empty.

    Example:
        >>> verdict([0.0, 0.0], [-1e-4, -1e-4], [1e-4, 2e-4], [0.002, 0.002], 0.001)
        'aligned'
        >>> verdict([0.01, 0.05], [0.005, 0.04], [0.02, 0.06], [0.002, 0.002], 0.001)
        'not aligned'
        >>> verdict([0.05, 0.01], [0.04, 0.005], [0.06, 0.02], [0.002, 0.002], 0.001)
        'inconclusive'
        >>> verdict([-0.03], [-0.06], [-0.01], [0.032], 0.001)
        'unresolved'
    """
    e, lo, hi, r = (np.asarray(v, dtype=np.float64) for v in (mean, low, high, resolution))
    if not (e.shape == lo.shape == hi.shape == r.shape) or e.ndim != 1 or e.size == 0:
        raise ValueError(
            f"verdict needs equal, non-empty level sequences; got {e.shape}, {lo.shape}, "
            f"{hi.shape}, {r.shape}"
        )
    with np.errstate(invalid="ignore"):
        if bool(np.any(hi < -float(tau))):
            return "unresolved"
        if bool(np.all(hi <= r)):
            return "aligned"
        if bool(lo[-1] > r[-1]) and bool(e[-1] >= e[0]):
            return "not aligned"
    return "inconclusive"


def _size_levels(pairs: pd.DataFrame) -> dict[tuple[str, float], float]:
    """(family, magnitude) -> its deformation size, equal sizes mapped to one value."""
    out: dict[tuple[str, float], float] = {}
    for family, grp in pairs.groupby("family", sort=True):
        sizes = sorted((deformation(family, m), m) for m in grp["magnitude"].unique())
        level = math.nan
        for size, m in sizes:
            if not (abs(size - level) <= _SIZE_TOL * max(1.0, abs(size))):
                level = size
            out[(family, m)] = level
    return out


def magnitude_levels(
    excess: pd.DataFrame,
    *,
    margin: float,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """Per claim and level of its sweep: Ē_m with its interval, the floor and the resolution.

    Args:
        excess: :func:`featalign.summary.excess.problem_excess`'s rows (in its order).
        margin: τ (``claims.margin``).
        confidence: of the bootstrap interval.
        resamples: bootstrap resamples.
        seed: bootstrap seed (the same for every level).

    Returns:
        One row per claim × level (columns :data:`LEVEL_COLUMNS`), sorted by the claim
        keys and the level: ``level`` counts from 0 (the smallest deformation), ``size``
        is the deformation (:func:`~featalign.summary.families.deformation`),
        ``magnitude`` the level's magnitude of largest absolute value (the larger on a
        tie), ``members`` all its magnitudes (text); ``mean``, ``low``, ``high``, ``n``,
        ``rows`` as :func:`~featalign.summary.excess.mean_interval`; ``floor`` the mean
        ``input`` error, ``resolution`` = floor + margin; ``oracle_mean``, ``oracle_low``,
        ``oracle_high`` the same statistics of ``oracle_excess`` (the inverse warp's excess
        over the floor: the features' measured distance from invariance at that level).
    """
    if excess.empty:
        return pd.DataFrame(columns=list(LEVEL_COLUMNS))
    sizes = _size_levels(excess[["family", "magnitude"]].drop_duplicates())
    frame = excess.assign(
        size=[sizes[(f, m)] for f, m in zip(excess["family"], excess["magnitude"])]
    )
    keys = [*CLAIM_KEYS, "size"]
    stats = mean_interval(
        frame, keys, "excess", confidence=confidence, resamples=resamples, seed=seed
    )
    if "oracle_excess" not in frame.columns:  # rows of another measurement (recognition)
        frame = frame.assign(oracle_excess=np.nan)
    oracle = mean_interval(
        frame, keys, "oracle_excess", confidence=confidence, resamples=resamples, seed=seed
    )
    grouped = frame.groupby(keys, sort=True, dropna=False)
    floor = grouped["input"].mean().to_numpy()
    for col in ("mean", "low", "high"):
        stats[f"oracle_{col}"] = oracle[col].to_numpy()
    mags = [sorted(set(v.tolist())) for _, v in grouped["magnitude"]]
    stats["magnitude"] = [max(v, key=lambda m: (abs(m), m)) for v in mags]
    stats["members"] = [", ".join(f"{m:g}" for m in v) for v in mags]
    stats["floor"] = floor
    stats["resolution"] = floor + margin
    stats["level"] = stats.groupby(list(CLAIM_KEYS), sort=False, dropna=False).cumcount()
    return stats[list(LEVEL_COLUMNS)].reset_index(drop=True)


def claims_table(
    errors: pd.DataFrame,
    invariances: dict[str, Sequence[str]],
    *,
    margin: float,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """One verdict per dataset × network × layer × evaluation × claim family.

    Args:
        errors: the tidy table of :func:`featalign.summary.tables.errors_table`.
        invariances: network -> its declared ``invariant_to``.
        margin: τ, the optimiser's certified tolerance: resolution = floor + τ.
        confidence: of the bootstrap intervals.
        resamples: bootstrap resamples.
        seed: bootstrap seed.

    Returns:
        The claims table (columns :data:`CLAIMS_COLUMNS`), sorted by evaluation (dense
        first), dataset, network, depth and claim family. ``problems`` counts the
        claim's problems; ``excess_mean``, ``ci_low``, ``ci_high`` are over all of
        them; ``magnitudes`` counts the levels of the sweep (equal deformations
        pooled); ``largest_magnitude`` is the largest level's ``magnitude``
        (:func:`magnitude_levels`), ``effect``, ``effect_low``, ``effect_high`` its Ē_M
        and interval, ``floor`` and ``resolution`` its F_M and r_M, ``oracle_effect``
        (``_low``, ``_high``) the inverse warp's excess over F_M there, with its interval
        (the features' measured distance from invariance; it explains verdicts, it does
        not decide them); ``agreement`` is
        ``yes`` where the verdict is the prediction, ``n/a`` where the theory makes no
        prediction, and ``no`` otherwise: an ``unresolved`` or ``inconclusive``
        verdict never agrees.
    """
    excess = problem_excess(errors)
    overall = mean_interval(
        excess, CLAIM_KEYS, "excess", confidence=confidence, resamples=resamples, seed=seed
    )
    levels = magnitude_levels(
        excess, margin=margin, confidence=confidence, resamples=resamples, seed=seed
    )
    by_claim = dict(iter(levels.groupby(list(CLAIM_KEYS), sort=False, dropna=False)))
    rows = []
    for r in overall.itertuples(index=False):
        key = tuple(getattr(r, k) for k in CLAIM_KEYS)
        lev = by_claim[key]
        top = lev.iloc[-1]
        v = verdict(lev["mean"], lev["low"], lev["high"], lev["resolution"], margin)
        pred = predicted(r.claim_family, invariances.get(r.network, ()))
        agree = "n/a" if pred == "none" else ("yes" if v == pred else "no")
        rows.append(
            dict(
                dataset=r.dataset,
                network=r.network,
                layer=r.layer,
                evaluation=r.evaluation,
                depth=r.depth,
                stride=r.stride,
                family=r.claim_family,
                problems=r.rows,
                magnitudes=len(lev),
                largest_magnitude=top["magnitude"],
                prediction=pred,
                verdict=v,
                effect=top["mean"],
                effect_low=top["low"],
                effect_high=top["high"],
                floor=top["floor"],
                resolution=top["resolution"],
                oracle_effect=top["oracle_mean"],
                oracle_effect_low=top["oracle_low"],
                oracle_effect_high=top["oracle_high"],
                excess_mean=r.mean,
                ci_low=r.low,
                ci_high=r.high,
                margin=margin,
                agreement=agree,
            )
        )
    out = pd.DataFrame(rows, columns=list(CLAIMS_COLUMNS))
    fam_order = {f: i for i, f in enumerate(CLAIM_FAMILIES)}
    eval_order = {e: i for i, e in enumerate(EVALUATION_ORDER)}
    out["_f"] = out["family"].map(fam_order)
    out["_e"] = out["evaluation"].map(eval_order)
    out = out.sort_values(["_e", "dataset", "network", "depth", "_f"]).drop(columns=["_f", "_e"])
    return out.reset_index(drop=True)


def with_recognition(claims: pd.DataFrame, recognition: pd.DataFrame) -> pd.DataFrame:
    """``claims.csv``: the alignment claims, then the recognition claims
    (:func:`featalign.summary.recognition.recognition_claims`), told apart by the column ``about``
    (``alignment`` or ``recognition``); ``alignment`` names a recognition claim's
    alignment (``oracle``, ``affine``, ``input``) and is empty for an alignment claim.

    Example:
        >>> a = pd.DataFrame({"family": ["shear"]})
        >>> r = pd.DataFrame({"family": ["shear"], "about": ["recognition"], "alignment": ["oracle"]})
        >>> with_recognition(a, r)[["about", "alignment"]].values.tolist()
        [['alignment', nan], ['recognition', 'oracle']]
    """
    first = claims.assign(about="alignment", alignment=np.nan)
    if recognition.empty:
        return first.reset_index(drop=True)
    return pd.concat([first, recognition], ignore_index=True)


def claims_about(claims: pd.DataFrame, about: str = "alignment") -> pd.DataFrame:
    """The claims of one kind (``alignment`` or ``recognition``); a table without the column
    ``about`` (written before recognition claims existed) holds alignment claims only."""
    if "about" not in claims.columns:
        return claims if about == "alignment" else claims.iloc[0:0]
    return claims[claims["about"] == about].reset_index(drop=True)
