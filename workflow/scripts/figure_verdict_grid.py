"""Adapter: claims.csv -> featalign.figures.verdict_grid."""

from featalign.figures.verdict_grid import plot_verdict_grid
from featalign.runtime import log_to
from featalign.summary.claims import read_table

log_to(snakemake.log[0], snakemake.threads)  # noqa: F821
out = snakemake.output  # noqa: F821
plot_verdict_grid(read_table(snakemake.input[0]), out.png, out.pdf)  # noqa: F821
