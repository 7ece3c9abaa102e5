"""Adapter: config section -> featalign.datasets.build_dataset -> results/datasets/{dataset}.nc."""

from featalign.datasets import DatasetSpec, build_dataset
from featalign.io import write_netcdf
from featalign.runtime import log_to

log_to(snakemake.log[0], snakemake.threads)  # noqa: F821
section = snakemake.params.section  # noqa: F821
ds = build_dataset(
    DatasetSpec.from_config(snakemake.wildcards.dataset, section["dataset"]),  # noqa: F821
    section["transforms"],
    affine_draws=section["affine_draws"],
    config=section,
    rule="dataset",
)
write_netcdf(ds, snakemake.output[0], keep_previous=True)  # noqa: F821
