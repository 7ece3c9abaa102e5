"""Adapter: one network's alignment files -> featalign.figures.error_vs_magnitude."""

from featalign.figures.error_vs_magnitude import plot_error_vs_magnitude
from featalign.runtime import log_to
from featalign.summary.tables import errors_table

log_to(snakemake.log[0], snakemake.threads)  # noqa: F821
wc, out = snakemake.wildcards, snakemake.output  # noqa: F821
# from the pair's own alignment files, so that another network's change leaves it be
errors = errors_table(snakemake.input)  # noqa: F821
plot_error_vs_magnitude(errors, wc.dataset, wc.network, out.png, out.pdf)
