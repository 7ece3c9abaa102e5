"""Adapter: a dataset, features and alignment files -> featalign.figures.example_panel."""

from pathlib import Path

from featalign.figures.example_panel import plot_example_panel
from featalign.runtime import log_to

log_to(snakemake.log[0], snakemake.threads)  # noqa: F821
inp, out = snakemake.input, snakemake.output  # noqa: F821
nets = [Path(p).stem for p in inp.features]
plot_example_panel(
    inp.dataset,
    dict(zip(nets, inp.features)),
    dict(zip(nets, inp.alignment)),
    {n: snakemake.params.layers[n] for n in nets},  # noqa: F821
    out.png,
    out.pdf,
)
