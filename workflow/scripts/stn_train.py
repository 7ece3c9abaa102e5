"""Adapter: one STN run (dataset x variant x seed) -> results/stn/{stn_dataset}/{variant}/seed{seed}.nc, .pt."""

from featalign.runtime import log_to
from featalign.stn.train import train_stn

log_to(snakemake.log[0])  # noqa: F821
w = snakemake.wildcards  # noqa: F821
train_stn(
    snakemake.output.result,  # noqa: F821
    snakemake.output.weights,  # noqa: F821
    dataset=w.stn_dataset,
    variant=w.variant,
    seed=int(w.seed),
    params=snakemake.params.stn,  # noqa: F821
    device=snakemake.params.device,  # noqa: F821
    threads=snakemake.threads,  # noqa: F821
    rule="stn_train",
)
