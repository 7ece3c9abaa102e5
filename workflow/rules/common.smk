# Config validation and helper functions shared by the rules.
import sys

import yaml
from snakemake.utils import validate

from featalign.config import (
    ConfigError,
    canonical,
    check_config,
    check_networks,
    check_schema,
    dataset_transforms,
    network_datasets,
    network_options,
)
from featalign.plugins import PluginError
from featalign.provenance import code_digest

SCHEMA = workflow.source_path("../schemas/config.schema.yaml")

try:
    with open(SCHEMA) as fh:
        check_schema(config, yaml.safe_load(fh))
    validate(config, schema=SCHEMA, set_default=True)
    check_config(config)
    NETWORKS = check_networks(config)
except (ConfigError, PluginError) as err:
    # a user error: one sentence, no traceback, before any job runs
    sys.stderr.write(f"featalign: config error: {err}\n")
    sys.exit(1)


wildcard_constraints:
    dataset="[A-Za-z][A-Za-z0-9_]*",
    network="[A-Za-z0-9_]+",
    layer="[A-Za-z0-9_.]+",


DATASETS = list(config["datasets"])


def code(script):
    """Digest of a rule's script and the featalign code it imports: a change reruns its jobs."""
    return code_digest(workflow.source_path(f"../scripts/{script}"))


def network_code(script):
    """As code(), with the network's plugin file and the featalign modules it imports."""
    return lambda wildcards: code_digest(
        workflow.source_path(f"../scripts/{script}"), plugin_file(wildcards)
    )


def dataset_params(wildcards):
    """The config that determines one dataset file (a change reruns that dataset only)."""
    return canonical(
        {
            "dataset": config["datasets"][wildcards.dataset],
            "transforms": dataset_transforms(config, wildcards.dataset),
            "affine_draws": config["affine_draws"],
        }
    )


PLUGIN_DIRS = [str(d) for d in config["plugin_dirs"]]


def pairs():
    """(dataset, network) pairs of the run: every network on its datasets."""
    return [(d, n) for n in NETWORKS for d in network_datasets(config, n)]


def plugin_file(wildcards):
    """The plugin's source file: editing it reruns exactly that network's jobs."""
    return str(NETWORKS[wildcards.network].source)


def network_params(wildcards):
    return canonical(network_options(config, wildcards.network))


def features_inputs(wildcards):
    inputs = {
        "dataset": f"results/datasets/{wildcards.dataset}.nc",
        "plugin": plugin_file(wildcards),
    }
    options = network_options(config, wildcards.network)
    if NETWORKS[wildcards.network].train is not None and "weights" not in options:
        inputs["weights"] = f"results/weights/{wildcards.network}.pt"
    elif "weights" in options:
        inputs["weights"] = options["weights"]
    return inputs


def alignment_files():
    """Every alignment file of the run: one per dataset x network x layer."""
    return [
        f"results/alignment/{d}/{n}/{layer}.nc"
        for d, n in pairs()
        for layer in NETWORKS[n].layers
    ]


def pair_alignment_files(wildcards):
    """The alignment files of one dataset x network: a figure of that pair reads only these."""
    return [
        f"results/alignment/{wildcards.dataset}/{wildcards.network}/{layer}.nc"
        for layer in NETWORKS[wildcards.network].layers
    ]


def alignment_params(wildcards):
    return canonical(
        {
            "alignment": config["alignment"],
            "region": config["region"],
            "seed": config["seed"],
        }
    )


def invariances():
    """network -> declared invariant_to: the theory's predictions."""
    return {n: list(spec.invariant_to) for n, spec in NETWORKS.items()}


def example_networks():
    """A generic network and an invariant counterpart for the example panel, with a layer each."""
    chosen = config["figures"].get("example_networks") or []
    if not chosen:
        generic = [n for n, s in NETWORKS.items() if not s.invariant_to]
        # the invariant counterpart: rotation-invariant, and as specific as possible
        # (pointwise networks are invariant to everything and show nothing)
        invariant = sorted(
            (
                n
                for n, s in NETWORKS.items()
                if {"rotation", "rotation90"} & set(s.invariant_to)
            ),
            key=lambda n: len(NETWORKS[n].invariant_to),
        )
        chosen = (generic[:1] + invariant[:1]) or list(NETWORKS)[:1]
    return {n: NETWORKS[n].layers[len(NETWORKS[n].layers) // 2] for n in chosen}


def example_inputs(wildcards):
    nets = [
        n
        for n in example_networks()
        if wildcards.dataset in network_datasets(config, n)
    ]
    layer = example_networks()
    return {
        "dataset": f"results/datasets/{wildcards.dataset}.nc",
        "features": [f"results/features/{wildcards.dataset}/{n}.nc" for n in nets],
        "alignment": [
            f"results/alignment/{wildcards.dataset}/{n}/{layer[n]}.nc" for n in nets
        ],
    }


def trained_networks():
    return [n for n, s in NETWORKS.items() if s.train is not None]


def figure_files():
    out = []
    for kind in ("verdict_grid", "affine_vs_oracle"):
        out += [f"results/figures/{kind}.{ext}" for ext in ("png", "pdf")]
    for d in DATASETS:
        if not any(d in network_datasets(config, n) for n in NETWORKS):
            continue
        for kind in ("excess_vs_depth", "example_panel"):
            out += [f"results/figures/{d}/{kind}.{ext}" for ext in ("png", "pdf")]
    for d, n in pairs():
        out += [
            f"results/figures/{d}/{n}/error_vs_magnitude.{e}" for e in ("png", "pdf")
        ]
    for n in trained_networks():
        out += [f"results/figures/training/{n}.{e}" for e in ("png", "pdf")]
    return out


def all_outputs():
    return [
        "results/tables/errors.csv",
        "results/tables/claims.csv",
        "results/tables/claims_summary.md",
    ] + figure_files()
