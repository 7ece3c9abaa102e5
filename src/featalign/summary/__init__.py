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

Modules, one concept each:

* :mod:`featalign.summary.families` — claim families (``claim_family``) and the
  theory's prediction from a network's declared invariances (``predicted``).
* :mod:`featalign.summary.excess` — the excess of each problem (``problem_excess``)
  and the bootstrap interval of its mean (``bootstrap_interval``, ``mean_interval``):
  the one home of the judged quantity, used by the claims table and every figure.
* :mod:`featalign.summary.claims` — ``verdict`` and ``claims_table``.
* :mod:`featalign.summary.tables` — the columns of both tables, ``errors_table``
  (read from alignment files) and small table helpers.
* :mod:`featalign.summary.markdown` — ``claims_summary_markdown`` and
  ``verdict_grid_markdown``.

The names below are re-exported here for the workflow script and the tests; library
code imports from the submodule it uses, so that the workflow's code digests
(:mod:`featalign.provenance`) name what each job runs.
"""

from __future__ import annotations

from featalign.summary.claims import CLAIM_KEYS, OUTCOMES, claims_table, verdict
from featalign.summary.excess import (
    PROBLEM_KEYS,
    bootstrap_interval,
    mean_interval,
    problem_excess,
)
from featalign.summary.families import CLAIM_FAMILIES, claim_family, predicted
from featalign.summary.markdown import claims_summary_markdown, verdict_grid_markdown
from featalign.summary.tables import CLAIMS_COLUMNS, ERRORS_COLUMNS, errors_table

__all__ = [
    "CLAIMS_COLUMNS",
    "CLAIM_FAMILIES",
    "CLAIM_KEYS",
    "ERRORS_COLUMNS",
    "OUTCOMES",
    "PROBLEM_KEYS",
    "bootstrap_interval",
    "claim_family",
    "claims_summary_markdown",
    "claims_table",
    "errors_table",
    "mean_interval",
    "predicted",
    "problem_excess",
    "verdict",
    "verdict_grid_markdown",
]
