"""Adapter: a weight file's training history -> featalign.figures.training_curve."""

from featalign.figures.training_curve import plot_training_curve
from featalign.runtime import log_to

log_to(snakemake.log[0], snakemake.threads)  # noqa: F821
out = snakemake.output  # noqa: F821
plot_training_curve(snakemake.input[0], out.png, out.pdf)  # noqa: F821
