"""Adapter: errors.csv -> featalign.figures.affine_vs_oracle."""

from featalign.figures.affine_vs_oracle import plot_affine_vs_oracle
from featalign.runtime import log_to
from featalign.summary.claims import read_table

log_to(snakemake.log[0], snakemake.threads)  # noqa: F821
out = snakemake.output  # noqa: F821
plot_affine_vs_oracle(read_table(snakemake.input[0]), out.png, out.pdf)  # noqa: F821
