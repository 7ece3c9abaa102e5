"""Adapter: config section -> featalign.datasets.build_dataset -> results/datasets/{dataset}.nc."""

import logging

from featalign.datasets import DatasetSpec, build_dataset
from featalign.io import write_netcdf

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, force=True)  # noqa: F821
section = snakemake.params.section  # noqa: F821
name = snakemake.wildcards.dataset  # noqa: F821
ds = build_dataset(
    DatasetSpec.from_config(name, section["dataset"]),
    section["transforms"],
    affine_draws=section["affine_draws"],
    config=section,
    rule="dataset",
)
write_netcdf(ds, snakemake.output[0])  # noqa: F821
