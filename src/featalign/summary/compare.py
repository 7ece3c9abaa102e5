"""What moved between two runs of the workflow: ``featalign compare OLD NEW``.

The tables the summarize rule writes are compared row by row, rows matched on the
columns that name them:

* ``claims.csv`` on :data:`CLAIMS_KEYS`, the columns that name a claim in
  :func:`featalign.summary.claims.claims_table` (:data:`~featalign.summary.claims.CLAIM_KEYS`,
  whose ``claim_family`` the table calls ``family``) and, for the recognition claims
  appended by :func:`~featalign.summary.claims.with_recognition`, ``about`` and
  ``alignment``. Reported: the claims in each run, those in one run only, every changed
  ``verdict`` (the exit code: 1 when any changed) and the number of changed
  ``agreement`` and ``prediction`` values.
* ``errors.csv`` on :data:`ERRORS_KEYS` (a problem's keys,
  :data:`~featalign.summary.excess.PROBLEM_KEYS`, and the ``measure``). Per measure: how
  many errors rose or fell by more than ``tol`` (absolute), how many stayed within it
  ("identical"), how many became or stopped being NaN, and the largest rise and fall
  with the row they happened in.
* ``recognition.csv``, where both runs have it, on :data:`RECOGNITION_KEYS` (the
  grouping of :func:`featalign.summary.recognition.recognition_table`), its measure
  columns treated like the errors, per ``alignment``.

A run is given as its results folder (the one holding ``tables/``) or the repository
root (holding ``results/tables/``). :func:`compare_runs` does the work and returns a
:class:`Comparison`, whose :meth:`~Comparison.format` is the command's text and
:meth:`~Comparison.to_dict` its ``--json``; a missing folder or table, a table without
its key columns, or two tables with different columns raise :class:`CompareError`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from featalign.names import ALIGNMENTS, MEASURES
from featalign.summary.claims import CLAIM_KEYS, read_table
from featalign.summary.excess import PROBLEM_KEYS
from featalign.summary.recognition import RECOGNITION_COLUMNS
from featalign.summary.tables import ordered

__all__ = [
    "CLAIMS_KEYS",
    "DEFAULT_TOL",
    "ERRORS_KEYS",
    "RECOGNITION_KEYS",
    "RECOGNITION_MEASURES",
    "CompareError",
    "Comparison",
    "compare_runs",
    "tables_dir",
]

#: The columns that name one row of ``claims.csv``: a claim's keys as the table writes
#: them (``claim_family`` is its ``family``), then ``about`` and ``alignment``, which tell
#: the recognition claims apart (absent from tables written before them).
CLAIMS_KEYS: tuple[str, ...] = (
    *("family" if k == "claim_family" else k for k in CLAIM_KEYS),
    "about",
    "alignment",
)

#: The columns that name one row of ``errors.csv``: its problem, and the measure.
ERRORS_KEYS: tuple[str, ...] = (*PROBLEM_KEYS, "measure")

#: The columns that name one row of ``recognition.csv``: those before its counts (the
#: table's rows are its groups' keys followed by ``n`` and the rates).
RECOGNITION_KEYS: tuple[str, ...] = RECOGNITION_COLUMNS[: RECOGNITION_COLUMNS.index("n")]

#: The measured columns of ``recognition.csv``: the counts, rates and their intervals.
RECOGNITION_MEASURES: tuple[str, ...] = RECOGNITION_COLUMNS[len(RECOGNITION_KEYS) :]

#: Key columns a table may lack (tables written by an older featalign); both runs then
#: lack them, since their columns must agree.
_OPTIONAL_KEYS = frozenset({"about", "alignment", "evaluation"})

#: The default ``--tol``: changes of at most this much (absolute) count as identical.
DEFAULT_TOL = 1e-4

#: Rows in one run only, listed in the text per table (all are in the JSON).
_LIST_LIMIT = 20


class CompareError(Exception):
    """A run folder or table is missing or unusable; the message is one sentence."""


def tables_dir(path: str | Path, which: str = "run") -> Path:
    """The ``tables`` folder of a run given as its results folder or its repository root.

    Args:
        path: the folder holding ``tables/`` (``results/``) or ``results/tables/``.
        which: how messages name the run (``OLD``, ``NEW``).

    Raises:
        CompareError: if neither folder exists.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     (Path(tmp) / "results" / "tables").mkdir(parents=True)
        ...     [p.relative_to(tmp).as_posix() for p in (tables_dir(tmp), tables_dir(Path(tmp) / "results"))]
        ['results/tables', 'results/tables']
    """
    path = Path(path)
    for candidate in (path / "tables", path / "results" / "tables"):
        if candidate.is_dir():
            return candidate
    state = "does not exist" if not path.exists() else "holds neither tables/ nor results/tables/"
    raise CompareError(
        f"{which} {path} {state}; expected a workflow results folder (holding tables/) or "
        "a repository root (holding results/tables/)."
    )


def _read(path: Path, which: str) -> pd.DataFrame:
    if not path.is_file():
        raise CompareError(
            f"{which} table {path} is missing; expected the summarize rule's output "
            f"(snakemake results/tables/{path.name})."
        )
    try:
        return read_table(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise CompareError(
            f"{which} table {path} is not a readable CSV table ({type(exc).__name__}); "
            "rebuild it with snakemake."
        ) from exc


def _python(value: Any) -> Any:
    """A table cell as JSON-ready Python: numpy scalars unwrapped, NaN as None."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _key_text(key: dict[str, Any]) -> str:
    """``dataset=d network=n …``; empty parts (an alignment claim's ``alignment``) left out."""
    parts = []
    for k, v in key.items():
        if v is None or v == "":
            continue
        parts.append(f"{k}={v:.10g}" if isinstance(v, float) else f"{k}={v}")
    return " ".join(parts)


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.3e}"


