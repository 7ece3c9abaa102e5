"""Adapter: a features file's layer -> featalign.align.files -> results/alignment/.../{layer}.nc."""

from featalign.align.files import alignment_dataset
from featalign.io import write_netcdf
from featalign.runtime import log_to, resolve_device

log_to(snakemake.log[0], snakemake.threads)  # noqa: F821
section = snakemake.params.section  # noqa: F821
result = alignment_dataset(
    snakemake.input.features,  # noqa: F821
    snakemake.wildcards.layer,  # noqa: F821
    region_fraction=section["region"]["radius"],
    options=section["alignment"],
    seed=section["seed"],
    device=resolve_device(snakemake.params.device),  # noqa: F821
    config=section,
    rule="align",
)
write_netcdf(result, snakemake.output[0], keep_previous=True)  # noqa: F821
