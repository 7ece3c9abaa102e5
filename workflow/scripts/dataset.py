"""Adapter: config section -> featalign.datasets.write_dataset -> results/datasets/{dataset}.nc."""

from featalign.datasets import DatasetSpec, write_dataset
from featalign.runtime import log_to

log_to(snakemake.log[0], snakemake.threads)  # noqa: F821
section = snakemake.params.section  # noqa: F821
write_dataset(
    DatasetSpec.from_config(snakemake.wildcards.dataset, section["dataset"]),  # noqa: F821
    section["transforms"],
    snakemake.output[0],  # noqa: F821
    affine_draws=section["affine_draws"],
    # images per chunk (features.chunk), not in the section: it changes no value of the file
    chunk=snakemake.config["features"].get("chunk", 32),  # noqa: F821
    config=section,
    rule="dataset",
    keep_previous=True,
)
