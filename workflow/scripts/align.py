"""Adapter: one layer of a features file -> featalign.measure -> results/alignment/.../{layer}.nc."""

from featalign.io import write_netcdf
from featalign.measure import measure_layer
from featalign.runtime import log_to, resolve_device

log_to(snakemake.log[0])  # noqa: F821
section = snakemake.params.section  # noqa: F821
result = measure_layer(
    snakemake.input.features,  # noqa: F821
    snakemake.wildcards.layer,  # noqa: F821
    region_fraction=section["region"]["radius"],
    options=section["alignment"],
    seed=section["seed"],
    device=resolve_device(snakemake.params.device),  # noqa: F821
    config=section,
    rule="align",
)
write_netcdf(result, snakemake.output[0])  # noqa: F821
