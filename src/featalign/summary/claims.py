"""Verdicts: one per dataset × network × layer × claim family, beside the theory's prediction.

Per claim, the mean excess (:func:`featalign.summary.excess.problem_excess`) over the
claim's problems gets a percentile-bootstrap interval
(:func:`featalign.summary.excess.mean_interval`), and the verdict is

* ``aligned`` when the interval lies below the margin τ,
* ``not aligned`` when it lies above τ,
* ``inconclusive`` when it straddles τ.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from featalign.summary.excess import mean_interval, problem_excess
from featalign.summary.families import CLAIM_FAMILIES, predicted
from featalign.summary.tables import CLAIMS_COLUMNS

__all__ = ["CLAIM_KEYS", "OUTCOMES", "claims_table", "verdict"]

#: The columns that name one claim (a group of problems).
CLAIM_KEYS: tuple[str, ...] = ("dataset", "network", "layer", "depth", "stride", "claim_family")

#: Verdicts and predictions in display order (``none``: no prediction).
OUTCOMES: tuple[str, ...] = ("aligned", "not aligned", "inconclusive", "none")


def verdict(low: float, high: float, margin: float) -> str:
    """``aligned`` if the interval lies below the margin, ``not aligned`` above, else ``inconclusive``.

    Example:
        >>> verdict(0.0, 0.001, 0.005), verdict(0.01, 0.2, 0.005), verdict(0.001, 0.01, 0.005)
        ('aligned', 'not aligned', 'inconclusive')
    """
    if not (math.isfinite(low) and math.isfinite(high)):
        return "inconclusive"
    if high < margin:
        return "aligned"
    if low > margin:
        return "not aligned"
    return "inconclusive"


def claims_table(
    errors: pd.DataFrame,
    invariances: dict[str, Sequence[str]],
    *,
    margin: float,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """One verdict per dataset × network × layer × claim family.

    Args:
        errors: the tidy table of :func:`featalign.summary.tables.errors_table`.
        invariances: network -> its declared ``invariant_to``.
        margin: τ, the excess below which features count as aligned.
        confidence: of the bootstrap interval.
        resamples: bootstrap resamples.
        seed: bootstrap seed.

    Returns:
        The claims table (columns :data:`~featalign.summary.tables.CLAIMS_COLUMNS`),
        sorted by dataset, network, depth and claim family; ``problems`` counts the
        claim's problems; ``agreement`` is ``yes``/``no``, or ``n/a`` where the theory
        makes no prediction.
    """
    stats = mean_interval(
        problem_excess(errors),
        CLAIM_KEYS,
        "excess",
        confidence=confidence,
        resamples=resamples,
        seed=seed,
    )
    rows = []
    for r in stats.itertuples(index=False):
        pred = predicted(r.claim_family, invariances.get(r.network, ()))
        v = verdict(r.low, r.high, margin)
        agree = "n/a" if pred == "none" else ("yes" if v == pred else "no")
        rows.append(
            dict(
                dataset=r.dataset,
                network=r.network,
                layer=r.layer,
                depth=r.depth,
                stride=r.stride,
                family=r.claim_family,
                problems=r.rows,
                prediction=pred,
                verdict=v,
                excess_mean=r.mean,
                ci_low=r.low,
                ci_high=r.high,
                margin=margin,
                agreement=agree,
            )
        )
    out = pd.DataFrame(rows, columns=list(CLAIMS_COLUMNS))
    order = {f: i for i, f in enumerate(CLAIM_FAMILIES)}
    out["_f"] = out["family"].map(order)
    out = out.sort_values(["dataset", "network", "depth", "_f"]).drop(columns="_f")
    return out.reset_index(drop=True)
