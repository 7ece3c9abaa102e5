"""The errors table read from alignment files, its columns, and helpers of both tables.

``errors.csv`` (:data:`ERRORS_COLUMNS`) holds every measurement, one row per
dataset × network × layer × evaluation × sample × transform × measure; ``evaluation``
is ``as_built`` (the layer's own strided maps) or ``dense`` (shift-and-stitch, stride
1; :mod:`featalign.align.files`), ``stride`` the stride of the *evaluated* maps (so
that a shift by one pixel is a ``translation`` at dense evaluation) and
``layer_stride`` the layer's as-built stride. ``claims.csv``
(:data:`featalign.summary.claims.CLAIMS_COLUMNS`) one verdict per dataset × network ×
layer × evaluation × claim family (:func:`featalign.summary.claims.claims_table`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from featalign.io import FileError, open_dataset
from featalign.summary.families import claim_family

__all__ = ["ERRORS_COLUMNS", "check_columns", "errors_table", "ordered"]

ERRORS_COLUMNS = (
    "dataset",
    "network",
    "layer",
    "evaluation",
    "depth",
    "stride",
    "layer_stride",
    "channels",
    "sample",
    "transform",
    "family",
    "claim_family",
    "magnitude",
    "measure",
    "error",
)


def check_columns(df: pd.DataFrame, needed: Sequence[str], what: str) -> None:
    """Raise a ``ValueError`` naming the missing columns if ``df`` lacks any of ``needed``.

    Example:
        >>> check_columns(pd.DataFrame({"a": [1]}), ["a", "b"], "toy")
        Traceback (most recent call last):
        ...
        ValueError: the toy table lacks columns ['b']; it has ['a']
    """
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise ValueError(f"the {what} table lacks columns {missing}; it has {list(df.columns)}")


def ordered(values: Sequence[str], order: Sequence[str]) -> list[str]:
    """The distinct ``values``, in ``order`` first, then the unknown ones sorted.

    Example:
        >>> ordered(["shear", "zoom", "translation", "shear"], ["translation", "shear"])
        ['translation', 'shear', 'zoom']
    """
    present = set(values)
    return [v for v in order if v in present] + sorted(present - set(order))


def errors_table(paths: Iterable[str | Path]) -> pd.DataFrame:
    """The tidy table of every measurement in the given alignment files.

    One row per dataset × network × layer × evaluation × sample × transform × measure;
    ``stride`` is the evaluated maps' stride (the file's ``evaluation_stride``), which
    classifies the claim family (:func:`featalign.summary.families.claim_family`), and
    ``layer_stride`` the layer's as-built stride.

    Raises:
        FileError: a file is not an alignment file of this version (no ``evaluation``
            dimension); the message names the command that rebuilds it.
    """
    frames = []
    for path in paths:
        rebuild = f"snakemake {path}"
        ds = open_dataset(
            path,
            kind="alignment",
            rebuild=rebuild,
            variables=("error", "evaluation_stride"),
            attrs=("dataset", "network", "layer", "stride", "depth", "channels"),
        )
        if ds["error"].dims[0] != "evaluation":
            raise FileError(
                f"alignment file {path} has error{ds['error'].dims} without the evaluation "
                f"dimension (written by an older featalign); delete it and rebuild with: {rebuild}"
            )
        a = ds.attrs
        df = ds["error"].to_dataframe(name="error").reset_index()
        fam = dict(zip(ds.transform.values.tolist(), ds.family.values.tolist()))
        mag = dict(zip(ds.transform.values.tolist(), ds.magnitude.values.tolist()))
        evaluated = dict(
            zip(ds.evaluation.values.tolist(), (int(v) for v in ds.evaluation_stride.values))
        )
        df["family"] = df["transform"].map(fam)
        df["magnitude"] = df["transform"].map(mag)
        df["stride"] = df["evaluation"].map(evaluated).astype(int)
        df["claim_family"] = [
            claim_family(f, m, s) for f, m, s in zip(df["family"], df["magnitude"], df["stride"])
        ]
        df["dataset"] = a["dataset"]
        df["network"] = a["network"]
        df["layer"] = a["layer"]
        df["depth"] = int(a["depth"])
        df["layer_stride"] = int(a["stride"])
        df["channels"] = int(a["channels"])
        frames.append(df[list(ERRORS_COLUMNS)])
    if not frames:
        return pd.DataFrame(columns=list(ERRORS_COLUMNS))
    return pd.concat(frames, ignore_index=True)
