"""Adapter: dataset file + network plugin -> featalign.features -> results/features/{dataset}/{network}.nc."""

from featalign.features import CHUNK, write_features
from featalign.io import open_dataset
from featalign.plugins import get_network
from featalign.runtime import log_to, resolve_device

log_to(snakemake.log[0], snakemake.threads)  # noqa: F821
p = snakemake.params  # noqa: F821
options = dict(p.options)
if snakemake.input.get("weights"):  # noqa: F821
    options["weights"] = snakemake.input.weights  # noqa: F821
# read a chunk at a time (features.chunk images), not a params entry: it changes no result
with open_dataset(
    snakemake.input.dataset,  # noqa: F821
    kind="dataset",
    rebuild=f"snakemake {snakemake.input.dataset}",  # noqa: F821
    variables=("image", "transformed", "realigned"),
    lazy=True,
) as dataset:
    write_features(
        dataset,
        get_network(snakemake.wildcards.network, p.plugin_dirs),  # noqa: F821
        snakemake.output[0],  # noqa: F821
        options,
        device=resolve_device(p.device),
        batch_size=p.batch_size,
        max_pad=p.max_pad,
        dense=p.dense,
        chunk=snakemake.config["features"].get("chunk", CHUNK),  # noqa: F821
        timeout=p.timeout,
        config={
            "network": p.options,
            "dense": p.dense,
            "dataset_config_sha256": dataset.attrs["config_sha256"],
        },
        rule="features",
        keep_previous=True,
    )
