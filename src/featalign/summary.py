"""Tables and verdicts: from alignment files to ``errors.csv`` and ``claims.csv``.

**The quantity judged** is the *excess* of a (sample, transform) problem: the
best spatial error, ``min(affine, dense)``, minus the ``input`` floor (the error
left by interpolation and cropping when the *input* is realigned). Per dataset
× network × layer × claim family, the mean excess gets a percentile-bootstrap
confidence interval over problems, and the verdict is

* ``aligned`` when the interval lies below the margin τ,
* ``not aligned`` when it lies above τ,
* ``inconclusive`` when it straddles τ.

τ lives in the config (``claims.margin``), is fixed before results are seen,
and is justified by the exact controls (README, "Verdicts").

**Claim families** refine the seven transformation families where the theory
distinguishes cases: ``translation`` holds the shifts by multiples of the
layer's stride (always predicted to align: CNNs are translation covariant),
``translation_substride`` the others (aliasing, not the theorem: no
prediction); ``rotation90`` and ``flip`` hold the exact symmetries of the pixel
grid (multiples of 90°; reflections about the axes and diagonals), split from
``rotation`` and ``reflection``. A network's declared ``invariant_to`` gives the
prediction: a family is predicted to align if it, or a family containing it,
is declared (``rotation`` contains ``rotation90``, ``reflection`` contains
``flip``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from featalign.io import open_dataset

__all__ = [
    "CLAIM_FAMILIES",
    "CLAIMS_COLUMNS",
    "ERRORS_COLUMNS",
    "bootstrap_interval",
    "claim_family",
    "claims_table",
    "errors_table",
    "predicted",
    "verdict",
    "verdict_grid_markdown",
]

#: Claim families in display order (see the module docstring).
CLAIM_FAMILIES: tuple[str, ...] = (
    "translation",
    "translation_substride",
    "rotation90",
    "rotation",
    "flip",
    "reflection",
    "scaling",
    "anisotropic_scaling",
    "shear",
    "affine",
)

#: Which declared invariance implies which claim family aligns.
_IMPLIED_BY = {
    "translation": ("translation",),
    "rotation90": ("rotation90", "rotation"),
    "rotation": ("rotation",),
    "flip": ("flip", "reflection"),
    "reflection": ("reflection",),
    "scaling": ("scaling",),
    "anisotropic_scaling": ("anisotropic_scaling",),
    "shear": ("shear",),
    "affine": ("affine",),
}

ERRORS_COLUMNS = (
    "dataset", "network", "layer", "depth", "stride", "channels", "sample", "transform",
    "family", "claim_family", "magnitude", "measure", "error",
)
CLAIMS_COLUMNS = (
    "dataset", "network", "layer", "depth", "stride", "family", "problems", "prediction",
    "verdict", "excess_mean", "ci_low", "ci_high", "margin", "agreement",
)


def _is_multiple(x: float, step: float, tol: float = 1e-9) -> bool:
    return abs(x / step - round(x / step)) < tol


def claim_family(family: str, magnitude: float, stride: int) -> str:
    """The claim family of one transform at a layer of the given stride.

    Example:
        >>> claim_family("translation", 4, 2), claim_family("translation", 1, 2)
        ('translation', 'translation_substride')
        >>> claim_family("rotation", 270, 1), claim_family("reflection", 30, 1)
        ('rotation90', 'reflection')
    """
    if family == "translation":
        return "translation" if _is_multiple(magnitude, stride) else "translation_substride"
    if family == "rotation" and _is_multiple(magnitude, 90.0):
        return "rotation90"
    if family == "reflection" and _is_multiple(magnitude, 45.0):
        return "flip"
    return family


def predicted(claim: str, invariant_to: Iterable[str]) -> str:
    """The theory's prediction for a claim family: ``aligned``, ``not aligned`` or ``none``.

    Translations by stride multiples are always predicted to align (translation
    covariance); sub-stride shifts carry no prediction.
    """
    declared = set(invariant_to)
    if claim == "translation":
        return "aligned"
    if claim == "translation_substride":
        return "none"
    return "aligned" if declared.intersection(_IMPLIED_BY[claim]) else "not aligned"


def bootstrap_interval(
    values: Sequence[float] | np.ndarray,
    *,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Mean and percentile-bootstrap confidence interval of the mean.

    Returns:
        (mean, low, high); for a single value the interval is that value.

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


def errors_table(paths: Iterable[str | Path]) -> pd.DataFrame:
    """The tidy table of every measurement in the given alignment files.

    One row per dataset × network × layer × sample × transform × measure.
    """
    frames = []
    for path in paths:
        ds = open_dataset(
            path, kind="alignment", rebuild=f"snakemake {path}", variables=("error",),
            attrs=("dataset", "network", "layer", "stride", "depth", "channels"),
        )
        a = ds.attrs
        err = ds["error"]
        df = err.to_dataframe(name="error").reset_index()
        fam = dict(zip(ds.transform.values.tolist(), ds.family.values.tolist()))
        mag = dict(zip(ds.transform.values.tolist(), ds.magnitude.values.tolist()))
        stride = int(a["stride"])
        df["family"] = df["transform"].map(fam)
        df["magnitude"] = df["transform"].map(mag)
        df["claim_family"] = [
            claim_family(f, m, stride) for f, m in zip(df["family"], df["magnitude"])
        ]
        df["dataset"] = a["dataset"]
        df["network"] = a["network"]
        df["layer"] = a["layer"]
        df["depth"] = int(a["depth"])
        df["stride"] = stride
        df["channels"] = int(a["channels"])
        frames.append(df[list(ERRORS_COLUMNS)])
    if not frames:
        return pd.DataFrame(columns=list(ERRORS_COLUMNS))
    return pd.concat(frames, ignore_index=True)


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
        errors: the tidy table of :func:`errors_table`.
        invariances: network -> its declared ``invariant_to``.
        margin: τ, the excess below which features count as aligned.
        confidence: of the bootstrap interval.
        resamples: bootstrap resamples.
        seed: bootstrap seed.

    Returns:
        The claims table (columns :data:`CLAIMS_COLUMNS`); ``agreement`` is
        ``yes``/``no``, or ``n/a`` where the theory makes no prediction.
    """
    wide = errors.pivot_table(
        index=["dataset", "network", "layer", "depth", "stride", "claim_family", "sample",
               "transform"],
        columns="measure",
        values="error",
    ).reset_index()
    best = wide[["affine", "dense"]].min(axis=1, skipna=True)
    wide["excess"] = best - wide["input"]
    rows = []
    order = {f: i for i, f in enumerate(CLAIM_FAMILIES)}
    keys = ["dataset", "network", "layer", "depth", "stride", "claim_family"]
    for key, grp in wide.groupby(keys, sort=False):
        dataset, network, layer, depth, stride, fam = key
        mean, low, high = bootstrap_interval(
            grp["excess"].to_numpy(), confidence=confidence, resamples=resamples, seed=seed
        )
        pred = predicted(fam, invariances.get(network, ()))
        v = verdict(low, high, margin)
        agree = "n/a" if pred == "none" else ("yes" if v == pred else "no")
        rows.append(
            dict(dataset=dataset, network=network, layer=layer, depth=depth, stride=stride,
                 family=fam, problems=len(grp), prediction=pred, verdict=v, excess_mean=mean,
                 ci_low=low, ci_high=high, margin=margin, agreement=agree)
        )
    out = pd.DataFrame(rows, columns=list(CLAIMS_COLUMNS))
    out["_f"] = out["family"].map(order)
    out = out.sort_values(["dataset", "network", "depth", "_f"]).drop(columns="_f")
    return out.reset_index(drop=True)


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
