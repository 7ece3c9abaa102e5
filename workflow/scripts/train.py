"""Adapter: a plugin's training recipe -> results/weights/{network}.pt."""

from pathlib import Path

from featalign.io import keep_as_previous
from featalign.plugins import get_network
from featalign.runtime import log_to

log_to(snakemake.log[0], snakemake.threads)  # noqa: F821
spec = get_network(snakemake.wildcards.network, snakemake.params.plugin_dirs)  # noqa: F821
spec.train(Path(snakemake.output[0]), **snakemake.params.options)  # noqa: F821
keep_as_previous(snakemake.output[0])  # noqa: F821
