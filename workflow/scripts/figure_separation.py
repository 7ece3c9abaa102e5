"""Adapter: errors.csv and claims.csv -> featalign.figures.separation, with the claims' estimator."""

from featalign.figures.separation import plot_separation
from featalign.runtime import log_to
from featalign.summary.claims import claims_about, read_table

log_to(snakemake.log[0], snakemake.threads)  # noqa: F821
inp, out, claims = snakemake.input, snakemake.output, snakemake.params.claims  # noqa: F821
plot_separation(
    read_table(inp.errors),
    claims_about(read_table(inp.claims), "alignment"),
    out.png,
    out.pdf,
    margin=claims["margin"],
    confidence=claims["confidence"],
    resamples=claims["bootstrap"],
    seed=snakemake.params.seed,  # noqa: F821
)
