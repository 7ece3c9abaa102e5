"""Adapter: errors.csv -> featalign.figures.excess_vs_depth, with the claims' interval."""

from featalign.figures.excess_vs_depth import plot_excess_vs_depth
from featalign.runtime import log_to
from featalign.summary.claims import read_table

log_to(snakemake.log[0], snakemake.threads)  # noqa: F821
out, claims = snakemake.output, snakemake.params.claims  # noqa: F821
plot_excess_vs_depth(
    read_table(snakemake.input[0]),  # noqa: F821
    snakemake.wildcards.dataset,  # noqa: F821
    out.png,
    out.pdf,
    margin=claims["margin"],
    confidence=claims["confidence"],
    resamples=claims["bootstrap"],
    seed=snakemake.params.seed,  # noqa: F821
)
