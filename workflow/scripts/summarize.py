"""Adapter: alignment files -> featalign.summary -> errors.csv, claims.csv, separation.csv,
claims_summary.md."""

import pandas as pd

from featalign.io import atomic_path
from featalign.names import EVALUATION_ORDER
from featalign.runtime import log_to
from featalign.summary.claims import claims_table, with_recognition
from featalign.summary.markdown import claims_summary_markdown, verdict_grid_markdown
from featalign.summary.recognition import (
    problem_table,
    recognition_claims,
    recognition_markdown,
    recognition_table,
)
from featalign.summary.separation import separation_table
from featalign.summary.tables import errors_table, ordered

log_to(snakemake.log[0], snakemake.threads)  # noqa: F821
claims_cfg = snakemake.params.claims  # noqa: F821
errors = errors_table(snakemake.input.alignment)  # noqa: F821
claims = claims_table(
    errors,
    snakemake.params.invariances,  # noqa: F821
    margin=claims_cfg["margin"],
    confidence=claims_cfg["confidence"],
    resamples=claims_cfg["bootstrap"],
    seed=snakemake.params.seed,  # noqa: F821
)
separation = separation_table(claims)
rec_files = list(snakemake.input.recognition)  # noqa: F821
problems = pd.concat([problem_table(f) for f in rec_files]) if rec_files else pd.DataFrame()
interval = dict(confidence=claims_cfg["confidence"], resamples=claims_cfg["bootstrap"],
                seed=snakemake.params.seed)  # noqa: F821  # fmt: skip
recognition = recognition_table(problems, **interval)
recognized = recognition_claims(
    problems, snakemake.params.invariances,  # noqa: F821
    margin=snakemake.params.recognition["margin"], **interval,  # noqa: F821
)  # fmt: skip
with atomic_path(snakemake.output.recognition) as tmp:  # noqa: F821
    recognition.to_csv(tmp, index=False)
with atomic_path(snakemake.output.errors) as tmp:  # noqa: F821
    errors.to_csv(tmp, index=False)
with atomic_path(snakemake.output.claims) as tmp:  # noqa: F821
    with_recognition(claims, recognized).to_csv(tmp, index=False)
with atomic_path(snakemake.output.separation) as tmp:  # noqa: F821
    separation.to_csv(tmp, index=False)
grids = [
    f"\n### Verdict grid: {d}, {e.replace('_', ' ')}\n\n{verdict_grid_markdown(claims, d, e)}\n"
    for e in ordered(claims["evaluation"].unique().tolist(), EVALUATION_ORDER)
    for d in claims["dataset"].unique()
]
with atomic_path(snakemake.output.summary) as tmp:  # noqa: F821
    tmp.write_text(
        claims_summary_markdown(claims, separation)
        + "".join(grids)
        + recognition_markdown(recognized)
    )
