"""Adapter: claims.csv -> featalign.figures.verdict_grid."""

import pandas as pd

from featalign.figures.verdict_grid import plot_verdict_grid
from featalign.runtime import log_to

log_to(snakemake.log[0])  # noqa: F821
out = snakemake.output  # noqa: F821
plot_verdict_grid(pd.read_csv(snakemake.input[0]), out.png, out.pdf)  # noqa: F821
