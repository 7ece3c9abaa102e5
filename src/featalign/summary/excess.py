"""The judged quantity, the excess of each problem, and the interval of its mean.

The **excess** of a (sample, transform) problem at one layer and evaluation
(``dense`` or ``as_built``) is the best spatial error, ``min(affine, dense)``, minus
the ``input`` floor (the error left by interpolation and cropping when the *input* is
realigned). Its mean over a group of problems gets a percentile-bootstrap confidence interval (:func:`mean_interval`).
The claims table (:func:`featalign.summary.claims.claims_table`) and every figure
that shows an excess take both from here, so that they show the same numbers for
the same ``confidence``, ``resamples`` and ``seed`` (the config's ``claims`` and
``seed``).

**Order matters**: a percentile bootstrap with a fixed seed resamples positions, so
its interval depends on the order of the values. :func:`problem_excess` returns the
problems sorted by :data:`PROBLEM_KEYS`, and :func:`mean_interval` keeps that order
inside every group: a claim's values come in (sample, transform) order whichever
other columns a caller groups by.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from featalign.summary.tables import check_columns

__all__ = [
    "DEFAULT_EVALUATION",
    "PROBLEM_KEYS",
    "bootstrap_interval",
    "mean_interval",
    "problem_excess",
]

#: The columns that name one problem, in the order :func:`problem_excess` sorts by.
PROBLEM_KEYS: tuple[str, ...] = (
    "dataset",
    "network",
    "layer",
    "evaluation",
    "depth",
    "stride",
    "claim_family",
    "sample",
    "transform",
)

#: Columns that describe a problem's transform (functions of dataset and transform).
_DESCRIPTION = ("family", "magnitude")

#: The evaluation of a table that has no ``evaluation`` column: it holds strided maps as built.
DEFAULT_EVALUATION = "as_built"


def problem_excess(errors: pd.DataFrame) -> pd.DataFrame:
    """The excess of every problem: ``min(affine, dense) − input``, one row per problem.

    Beside it, ``oracle_excess`` = ``oracle − input``: what the inverse warp of the
    feature maps leaves above the floor, a direct measurement of how far the features
    are from invariant (covariant) under the problem's transform.

    Args:
        errors: the tidy errors table (:data:`featalign.summary.tables.ERRORS_COLUMNS`).
            A table without an ``evaluation`` column (from before dense evaluation)
            holds the maps as built: its problems get :data:`DEFAULT_EVALUATION`.

    Returns:
        One row per dataset × network × layer × evaluation × sample × transform, sorted by
        :data:`PROBLEM_KEYS`, with those columns, ``family``, ``magnitude``, one
        column per measure (``affine``, ``dense``, ``input`` and ``oracle`` always; NaN
        where missing), ``excess`` and ``oracle_excess``.

    Raises:
        ValueError: if the table lacks a column.

    Example:
        >>> rows = [dict(dataset="d", network="n", layer="l", depth=0, stride=1,
        ...              family="shear", claim_family="shear", magnitude=0.1, sample=0,
        ...              transform=0, measure=m, error=e)
        ...         for m, e in (("affine", 0.3), ("dense", 0.2), ("input", 0.05))]
        >>> round(float(problem_excess(pd.DataFrame(rows))["excess"].iloc[0]), 6)
        0.15
    """
    # the pivot sorts by its keys: the problem keys first (they name one problem), so the
    # rows come in problem order; family and magnitude, set by the transform, ride along
    keys = [*PROBLEM_KEYS, *_DESCRIPTION]
    if "evaluation" not in errors.columns:
        errors = errors.assign(evaluation=DEFAULT_EVALUATION)
    check_columns(errors, [*keys, "measure", "error"], "errors")
    wide = errors.pivot_table(index=keys, columns="measure", values="error").reset_index()
    wide.columns.name = None
    for m in ("affine", "dense", "input", "oracle"):
        if m not in wide.columns:
            wide[m] = np.nan
    wide["excess"] = wide[["affine", "dense"]].min(axis=1, skipna=True) - wide["input"]
    # the inverse warp's own excess: how far the features are from covariant under this
    # transform (0 where they are invariant in the theorem's sense)
    wide["oracle_excess"] = wide["oracle"] - wide["input"]
    return wide


def bootstrap_interval(
    values: Sequence[float] | np.ndarray,
    *,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Mean and percentile-bootstrap confidence interval of the mean.

    Non-finite values are left out. The interval depends on the order of the values
    (the resamples draw positions).

    Returns:
        (mean, low, high); for a single value the interval is that value, for none
        all three are NaN.

    Example:
        >>> bootstrap_interval([1.0, 1.0, 1.0])
        (1.0, 1.0, 1.0)
    """
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return (math.nan, math.nan, math.nan)
    mean = float(v.mean())
    if v.size == 1:
        return (mean, mean, mean)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, v.size, size=(resamples, v.size))
    means = v[idx].mean(axis=1)
    alpha = (1 - confidence) / 2
    return (mean, float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha)))


def mean_interval(
    frame: pd.DataFrame,
    by: Sequence[str],
    value: str,
    *,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """Mean and percentile-bootstrap interval of ``value`` per group (:func:`bootstrap_interval`).

    Each group's values keep the order of their rows in ``frame``, and every group
    is resampled with the same seed.

    Args:
        frame: the rows (for the excess, :func:`problem_excess`'s).
        by: the grouping columns.
        value: the column summarised.
        confidence: of the interval.
        resamples: bootstrap resamples.
        seed: bootstrap seed (the same for every group).

    Returns:
        One row per group, sorted by ``by``: the ``by`` columns, ``mean``, ``low``,
        ``high``, ``n`` (finite values, those the interval uses) and ``rows`` (all
        rows of the group).

    Example:
        >>> df = pd.DataFrame({"g": ["a", "a", "b"], "v": [1.0, 3.0, 5.0]})
        >>> mean_interval(df, ["g"], "v")[["g", "mean", "n"]].values.tolist()
        [['a', 2.0, 2], ['b', 5.0, 1]]
    """
    rows = []
    for key, grp in frame.groupby(list(by), sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        vals = grp[value].to_numpy(dtype=np.float64)
        mean, low, high = bootstrap_interval(
            vals, confidence=confidence, resamples=resamples, seed=seed
        )
        rows.append((*key, mean, low, high, int(np.isfinite(vals).sum()), len(grp)))
    return pd.DataFrame(rows, columns=[*by, "mean", "low", "high", "n", "rows"])
