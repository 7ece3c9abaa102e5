"""Adapter: one figure rule -> the matching featalign.figures function."""

from pathlib import Path

import pandas as pd

from featalign import figures
from featalign.runtime import log_to
from featalign.summary import errors_table

log_to(snakemake.log[0])  # noqa: F821
rule, out, inp = snakemake.rule, snakemake.output, snakemake.input  # noqa: F821
wc = snakemake.wildcards  # noqa: F821
if rule == "figure_error_vs_magnitude":
    # from the pair's own alignment files, so that another network's change leaves it be
    errors = errors_table(inp)
    figures.plot_error_vs_magnitude(errors, wc.dataset, wc.network, out.png, out.pdf)
elif rule == "figure_excess_vs_depth":
    errors = pd.read_csv(inp[0])
    figures.plot_excess_vs_depth(
        errors, wc.dataset, out.png, out.pdf, margin=snakemake.params.margin  # noqa: F821
    )
elif rule == "figure_verdict_grid":
    figures.plot_verdict_grid(pd.read_csv(inp[0]), out.png, out.pdf)
elif rule == "figure_affine_vs_oracle":
    figures.plot_affine_vs_oracle(pd.read_csv(inp[0]), out.png, out.pdf)
elif rule == "figure_example_panel":
    nets = [Path(p).stem for p in inp.features]
    figures.plot_example_panel(
        inp.dataset,
        dict(zip(nets, inp.features)),
        dict(zip(nets, inp.alignment)),
        {n: snakemake.params.layers[n] for n in nets},  # noqa: F821
        out.png,
        out.pdf,
    )
elif rule == "figure_training_curve":
    figures.plot_training_curve(inp[0], out.png, out.pdf)
else:
    raise ValueError(f"no figure for rule {rule}")