@dataclass
class _Matched:
    """Two tables joined on their keys."""

    keys: list[str]
    old_rows: int
    new_rows: int
    both: pd.DataFrame  # keys, then column_old and column_new for every other column
    only_old: list[dict[str, Any]]
    only_new: list[dict[str, Any]]

    def key(self, i: int) -> dict[str, Any]:
        row = self.both.iloc[i]
        return {k: _python(row[k]) for k in self.keys}

    def counts(self) -> dict[str, Any]:
        return {
            "old": self.old_rows,
            "new": self.new_rows,
            "matched": len(self.both),
            "only_old": self.only_old,
            "only_new": self.only_new,
        }

    def count_lines(self, noun: str) -> list[str]:
        lines = [
            f"  {noun}: {self.old_rows} old, {self.new_rows} new, {len(self.both)} in both; "
            f"{len(self.only_old)} only in old, {len(self.only_new)} only in new"
        ]
        for label, rows in (("only in old", self.only_old), ("only in new", self.only_new)):
            for key in rows[:_LIST_LIMIT]:
                lines.append(f"    {label}: {_key_text(key)}")
            if len(rows) > _LIST_LIMIT:
                lines.append(f"    … and {len(rows) - _LIST_LIMIT} more {label} (all in --json)")
        return lines


def _normalise_keys(old: pd.DataFrame, new: pd.DataFrame, keys: Sequence[str]) -> None:
    """Make each key column comparable across the two tables, in place: a column that is
    text in either becomes text in both, NaN (an empty cell) as ``""``."""
    for k in keys:
        if pd.api.types.is_numeric_dtype(old[k]) and pd.api.types.is_numeric_dtype(new[k]):
            continue
        for df in (old, new):
            df[k] = df[k].where(df[k].notna(), "").astype(str)


