"""A threshold-free view of the claims: how well the measured effect separates the predictions.

Per claim family × evaluation, the **separation** is the AUC of the statistic
Ē_M − r_M (``effect − resolution`` in ``claims.csv``: the excess at the largest
magnitude over the resolution there) between the claims the theory predicts
``not aligned`` and those it predicts ``aligned``: the Mann–Whitney probability
that a claim predicted not aligned has the larger statistic, ties counting one
half. 1 separates perfectly, 0.5 not at all, 0 in reverse. It needs no margin:
r_M = F_M + τ, and τ shifts every claim's statistic by the same amount, which
leaves the AUC unchanged (it depends only on the order of the statistics); the
floor F_M does differ between claims, and it is the null each claim's excess is
measured against (README "Verdicts").
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from featalign.names import EVALUATION_ORDER
from featalign.summary.families import CLAIM_FAMILIES
from featalign.summary.tables import check_columns, ordered

__all__ = ["SEPARATION_COLUMNS", "auc", "separation_statistic", "separation_table"]

#: The columns of ``separation.csv`` (:func:`separation_table`).
SEPARATION_COLUMNS: tuple[str, ...] = ("family", "evaluation", "aligned", "not_aligned", "auc")


def auc(positive: Sequence[float] | np.ndarray, negative: Sequence[float] | np.ndarray) -> float:
    """P(a positive value > a negative value) + ½ P(tie), over all pairs (Mann–Whitney).

    Non-finite values are left out; NaN where either population is then empty.

    Example:
        >>> auc([2.0, 3.0], [0.0, 1.0]), auc([0.0], [1.0]), auc([1.0, 1.0], [1.0])
        (1.0, 0.0, 0.5)
        >>> auc([1.0], [])
        nan
    """
    p = np.asarray(positive, dtype=np.float64)
    n = np.asarray(negative, dtype=np.float64)
    p, n = p[np.isfinite(p)], n[np.isfinite(n)]
    if p.size == 0 or n.size == 0:
        return math.nan
    diff = p[:, None] - n[None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


def separation_statistic(claims: pd.DataFrame) -> pd.Series:
    """Ē_M − r_M of each claim: ``effect − resolution``."""
    return claims["effect"] - claims["resolution"]


def separation_table(claims: pd.DataFrame) -> pd.DataFrame:
    """The AUC of :func:`separation_statistic` per claim family × evaluation.

    Args:
        claims: the claims table (:data:`featalign.summary.claims.CLAIMS_COLUMNS`).

    Returns:
        One row per claim family × evaluation present (columns
        :data:`SEPARATION_COLUMNS`), evaluations dense first, families in
        :data:`~featalign.summary.families.CLAIM_FAMILIES` order: ``aligned`` and
        ``not_aligned`` count the claims with a finite statistic predicted so,
        ``auc`` is :func:`auc` (not aligned as the positives), NaN where a
        population is empty (a family the theory predicts one way only, or
        without predictions).

    Raises:
        ValueError: if the table lacks a column.
    """
    check_columns(claims, ["family", "evaluation", "prediction", "effect", "resolution"], "claims")
    stat = separation_statistic(claims)
    finite = np.isfinite(stat.to_numpy(dtype=np.float64))
    rows = []
    for ev in ordered(claims["evaluation"].unique().tolist(), EVALUATION_ORDER):
        for fam in ordered(claims["family"].unique().tolist(), CLAIM_FAMILIES):
            here = (claims["evaluation"] == ev) & (claims["family"] == fam)
            if not here.any():
                continue
            pos = stat[here & (claims["prediction"] == "not aligned")]
            neg = stat[here & (claims["prediction"] == "aligned")]
            rows.append(
                dict(
                    family=fam,
                    evaluation=ev,
                    aligned=int((finite & here & (claims["prediction"] == "aligned")).sum()),
                    not_aligned=int(
                        (finite & here & (claims["prediction"] == "not aligned")).sum()
                    ),
                    auc=auc(pos, neg),
                )
            )
    return pd.DataFrame(rows, columns=list(SEPARATION_COLUMNS))
