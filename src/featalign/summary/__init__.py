"""Tables and verdicts: from alignment files to ``errors.csv``, ``claims.csv`` and ``separation.csv``.

**The quantity judged** is the *excess* of a (sample, transform) problem: the
best spatial error, ``min(affine, dense)``, minus the ``input`` floor (the error
left by interpolation and cropping when the *input* is realigned). A **claim** is
one dataset × network × layer × evaluation (``dense``: the layer evaluated by
shift-and-stitch, which judges the theorem; ``as_built``: the strided maps the
network produces) × claim family. Per claim and magnitude m of its sweep, the mean
excess Ē_m gets a percentile-bootstrap interval [lo_m, hi_m], the floor F_m is the
mean ``input`` error of the same problems and the resolution is r_m = F_m + τ
(τ = ``claims.margin``, the optimiser's certified tolerance). The verdict, in
order (README "Verdicts", written before any run used it):

* ``unresolved`` if at some magnitude hi_m < −r_m (never ``aligned``);
* ``aligned`` if at every magnitude hi_m ≤ r_m;
* ``not aligned`` if at the largest magnitude lo_M > r_M and Ē_M ≥ Ē_1;
* ``inconclusive`` otherwise.

Magnitudes are ordered by their deformation ‖A − I‖_F (shift length for
translations), equal deformations pooled.

Modules, one concept each:

* :mod:`featalign.summary.families` — claim families (``claim_family``), the
  theory's prediction from a network's declared invariances (``predicted``) and
  the size of a transform (``deformation``).
* :mod:`featalign.summary.excess` — the excess of each problem (``problem_excess``)
  and the bootstrap interval of its mean (``bootstrap_interval``, ``mean_interval``):
  the one home of the judged quantity, used by the claims table and every figure.
* :mod:`featalign.summary.claims` — the rule: ``magnitude_levels``, ``verdict`` and
  ``claims_table``.
* :mod:`featalign.summary.separation` — the threshold-free view: the AUC of
  effect − resolution between the predictions (``auc``, ``separation_table``).
* :mod:`featalign.summary.tables` — the errors table's columns, ``errors_table``
  (read from alignment files) and small table helpers.
* :mod:`featalign.summary.markdown` — ``claims_summary_markdown`` and
  ``verdict_grid_markdown``.
* :mod:`featalign.summary.compare` — what moved between two runs' tables
  (``compare_runs``, the ``featalign compare`` command).

The names below are re-exported here for the workflow script and the tests; library
code imports from the submodule it uses, so that the workflow's code digests
(:mod:`featalign.provenance`) name what each job runs.
"""

from __future__ import annotations

from featalign.names import EVALUATION_ORDER
from featalign.summary.claims import (
    CLAIM_KEYS,
    CLAIMS_COLUMNS,
    OUTCOMES,
    claims_table,
    magnitude_levels,
    read_table,
    verdict,
)
from featalign.summary.excess import (
    PROBLEM_KEYS,
    bootstrap_interval,
    mean_interval,
    problem_excess,
)
from featalign.summary.families import CLAIM_FAMILIES, claim_family, deformation, predicted
from featalign.summary.markdown import (
    claims_summary_markdown,
    disagreement_reason,
    invariance_clause,
    verdict_grid_markdown,
)
from featalign.summary.separation import auc, separation_table
from featalign.summary.tables import ERRORS_COLUMNS, errors_table

__all__ = [
    "CLAIMS_COLUMNS",
    "CLAIM_FAMILIES",
    "CLAIM_KEYS",
    "ERRORS_COLUMNS",
    "EVALUATION_ORDER",
    "OUTCOMES",
    "PROBLEM_KEYS",
    "auc",
    "bootstrap_interval",
    "claim_family",
    "claims_summary_markdown",
    "claims_table",
    "deformation",
    "disagreement_reason",
    "errors_table",
    "invariance_clause",
    "magnitude_levels",
    "mean_interval",
    "predicted",
    "problem_excess",
    "read_table",
    "separation_table",
    "verdict",
    "verdict_grid_markdown",
]