def _match(
    old: pd.DataFrame,
    new: pd.DataFrame,
    wanted: Sequence[str],
    name: str,
    paths: tuple[Path, Path],
) -> _Matched:
    if set(old.columns) != set(new.columns):
        gone = [c for c in old.columns if c not in new.columns]
        added = [c for c in new.columns if c not in old.columns]
        raise CompareError(
            f"the columns of {paths[0]} and {paths[1]} differ (only in old: {gone}, only in "
            f"new: {added}); compare {name} tables written by the same featalign version."
        )
    missing = [k for k in wanted if k not in old.columns and k not in _OPTIONAL_KEYS]
    if missing:
        raise CompareError(
            f"{paths[0]} and {paths[1]} lack the key columns {missing} of {name}; "
            f"expected tables written by featalign's summarize rule."
        )
    keys = [k for k in wanted if k in old.columns]
    old, new = old.copy(), new.copy()
    _normalise_keys(old, new, keys)
    for df, path in zip((old, new), paths, strict=True):
        dup = df.duplicated(keys, keep=False)
        if dup.any():
            first = {k: _python(v) for k, v in df.loc[dup, keys].iloc[0].items()}
            raise CompareError(
                f"{path} has {int(dup.sum())} rows that share their keys (first: "
                f"{_key_text(first)}); expected one row per {', '.join(keys)}."
            )
    joined = old.merge(new, on=keys, how="outer", suffixes=("_old", "_new"), indicator=True)
    side = joined["_merge"]

    def keys_of(rows: pd.DataFrame) -> list[dict[str, Any]]:
        return [{k: _python(v) for k, v in zip(keys, t, strict=True)} for t in rows[keys].values]

    return _Matched(
        keys=keys,
        old_rows=len(old),
        new_rows=len(new),
        both=joined[side == "both"].drop(columns="_merge").reset_index(drop=True),
        only_old=keys_of(joined[side == "left_only"]),
        only_new=keys_of(joined[side == "right_only"]),
    )


# --------------------------------------------------------------------------- claims


@dataclass
class ClaimsDiff:
    """``claims.csv`` of two runs: matched claims, changed verdicts and agreements."""

    matched: _Matched
    verdicts: list[dict[str, Any]]  # {"key", "old", "new"} per changed verdict
    agreements: list[dict[str, Any]]
    predictions: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "keys": self.matched.keys,
            "claims": self.matched.counts(),
            "verdicts_changed": len(self.verdicts),
            "verdicts": self.verdicts,
            "agreements_changed": len(self.agreements),
            "agreements": self.agreements,
            "predictions_changed": len(self.predictions),
            "predictions": self.predictions,
        }

    def lines(self) -> list[str]:
        out = [f"claims.csv (rows matched on {', '.join(self.matched.keys)})"]
        out += self.matched.count_lines("claims")
        out.append(f"  verdicts changed: {len(self.verdicts)}")
        out += [f"    {_key_text(c['key'])}: {c['old']} -> {c['new']}" for c in self.verdicts]
        out.append(f"  agreement changed: {len(self.agreements)}")
        out.append(f"  prediction changed: {len(self.predictions)}")
        return out


def _changes(m: _Matched, column: str) -> list[dict[str, Any]]:
    old, new = m.both[f"{column}_old"], m.both[f"{column}_new"]
    differ = ~((old == new) | (old.isna() & new.isna()))
    return [
        {"key": m.key(i), "old": _python(old.iloc[i]), "new": _python(new.iloc[i])}
        for i in np.flatnonzero(differ.to_numpy())
    ]


def _compare_claims(old: pd.DataFrame, new: pd.DataFrame, paths: tuple[Path, Path]) -> ClaimsDiff:
    m = _match(old, new, CLAIMS_KEYS, "claims.csv", paths)
    for col in ("verdict", "agreement", "prediction"):
        if f"{col}_old" not in m.both.columns:
            raise CompareError(
                f"{paths[0]} and {paths[1]} have no column {col!r}; expected claims.csv tables "
                "written by featalign's summarize rule."
            )
    return ClaimsDiff(
        m, _changes(m, "verdict"), _changes(m, "agreement"), _changes(m, "prediction")
    )


# --------------------------------------------------------------------------- measures


@dataclass
class Drift:
    """How one measured column moved, over the matched rows of one method."""

    method: str
    column: str
    rows: int
    rose: int
    fell: int
    identical: int
    nan: int  # NaN in exactly one run
    largest_rise: float | None = None
    rise_key: dict[str, Any] | None = None
    largest_fall: float | None = None
    fall_key: dict[str, Any] | None = None


