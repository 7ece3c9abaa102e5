"""Adapter: STN result files -> featalign.stn.summary tables and featalign.figures.stn figures."""

from featalign.figures.stn import plot_stn_accuracy, plot_stn_curves, plot_stn_predicted
from featalign.io import atomic_path
from featalign.runtime import log_to
from featalign.stn.summary import claims_table, runs_table, summary_markdown, summary_table

log_to(snakemake.log[0])  # noqa: F821
out, cfg, files = snakemake.output, snakemake.params.stn, list(snakemake.input)  # noqa: F821
runs = runs_table(files)
table = summary_table(runs, cfg["confidence"])
claims = claims_table(runs, cfg["margin"], cfg["confidence"])
for frame, path in ((runs, out.runs), (table, out.table), (claims, out.claims)):
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
with atomic_path(out.summary) as tmp:
    tmp.write_text(summary_markdown(table, claims, cfg["confidence"]))
plot_stn_accuracy(runs, table, out.accuracy_png, out.accuracy_pdf)
plot_stn_predicted(files, out.predicted_png, out.predicted_pdf)
plot_stn_curves(files, out.curves_png, out.curves_pdf)
