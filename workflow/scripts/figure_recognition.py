"""Adapter: one recognition file -> featalign.figures.recognition."""

from featalign.figures.recognition import plot_recognition
from featalign.runtime import log_to
from featalign.summary.recognition import problem_table, recognition_table

log_to(snakemake.log[0], snakemake.threads)  # noqa: F821
out, claims = snakemake.output, snakemake.params.claims  # noqa: F821
table = recognition_table(problem_table(snakemake.input[0]), confidence=claims["confidence"],  # noqa: F821
                          resamples=claims["bootstrap"], seed=snakemake.params.seed)  # noqa: F821  # fmt: skip
plot_recognition(table, out.png, out.pdf, confidence=claims["confidence"])