@dataclass
class TableDrift:
    """A table of measurements (``errors.csv``, ``recognition.csv``) of two runs."""

    name: str
    method: str
    columns: list[str]
    tol: float
    matched: _Matched
    drifts: list[Drift] = field(default_factory=list)
    described: int = 0  # matched rows whose descriptive columns differ
    descriptive: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "keys": self.matched.keys,
            "method": self.method,
            "columns": self.columns,
            "tol": self.tol,
            "rows": self.matched.counts(),
            "descriptive_columns": self.descriptive,
            "descriptive_changed": self.described,
            "drift": [vars(d) for d in self.drifts],
        }

    def lines(self) -> list[str]:
        out = [
            f"{self.name} (rows matched on {', '.join(self.matched.keys)}; "
            f"per {self.method}; tol {self.tol:g})"
        ]
        out += self.matched.count_lines("rows")
        if self.descriptive:
            out.append(f"  rows whose {', '.join(self.descriptive)} changed: {self.described}")
        head = (self.method, "column", "rows", "rose", "fell", "identical", "NaN",
                "largest rise", "largest fall")  # fmt: skip
        table = [head]
        for meth in dict.fromkeys(d.method for d in self.drifts):
            drifts = [d for d in self.drifts if d.method == meth]
            # columns that did not move at all share one line (each is in the JSON)
            still = [d for d in drifts if d.largest_rise is None and d.largest_fall is None
                     and not d.nan]  # fmt: skip
            for d in drifts:
                if any(d is x for x in still) and len(still) > 1:
                    if d is still[0]:
                        label = f"{'all' if len(still) == len(drifts) else 'other'} {len(still)}"
                        table.append((meth, f"({label} columns)", str(d.rows), "0", "0",
                                      str(d.rows), "0", "-", "-"))  # fmt: skip
                    continue
                table.append((meth, d.column, str(d.rows), str(d.rose), str(d.fell),
                              str(d.identical), str(d.nan), _signed(d.largest_rise),
                              _signed(d.largest_fall)))  # fmt: skip
        widths = [max(len(r[i]) for r in table) for i in range(len(head))]
        for r in table:
            cells = [c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))]
            out.append("  " + "  ".join(cells).rstrip())
        for d in self.drifts:
            if d.rose:
                out.append(
                    f"    largest rise of {d.method} {d.column}: {_signed(d.largest_rise)} at "
                    f"{_key_text(d.rise_key or {})}"
                )
            if d.fell:
                out.append(
                    f"    largest fall of {d.method} {d.column}: {_signed(d.largest_fall)} at "
                    f"{_key_text(d.fall_key or {})}"
                )
        return out


def _compare_measures(
    old: pd.DataFrame,
    new: pd.DataFrame,
    *,
    name: str,
    keys: Sequence[str],
    method: str,
    order: Sequence[str],
    columns: Sequence[str],
    tol: float,
    paths: tuple[Path, Path],
) -> TableDrift:
    """Drift of the measured ``columns`` per ``method`` (in ``order``, then the others)."""
    m = _match(old, new, keys, name, paths)
    missing = [c for c in (method, *columns) if c not in old.columns]
    if missing:
        raise CompareError(
            f"{paths[0]} and {paths[1]} lack the columns {missing} of {name}; expected tables "
            "written by featalign's summarize rule."
        )
    rest = [c for c in old.columns if c not in m.keys]
    descriptive = [c for c in rest if c not in columns]
    both = m.both
    differs = np.zeros(len(both), dtype=bool)
    for c in descriptive:
        a, b = both[f"{c}_old"], both[f"{c}_new"]
        differs |= ~((a == b) | (a.isna() & b.isna())).to_numpy()
    out = TableDrift(name, method, list(columns), tol, m, described=int(differs.sum()),
                     descriptive=descriptive)  # fmt: skip
    methods = both[method].astype(str).to_numpy()
    for meth in ordered([str(v) for v in pd.unique(methods)], order):
        rows = np.flatnonzero(methods == meth)
        for c in columns:
            a = pd.to_numeric(both[f"{c}_old"].iloc[rows], errors="coerce").to_numpy(float)
            b = pd.to_numeric(both[f"{c}_new"].iloc[rows], errors="coerce").to_numpy(float)
            na, nb = np.isnan(a), np.isnan(b)
            with np.errstate(invalid="ignore"):
                d = b - a
                rose, fell = d > tol, d < -tol
            nan = na != nb
            drift = Drift(
                method=str(_python(meth)),
                column=c,
                rows=len(rows),
                rose=int(rose.sum()),
                fell=int(fell.sum()),
                identical=len(rows) - int(rose.sum() + fell.sum() + nan.sum()),
                nan=int(nan.sum()),
            )
            finite = np.where(np.isnan(d), 0.0, d)
            if (finite > 0).any():
                i = int(np.argmax(finite))
                drift.largest_rise, drift.rise_key = float(d[i]), m.key(int(rows[i]))
            if (finite < 0).any():
                i = int(np.argmin(finite))
                drift.largest_fall, drift.fall_key = float(d[i]), m.key(int(rows[i]))
            out.drifts.append(drift)
    return out


# --------------------------------------------------------------------------- both runs


@dataclass
class Comparison:
    """What moved between two runs (:func:`compare_runs`)."""

    old: Path
    new: Path
    tol: float
    claims: ClaimsDiff
    errors: TableDrift
    recognition: TableDrift | None
    recognition_note: str | None = None

    @property
    def verdicts_changed(self) -> int:
        return len(self.claims.verdicts)

    @property
    def exit_code(self) -> int:
        """0 when no verdict changed, 1 when any did (a failed check)."""
        return 1 if self.verdicts_changed else 0

    def to_dict(self) -> dict[str, Any]:
        """The comparison as JSON-ready data (NaN as ``null``)."""
        return {
            "old": str(self.old),
            "new": str(self.new),
            "tol": self.tol,
            "verdicts_changed": self.verdicts_changed,
            "exit_code": self.exit_code,
            "claims": self.claims.to_dict(),
            "errors": self.errors.to_dict(),
            "recognition": self.recognition.to_dict() if self.recognition else None,
            "recognition_note": self.recognition_note,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"

    def format(self) -> str:
        """The plain-text report of ``featalign compare``."""
        lines = [f"old: {self.old}", f"new: {self.new}", ""]
        lines += self.claims.lines() + [""] + self.errors.lines() + [""]
        if self.recognition is not None:
            lines += self.recognition.lines() + [""]
        else:
            lines += [f"recognition.csv: {self.recognition_note}", ""]
        n = self.verdicts_changed
        lines.append("no verdict changed" if n == 0 else f"{n} verdict{'s' * (n != 1)} changed")
        return "\n".join(lines) + "\n"


def compare_runs(old: str | Path, new: str | Path, *, tol: float = DEFAULT_TOL) -> Comparison:
    """Compare the tables of two workflow runs.

    Args:
        old: the first run: its results folder (holding ``tables/``) or repository root.
        new: the second run, the same way.
        tol: absolute change above which a measurement counts as risen or fallen.

    Returns:
        The :class:`Comparison`: ``claims.csv`` and ``errors.csv`` always,
        ``recognition.csv`` where both runs have it.

    Raises:
        CompareError: a folder or a table is missing or unreadable, lacks its key columns,
            or the two runs' tables have different columns.
    """
    if not (tol >= 0 and math.isfinite(tol)):
        raise CompareError(f"--tol {tol} is not a finite number >= 0.")
    dirs = (tables_dir(old, "OLD"), tables_dir(new, "NEW"))

    def pair(name: str) -> tuple[pd.DataFrame, pd.DataFrame, tuple[Path, Path]]:
        paths = (dirs[0] / name, dirs[1] / name)
        return _read(paths[0], "OLD"), _read(paths[1], "NEW"), paths

    claims = _compare_claims(*pair("claims.csv"))
    o, n, paths = pair("errors.csv")
    errors = _compare_measures(o, n, name="errors.csv", keys=ERRORS_KEYS, method="measure",
                               order=MEASURES, columns=("error",), tol=tol,
                               paths=paths)  # fmt: skip
    present = [(d / "recognition.csv").is_file() for d in dirs]
    recognition, note = None, None
    if all(present):
        o, n, paths = pair("recognition.csv")
        recognition = _compare_measures(o, n, name="recognition.csv", keys=RECOGNITION_KEYS,
                                        method="alignment", order=ALIGNMENTS,
                                        columns=RECOGNITION_MEASURES, tol=tol,
                                        paths=paths)  # fmt: skip
    else:
        where = {(True, False): "only in OLD", (False, True): "only in NEW"}.get(
            tuple(present), "in neither run"
        )
        note = f"{where}; not compared"
    return Comparison(dirs[0], dirs[1], tol, claims, errors, recognition, note)
